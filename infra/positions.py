"""Read-your-writes: wait until a projection has reached a seq for a tenant.

The runner's transaction that moves a position also sends
``NOTIFY strongroom_projection, '<projection> <tenant> <seq>'``; it is
delivered at commit. ``PositionWaiter`` LISTENs on one dedicated connection
(never a pooled one) and wakes the waiters of that partition. A waiter first
registers, then reads the current position, so a commit between the two is
never missed; if the LISTEN connection drops, it reconnects and every waiter
re-reads its position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from uuid import UUID

import asyncpg

from domain.errors import UnavailableError
from infra.db import SERVER_SETTINGS, tenant_transaction
from infra.projector import NOTIFY_CHANNEL
from projections.base import schema_for

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 10.0


class PositionTimeoutError(UnavailableError):
    """The read model did not reach the requested position in time; retry shortly."""

    def __init__(self, projection: str, seq: int, reached: int, timeout: float) -> None:
        super().__init__(
            f"the {projection} read model has reached position {reached}, not {seq}, "
            f"within {timeout:g} s; retry shortly"
        )
        self.projection = projection
        self.seq = seq
        self.reached = reached


_Key = tuple[str, UUID]


class PositionWaiter:
    def __init__(self, pool: asyncpg.Pool, database_url: str) -> None:
        self._pool = pool
        self._url = database_url
        self._waiters: defaultdict[_Key, list[tuple[int, asyncio.Future[int]]]] = defaultdict(list)
        self._conn: asyncpg.Connection | None = None
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _listen_forever(self) -> None:
        delay = 0.2
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url, server_settings=SERVER_SETTINGS)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                self._conn = conn
                self._listening.set()
                delay = 0.2
                await self._recheck_all()
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("position listener lost (%s); reconnecting", type(e).__name__)
            finally:
                self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            projection, tenant, seq = payload.split(" ")
            key, reached = (projection, UUID(tenant)), int(seq)
        except ValueError:
            return
        self._wake(key, reached)

    def _wake(self, key: _Key, reached: int) -> None:
        for wanted, future in self._waiters.get(key, []):
            if reached >= wanted and not future.done():
                future.set_result(reached)

    async def _recheck_all(self) -> None:
        for key in list(self._waiters):
            with contextlib.suppress(Exception):
                self._wake(key, await self.position(*key))

    async def position(self, projection: str, tenant_id: UUID) -> int:
        """The seq up to which ``projection`` has applied ``tenant_id``'s log."""
        schema = schema_for(projection)
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            seq = await conn.fetchval(
                f'SELECT last_seq FROM "{schema}".position WHERE tenant_id = $1', tenant_id
            )
        return int(seq or 0)

    async def wait_for(
        self, projection: str, tenant_id: UUID, seq: int, within: float = MAX_WAIT_SECONDS
    ) -> int:
        """Return the position once it is >= ``seq``; :class:`PositionTimeoutError` after
        ``within`` seconds (capped at ``MAX_WAIT_SECONDS``)."""
        timeout = min(within, MAX_WAIT_SECONDS)
        key = (projection, tenant_id)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._waiters[key].append(entry)
        reached = 0
        try:
            async with asyncio.timeout(timeout):
                reached = await self.position(projection, tenant_id)
                if reached >= seq:
                    return reached
                return await future
        except TimeoutError:
            raise PositionTimeoutError(projection, seq, reached, timeout) from None
        finally:
            entries = self._waiters[key]
            entries.remove(entry)
            if not entries:
                del self._waiters[key]
