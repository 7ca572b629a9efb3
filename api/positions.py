"""Read-your-writes: ``Strongroom-Position`` on command responses and
``Strongroom-Min-Position`` on queries of read models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from litestar import Request, Response
from litestar.exceptions import ClientException

from api.access import principal_of
from infra.db import tenant_transaction
from infra.identity import Principal
from infra.runtime import Runtime

POSITION = "Strongroom-Position"
MIN_POSITION = "Strongroom-Min-Position"
WAIT_SECONDS = 5.0

T = TypeVar("T")


def positioned(body: T, position: int, status: int = 200) -> Response[T]:
    """A command's response: the tenant log position its events reached."""
    return Response(body, status_code=status, headers={POSITION: str(position)})


async def wait_for_min_position(
    request: Request[Any, Any, Any], projection: str, tenant_id: UUID
) -> None:
    """Wait (bounded) until ``projection`` has reached the caller's Min-Position."""
    raw = request.headers.get(MIN_POSITION)
    if raw is None:
        return
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ClientException(f"{MIN_POSITION} must be a log position (a whole number)")
    runtime: Runtime = request.app.state.runtime
    await runtime.positions.wait_for(projection, tenant_id, int(raw), within=WAIT_SECONDS)


async def read_model(
    request: Request[Any, Any, Any],
    projection: str,
    query: Callable[[asyncpg.Connection, Principal], Awaitable[T]],
) -> T:
    """``query`` over a read model, in a read-only transaction of the caller's tenant,
    once ``projection`` has reached the caller's ``Strongroom-Min-Position``."""
    runtime: Runtime = request.app.state.runtime
    principal = principal_of(request.scope)
    await wait_for_min_position(request, projection, principal.tenant_id)
    async with tenant_transaction(runtime.pool, principal.tenant_id, readonly=True) as conn:
        return await query(conn, principal)
