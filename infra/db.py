"""The connection pool, and the only code that sets the tenant for row-level security.

Row-level security keys every tenant table on ``app.tenant_id``. That setting is
made here and nowhere else, transaction-scoped (``set_config(..., true)``), so a
pooled connection never carries one tenant's context into the next transaction.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

APP_ROLE = "strongroom_app"
OWNER_ROLE = "strongroom_owner"
CLI_ROLE = "strongroom_cli"
"""The investigation commands' role: RLS like the app, reads the log, appends only
their own audit events, and reaches no credential table (infra/sql/0017)."""

SERVER_SETTINGS = {
    "application_name": "strongroom",
    "idle_in_transaction_session_timeout": "30000",
}


class DatabaseUnavailableError(RuntimeError):
    """PostgreSQL cannot be reached or refused our credentials."""


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool reset: nothing to reset, and one round trip saved per use.

    asyncpg still rolls back a transaction left open before calling this. Pooled
    connections carry no session state: the tenant is transaction-local, and
    nothing SETs, LISTENs or keeps cursors on them (a LISTEN needs its own
    connection).
    """


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 16) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            server_settings=SERVER_SETTINGS,
            command_timeout=60,
            reset=_keep_session,
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL: {type(e).__name__}") from e
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_transaction(
    pool: asyncpg.Pool, tenant_id: UUID, *, readonly: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction in which row-level security shows exactly ``tenant_id``'s rows.

    BEGIN and the tenant setting go in one round trip: two statements of one simple
    query. It takes no parameters, so the tenant is written into it, as a UUID rebuilt
    from its integer (nothing else can get in). asyncpg refuses ``conn.transaction()``
    inside a transaction it did not start, so nothing can commit this one early.
    """
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    # From the integer: canonical hex and hyphens, whatever subclass came in (asyncpg's).
    begin = (_BEGIN_READ_ONLY if readonly else _BEGIN) % UUID(int=tenant_id.int)
    async with pool.acquire() as conn:
        await conn.execute(begin)
        try:
            yield conn
        except BaseException:
            if not conn.is_closed():
                # Failing here (a broken connection) leaves the rollback to the pool.
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


_BEGIN = "BEGIN; SELECT set_config('app.tenant_id', '%s', true)"
_BEGIN_READ_ONLY = "BEGIN READ ONLY; SELECT set_config('app.tenant_id', '%s', true)"


async def set_tenant(conn: asyncpg.Connection, tenant_id: UUID) -> None:
    """Switch an open transaction of a dedicated connection to ``tenant_id``.

    For the owner connection of a read-model swap, which visits tenants one
    after the other inside one transaction; pooled work uses
    :func:`tenant_transaction`.
    """
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    if not conn.is_in_transaction():
        raise RuntimeError("set_tenant needs an open transaction")
    await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))


_TENANT_FUNCTIONS = frozenset({"append_batch"})
_CREDENTIAL_FUNCTIONS = {"session": "session_principal", "apikey": "api_key_principal"}


async def call_in_tenant(
    pool: asyncpg.Pool, tenant_id: UUID, function: str, *args: object
) -> object:
    """Call a tenant-scoped SQL function as ONE statement (its own transaction).

    The tenant is set by ``set_config(..., true)`` in a FROM item whose result
    is the function's first argument, so it is set before the function runs;
    the function itself refuses to run unless ``app.tenant_id`` equals it.
    """
    if not isinstance(tenant_id, UUID):
        raise TypeError("tenant_id must be a UUID")
    return await pool.fetchval(_tenant_call(function, len(args)), str(tenant_id), *args)


@functools.lru_cache(maxsize=16)
def _tenant_call(function: str, arguments: int) -> str:
    """The statement of :func:`call_in_tenant` (made once: appends call it per batch)."""
    if function not in _TENANT_FUNCTIONS:
        raise ValueError(f"{function} is not a tenant function")
    params = ", ".join(f"${i}" for i in range(2, arguments + 2))
    return (
        "SELECT r FROM (SELECT set_config('app.tenant_id', $1, true) AS tenant) AS t, "
        f"LATERAL {function}(t.tenant::uuid, {params}) AS r"
    )


async def call_for_credential(
    pool: asyncpg.Pool, kind: str, token_hash: bytes, *args: object
) -> tuple[UUID | None, object]:
    """Find a credential's tenant and call its principal function there, as ONE statement.

    As in :func:`call_in_tenant`, the tenant is set in a FROM item (here from the
    SECURITY DEFINER ``credential_tenant``, which answers only for an exact hash)
    before the function runs, and the function refuses any other tenant.
    Returns (tenant id or None, the function's result).
    """
    function = _CREDENTIAL_FUNCTIONS[kind]
    params = ", ".join(f"${i}" for i in range(3, len(args) + 3))
    row = await pool.fetchrow(
        "SELECT NULLIF(t.tenant, '')::uuid AS tenant, r FROM (SELECT set_config('app.tenant_id', "
        "COALESCE(credential_tenant($1, $2)::text, ''), true) AS tenant) AS t, "
        f"LATERAL {function}(NULLIF(t.tenant, '')::uuid, $2, {params}) AS r",
        kind,
        token_hash,
        *args,
    )
    assert row is not None
    return row["tenant"], row["r"]
