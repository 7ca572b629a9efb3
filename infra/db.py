"""The connection pool and the one function that opens tenant transactions.

Row-level security keys every tenant table on ``app.tenant_id``. That setting is
made here and nowhere else, transaction-scoped (``set_config(..., true)``), so a
pooled connection never carries one tenant's context into the next transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

APP_ROLE = "strongroom_app"
OWNER_ROLE = "strongroom_owner"

SERVER_SETTINGS = {
    "application_name": "strongroom",
    "idle_in_transaction_session_timeout": "30000",
}


class DatabaseUnavailableError(RuntimeError):
    """PostgreSQL cannot be reached or refused our credentials."""


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 16) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            server_settings=SERVER_SETTINGS,
            command_timeout=60,
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {type(e).__name__}") from e
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_transaction(
    pool: asyncpg.Pool, tenant_id: UUID, *, readonly: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction in which row-level security shows exactly ``tenant_id``'s rows."""
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    async with pool.acquire() as conn, conn.transaction(readonly=readonly):
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
        yield conn
