"""Getting committed events onto JetStream: right after commit, and by the relay.

The appending process publishes each committed batch at once (``Publisher``,
a commit listener of the event store): async publishes, acknowledgements
awaited in the background, and every second the tenant's
``relay_cursor`` is moved over the ranges that were acknowledged, if they
continue it. Nothing here ever delays or fails an append.

The relay (``Relay``) is the backstop: it asks Postgres for tenants whose log
is ahead of their cursor and whose cursor has not moved for a while (NATS was
down, a process died between commit and publish, another process left a gap),
reads those events from the store and publishes them in order. Publishing the
same event twice is harmless: ``Nats-Msg-Id = <tenant>:<seq>`` makes JetStream
drop the copy within its duplicate window, and projections skip ``seq`` they
already have.

Each message carries the leaf (the public, canonical bytes; personal values
are only referenced by hash) and headers with the seq, type and chain hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

import asyncpg
from nats.js import JetStreamContext

from infra import metrics
from infra.broker import Broker, message_id, subject_for
from infra.db import tenant_transaction
from infra.eventstore import Committed

log = logging.getLogger(__name__)

ACK_TIMEOUT: Final = 10.0
FLUSH_CONCURRENCY: Final = 4
MAX_QUEUED_EVENTS: Final = 200_000


def headers_for(tenant_id: UUID, event: Committed) -> dict[str, str]:
    return {
        "Nats-Msg-Id": message_id(tenant_id, event.seq),
        "Strongroom-Seq": str(event.seq),
        "Strongroom-Type": event.type,
        "Strongroom-Chain": event.chain_hash.hex(),
    }


async def publish_events(
    js: JetStreamContext, tenant_id: UUID, events: Sequence[Committed]
) -> list[asyncio.Future[Any]]:
    """Send every event (in order, async) and return the acknowledgement futures."""
    return [
        await js.publish_async(
            subject_for(tenant_id, e.stream), e.leaf, headers=headers_for(tenant_id, e)
        )
        for e in events
    ]


# One statement: a tenant's first range creates its cursor at the range's end (no
# cursor reads as 0, which the range continues); otherwise the cursor moves if the
# range continues it. The answer: the cursor as moved, or as it stands.
_ADVANCE_CURSOR: Final = """
    WITH created AS (
        INSERT INTO relay_cursor (tenant_id, published_seq)
        SELECT $1, $3::bigint WHERE $2::bigint = 1
        ON CONFLICT (tenant_id) DO NOTHING RETURNING published_seq
    ), moved AS (
        UPDATE relay_cursor SET published_seq = $3::bigint, updated_at = now()
        WHERE tenant_id = $1 AND published_seq >= $2::bigint - 1 AND published_seq < $3::bigint
        RETURNING published_seq
    )
    SELECT COALESCE((SELECT published_seq FROM created), (SELECT published_seq FROM moved),
        (SELECT published_seq FROM relay_cursor WHERE tenant_id = $1))
"""


async def advance_cursor(pool: asyncpg.Pool, tenant_id: UUID, first: int, last: int) -> bool:
    """Move the tenant's cursor to ``last`` if it is at ``first - 1`` or beyond.

    Only a range that continues the cursor may move it: the range of another
    process may not have been published yet. Returns whether it moved (or was
    already there).
    """
    async with tenant_transaction(pool, tenant_id) as conn:
        return await _advance_cursor(conn, tenant_id, first, last)


async def _advance_cursor(conn: asyncpg.Connection, tenant_id: UUID, first: int, last: int) -> bool:
    """:func:`advance_cursor` in ``conn``'s transaction of ``tenant_id``."""
    reached = await conn.fetchval(_ADVANCE_CURSOR, tenant_id, first, last)
    return reached is not None and int(reached) >= last


@dataclass(slots=True)
class _Acked:
    ranges: list[tuple[int, int]] = field(default_factory=list)
    age: int = 0
    """Flushes these ranges have waited through without connecting to the cursor."""


class Publisher:
    """Publishes what this process commits, right after the commit (see module doc)."""

    def __init__(self, broker: Broker, pool: asyncpg.Pool, *, flush_interval: float = 1.0):
        self._broker = broker
        self._pool = pool
        self._flush_interval = flush_interval
        self._queue: deque[tuple[UUID, Sequence[Committed]]] = deque()
        self._queued_events = 0
        self._wakeup = asyncio.Event()
        self._acked: dict[UUID, _Acked] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def committed(self, tenant_id: UUID, events: Sequence[Committed]) -> None:
        """Commit listener: queue the batch; never blocks, never raises."""
        if self._queued_events + len(events) > MAX_QUEUED_EVENTS:
            metrics.PUBLISH_FAILURES.labels("append").inc()
            return  # NATS is far behind: the relay will publish these
        self._queue.append((tenant_id, events))
        self._queued_events += len(events)
        self._wakeup.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_loop()),
            asyncio.create_task(self._flush_loop()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=ACK_TIMEOUT)
        with contextlib.suppress(Exception):
            await self.flush()

    async def _publish_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                tenant_id, events = self._queue.popleft()
                self._queued_events -= len(events)
                js = self._broker.jetstream_now()
                if js is None:
                    metrics.PUBLISH_FAILURES.labels("append").inc()
                    continue
                try:
                    futures = await publish_events(js, tenant_id, events)
                except Exception as e:
                    log.warning("publish failed (%s); the relay will retry", type(e).__name__)
                    metrics.PUBLISH_FAILURES.labels("append").inc()
                    continue
                task = asyncio.create_task(self._await_acks(tenant_id, events, futures))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _await_acks(
        self, tenant_id: UUID, events: Sequence[Committed], futures: list[asyncio.Future[Any]]
    ) -> None:
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                await asyncio.gather(*futures)
        except Exception as e:
            for future in futures:
                future.cancel()
            log.warning("publish not acknowledged (%s); the relay will retry", type(e).__name__)
            metrics.PUBLISH_FAILURES.labels("append").inc()
            return
        metrics.EVENTS_PUBLISHED.labels("append").inc(len(events))
        self._acked.setdefault(tenant_id, _Acked()).ranges.append((events[0].seq, events[-1].seq))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            try:
                await self.flush()
            except Exception as e:
                log.warning("could not record published positions (%s)", type(e).__name__)

    async def flush(self) -> None:
        """Move the cursors over acknowledged ranges that continue them (a few tenants
        at a time, one transaction each); raises the first error, once every tenant
        was tried."""
        tenants = list(self._acked)

        async def flush_some() -> None:
            while tenants:
                await self._flush_tenant(tenants.pop())

        outcomes = await asyncio.gather(
            *(flush_some() for _ in range(min(FLUSH_CONCURRENCY, len(tenants)))),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _flush_tenant(self, tenant_id: UUID) -> None:
        acked = self._acked.get(tenant_id)
        if acked is None:
            return
        # Take the ranges now: acknowledgements keep arriving during the awaits below.
        taken, acked.ranges = acked.ranges, []
        merged: list[tuple[int, int]] = []
        for first, last in sorted(taken):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
            else:
                merged.append((first, last))
        left = []
        try:
            async with tenant_transaction(self._pool, tenant_id) as conn:  # one per tenant
                for first, last in merged:
                    if not await _advance_cursor(conn, tenant_id, first, last):
                        left.append((first, last))
        except BaseException:
            acked.ranges.extend(merged)  # rolled back: the next flush tries them again
            raise
        acked.age = acked.age + 1 if left else 0
        if left and acked.age * self._flush_interval <= 30.0:
            acked.ranges.extend(left)  # a gap nobody filled for 30 s is the relay's job
        if not acked.ranges:
            del self._acked[tenant_id]


class Relay:
    """Publishes committed events that were not published (see module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        *,
        idle: float = 5.0,
        interval: float = 1.0,
        page: int = 1000,
        tenants_per_scan: int = 500,
        concurrency: int = 4,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._idle = timedelta(seconds=idle)
        self._interval = interval
        self._page = page
        self._tenants_per_scan = tenants_per_scan
        self._concurrency = concurrency

    async def run(self) -> None:
        """Scan and publish until cancelled."""
        while True:
            try:
                js = await self._broker.jetstream()
                await self.relay_once(js)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("relay pass failed (%s); retrying", type(e).__name__)
            await asyncio.sleep(self._interval)

    async def relay_once(self, js: JetStreamContext, *, idle: timedelta | None = None) -> int:
        """One pass over the backlog; returns the number of events published. A few
        tenants at a time, each one's events in order; the first error ends the pass."""
        rows = await self._pool.fetch(
            "SELECT tenant_id, size, published_seq FROM relay_backlog($1, $2)",
            self._idle if idle is None else idle,
            self._tenants_per_scan,
        )
        metrics.RELAY_BACKLOG.set(sum(r["size"] - r["published_seq"] for r in rows))
        slots = asyncio.Semaphore(self._concurrency)

        async def relay(r: asyncpg.Record) -> int:
            async with slots:
                return await self._relay_tenant(js, r["tenant_id"], r["published_seq"], r["size"])

        tasks = [asyncio.create_task(relay(r)) for r in rows]
        if not tasks:
            return 0
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()  # none left but after an error, or when cancelled
            await asyncio.wait(tasks)
        errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if errors:
            raise errors[0]
        return sum(task.result() for task in tasks)

    async def _relay_tenant(
        self, js: JetStreamContext, tenant_id: UUID, published: int, size: int
    ) -> int:
        """Publish the tenant's events after ``published`` up to ``size`` in order, a page
        at a time: the next page is read and sent while the acknowledgements of the one
        before arrive; the cursor moves over a page once all of it is acknowledged."""
        done = 0
        in_flight: tuple[list[asyncio.Future[Any]], int, int] | None = None
        """The page sent last: its acknowledgements, its last seq, its size."""
        try:
            while published < size:
                async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
                    rows = await conn.fetch(
                        "SELECT seq, stream_id, event_type, leaf, chain_hash FROM event_log "
                        "WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
                        tenant_id,
                        published,
                        min(size, published + self._page),
                    )
                if not rows:
                    break
                events = [
                    Committed(r["seq"], r["stream_id"], r["event_type"], r["leaf"], r["chain_hash"])
                    for r in rows
                ]
                futures = await publish_events(js, tenant_id, events)
                before, in_flight = in_flight, (futures, events[-1].seq, len(events))
                if before is not None:
                    done += await self._acknowledged(tenant_id, *before)
                published = events[-1].seq
            if in_flight is not None:
                before, in_flight = in_flight, None
                done += await self._acknowledged(tenant_id, *before)
        finally:
            if in_flight is not None:  # failed: what is still in flight is not waited for
                for future in in_flight[0]:
                    future.cancel()
        return done

    async def _acknowledged(
        self, tenant_id: UUID, futures: list[asyncio.Future[Any]], last: int, count: int
    ) -> int:
        """Wait for a page's acknowledgements, then move the cursor over it."""
        try:
            async with asyncio.timeout(ACK_TIMEOUT):
                await asyncio.gather(*futures)
        except Exception:
            for future in futures:
                future.cancel()
            metrics.PUBLISH_FAILURES.labels("relay").inc()
            raise
        metrics.EVENTS_PUBLISHED.labels("relay").inc(count)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            await conn.execute(
                "INSERT INTO relay_cursor (tenant_id, published_seq) VALUES ($1, $2) "
                "ON CONFLICT (tenant_id) DO UPDATE SET published_seq = "
                "GREATEST(relay_cursor.published_seq, EXCLUDED.published_seq), "
                "updated_at = now()",
                tenant_id,
                last,
            )
        return count
