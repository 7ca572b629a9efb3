"""Runs projections: JetStream says "tenant T has reached seq N", Postgres has the events.

The runner consumes a durable JetStream pull consumer per projection. A
message is only a wake-up with a position: for each tenant in a fetched
batch, in ONE transaction under that tenant's row-level security, the runner
locks the projection's position row, reads the events after it from the
event store (so a gap — a lost, late or reordered message — is filled from
the store, and a duplicate, ``seq <= position``, reads nothing), applies the
handled ones, moves the position and notifies waiters; then it acknowledges
the messages. Nothing in a read model comes from the message itself, so a
forged or corrupted message cannot put anything into one.

At-least-once delivery, exactly-once effect: a crash before commit leaves the
position where it was (the messages are redelivered, or the sweep finds the
lag); a crash after commit but before the ack makes the redelivery a duplicate.

A projector that raises for an event: the events before it are committed, the
event is retried with exponential backoff in the background, and after
``max_attempts`` the (projection, tenant) partition is parked: the position
row records the seq and the error class, a ``projection_failure`` row is
written, a metric and a log line (seq and type, never content) are emitted.
Other tenants keep flowing. ``strongroom projections retry`` un-parks.

The sweep (every ``sweep_interval``) asks Postgres which partitions are
behind; one that made no progress since the previous sweep is caught up from
the store. This covers a lost last message, NATS being down, new projections
and un-parked partitions.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from infra import metrics
from infra.broker import STREAM_NAME, SUBJECT_PREFIX, Broker
from infra.db import tenant_transaction
from infra.eventstore import ERASED, EventStore, EventStoreIntegrityError, RecordedEvent
from infra.keyring import DecryptionError, TenantKeyError
from projections.base import Event, Projection

log = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "strongroom_projection"
POSITION_DDL: Final = """
    CREATE TABLE position (
        tenant_id     uuid PRIMARY KEY,
        last_seq      bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
        last_ts       timestamptz,
        updated_at    timestamptz NOT NULL DEFAULT now(),
        parked_seq    bigint,
        parked_error  text,
        parked_at     timestamptz
    );
"""


UNREADABLE: Final = (EventStoreIntegrityError, DecryptionError)
"""An event whose personal data does not open: retrying will not help. Except a
:class:`TenantKeyError` (a subclass): every event of the tenant fails then, usually
because the master key is wrong, and fixing that must not find partitions parked."""


class HandlerFailedError(Exception):
    """A projector raised for one event, or its personal data did not open; the
    transaction was rolled back."""

    def __init__(self, seq: int, event_type: str, cause: Exception) -> None:
        super().__init__(f"projector failed at seq {seq} ({event_type}): {describe(cause)}")
        self.seq = seq
        self.event_type = event_type
        self.cause = cause


class BatchFailedError(Exception):
    """A projection's ``apply_batch`` raised for a page: the transaction must be rolled
    back and the page applied again one event at a time, which names the failing one."""


Transactions = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
"""Opens a transaction of one tenant (or a savepoint inside one) per call."""


def describe(error: BaseException) -> str:
    """The error's class and where it was raised: no message, which may quote data."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"


@dataclass(frozen=True, slots=True)
class Page:
    before: int
    after: int
    parked: bool = False
    first_ts: datetime | None = None


def to_projection_event(tenant_id: UUID, recorded: RecordedEvent) -> Event:
    return Event(
        tenant_id=tenant_id,
        seq=recorded.seq,
        stream=recorded.stream,
        version=recorded.version,
        type=recorded.type,
        ts=recorded.ts,
        actor_kind=recorded.actor.kind,
        actor_id=recorded.actor.id,
        data=recorded.data,
        personal=_as_seen(recorded.personal),
    )


def _as_seen(personal: Mapping[str, object]) -> dict[str, str | None]:
    """Personal fields as a projector sees them: None for an erased one."""
    return {k: None if v is ERASED else str(v) for k, v in personal.items()}


class _LeafActor(msgspec.Struct):
    kind: str
    id: str


class _LeafView(msgspec.Struct):
    """What a projection event takes from a leaf; msgspec skips the other fields."""

    id: str
    stream: str
    version: int
    type: str
    ts: datetime
    actor: _LeafActor
    data: dict[str, Any]
    pii: dict[str, str]


_LEAF = msgspec.json.Decoder(_LeafView)


async def projection_events(
    store: EventStore, conn: asyncpg.Connection, tenant_id: UUID, rows: Sequence[asyncpg.Record]
) -> list[Event]:
    """``event_log`` rows (seq, leaf) as projection events.

    Each leaf is decoded once, into what an :class:`Event` and the personal fields' AAD
    need (msgspec skips the correlation, hashes and the rest unread); the personal
    fields of those that have some are opened together by ``store.open_personal``. The
    same Event as ``to_projection_event`` of ``store.decode``.
    """
    leaves = [_LEAF.decode(row["leaf"]) for row in rows]
    sealed = [
        (row["seq"], leaf.id, leaf.pii) for row, leaf in zip(rows, leaves, strict=True) if leaf.pii
    ]
    opened = iter(await store.open_personal(conn, tenant_id, sealed))
    return [
        Event(
            tenant_id,
            row["seq"],
            leaf.stream,
            leaf.version,
            leaf.type,
            leaf.ts,
            leaf.actor.kind,
            leaf.actor.id,
            leaf.data,
            _as_seen(next(opened)) if leaf.pii else {},
        )
        for row, leaf in zip(rows, leaves, strict=True)
    ]


class Applier:
    """Applies a tenant's next events to one copy (schema) of a projection."""

    def __init__(
        self, store: EventStore, projection: Projection, *, schema: str | None = None
    ) -> None:
        self.store = store
        self.projection = projection
        self.schema = schema or projection.schema
        self.live = self.schema == projection.schema
        self._search_path = f'"{self.schema}", public'
        self._handles = sorted(projection.handles)
        position = f'"{self.schema}".position'
        # One round trip: point search_path at this copy (for the projector's unqualified
        # names), lock the position row, and read the events after it. The lock is taken
        # in a CTE of its own, so the events are read from the position as locked (after
        # waiting for a concurrent transaction, its committed position). Leaves only for
        # the handled types: the others only move the position.
        self._read = f"""
            WITH pos AS MATERIALIZED (
                SELECT last_seq, parked_seq, set_config('search_path', $5, true)
                FROM {position} WHERE tenant_id = $1 FOR UPDATE
            )
            SELECT pos.last_seq, pos.parked_seq, e.seq, e.event_type, e.recorded_at, e.leaf
            FROM pos LEFT JOIN LATERAL (
                SELECT l.seq, l.event_type,
                    CASE WHEN l.seq = pos.last_seq + 1 THEN l.recorded_at END AS recorded_at,
                    CASE WHEN l.event_type = ANY($4::text[]) THEN l.leaf END AS leaf
                FROM public.event_log l
                WHERE l.tenant_id = $1 AND pos.parked_seq IS NULL AND l.seq > pos.last_seq
                    AND l.seq <= LEAST($2::bigint, pos.last_seq + $3::bigint)
            ) e ON true
            ORDER BY e.seq
        """
        self._create = f"INSERT INTO {position} (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING"
        # Moving the position and notifying waiters (live copy only): one statement. The
        # page's rows carry only the first event's time (for the lag; a seq follows the
        # position with no gap): decoding one timestamptz per row cost ~1 µs an event.
        self._move = (
            f"UPDATE {position} SET last_seq = $2, updated_at = now(), last_ts = "
            "(SELECT recorded_at FROM public.event_log WHERE tenant_id = $1 AND seq = $2) "
            "WHERE tenant_id = $1"
        )
        if self.live:
            self._move += " RETURNING pg_notify($3, $4)"

    async def enter(self, conn: asyncpg.Connection) -> None:
        """Point unqualified names at this copy for the rest of the transaction."""
        await conn.execute("SELECT set_config('search_path', $1, true)", self._search_path)

    async def apply_in(
        self, transactions: Transactions, tenant_id: UUID, target: int, page: int
    ) -> Page:
        """:meth:`apply_page` in a transaction of its own. If the projection's batch
        raises, that transaction is rolled back and the page applied again in a new one,
        event by event: a :class:`HandlerFailedError` then names the failing event."""
        try:
            async with transactions() as conn:
                return await self.apply_page(conn, tenant_id, target, page)
        except BatchFailedError:
            async with transactions() as conn:
                return await self.apply_page(conn, tenant_id, target, page, batched=False)

    async def apply_page(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        target: int,
        page: int,
        *,
        batched: bool = True,
    ) -> Page:
        """In ``conn``'s tenant transaction: apply events after the position, up to
        ``target`` and at most ``page`` of them; move the position. The handled events
        go to the projection's ``apply_batch`` (``batched``; ``apply`` for only one) or
        one by one to ``apply``. Raises :class:`HandlerFailedError` for an event that
        failed, :class:`BatchFailedError` for a batch that did (the caller must roll
        back either way)."""
        args = (tenant_id, target, page, self._handles, self._search_path)
        rows = await conn.fetch(self._read, *args)
        if not rows:  # the tenant's first page: no position row yet
            await conn.execute(self._create, tenant_id)
            rows = await conn.fetch(self._read, *args)
        last: int = rows[0]["last_seq"]
        if rows[0]["parked_seq"] is not None:
            return Page(last, last, parked=True)
        if rows[0]["seq"] is None:  # nothing after the position, up to the target
            return Page(last, last)
        handles = self.projection.handles
        wanted = [r for r in rows if r["event_type"] in handles]
        events = await self._events(conn, tenant_id, wanted)
        if batched and len(events) > 1:
            try:
                await self.projection.apply_batch(conn, events)
            except Exception as e:
                raise BatchFailedError(
                    f"{self.projection.name}: a batch of {len(events)} events failed"
                ) from e
        else:
            for event in events:
                try:
                    await self.projection.apply(conn, event)
                except Exception as e:
                    raise HandlerFailedError(event.seq, event.type, e) from e
        new_last: int = rows[-1]["seq"]
        notify = (NOTIFY_CHANNEL, f"{self.projection.name} {tenant_id} {new_last}")
        await conn.execute(self._move, tenant_id, new_last, *(notify if self.live else ()))
        return Page(last, new_last, first_ts=rows[0]["recorded_at"])

    async def _events(
        self, conn: asyncpg.Connection, tenant_id: UUID, rows: Sequence[asyncpg.Record]
    ) -> list[Event]:
        """The page's events. One whose personal data does not open (altered, missing,
        under another key) is a poison event like one the projector raises for:
        :class:`HandlerFailedError` names it (found by opening the page's events one by
        one), so the partition parks at it instead of failing forever."""
        try:
            return await projection_events(self.store, conn, tenant_id, rows)
        except TenantKeyError:
            raise  # not this event's: transient for the runner, fatal for a rebuild
        except UNREADABLE:
            for row in rows:
                try:
                    await projection_events(self.store, conn, tenant_id, [row])
                except TenantKeyError:
                    raise
                except UNREADABLE as e:
                    raise HandlerFailedError(row["seq"], row["event_type"], e) from e
            raise

    async def park(
        self, conn: asyncpg.Connection, tenant_id: UUID, failure: HandlerFailedError, attempts: int
    ) -> None:
        """In ``conn``'s tenant transaction: stop this partition at the failing event."""
        await self.enter(conn)
        error = describe(failure.cause)
        await conn.execute(
            "UPDATE position SET parked_seq = $2, parked_error = $3, parked_at = now() "
            "WHERE tenant_id = $1",
            tenant_id,
            failure.seq,
            error,
        )
        await conn.execute(
            "INSERT INTO public.projection_failure "
            "(tenant_id, projection, seq, event_type, error, attempts) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            tenant_id,
            self.projection.name,
            failure.seq,
            failure.event_type,
            error,
            attempts,
        )


@dataclass(frozen=True, slots=True)
class Partition:
    tenant_id: UUID
    head: int
    position: int
    parked_seq: int | None = None
    parked_error: str | None = None
    parked_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)


async def partitions(
    pool: asyncpg.Pool, projection: str, *, behind_only: bool = False
) -> list[Partition]:
    """Every tenant's head and this projection's position (positions only, no content)."""
    rows = await pool.fetch("SELECT * FROM projection_partitions($1, $2)", projection, behind_only)
    return [Partition(**dict(r)) for r in rows]


async def unpark(pool: asyncpg.Pool, projection: Projection, tenant_id: UUID) -> bool:
    """Clear a parked partition so the runner tries its failing event again."""
    async with tenant_transaction(pool, tenant_id) as conn:
        status = await conn.execute(
            f'UPDATE "{projection.schema}".position SET parked_seq = NULL, parked_error = NULL, '
            "parked_at = NULL WHERE tenant_id = $1 AND parked_seq IS NOT NULL",
            tenant_id,
        )
    return bool(status == "UPDATE 1")


@dataclass(slots=True)
class _Retry:
    seq: int
    attempts: int
    task: asyncio.Task[None] | None = None


class ProjectionRunner:
    """Keeps one projection's live read model up to date (see module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        broker: Broker,
        projection: Projection,
        *,
        fetch_batch: int = 2000,
        page: int = 1000,
        max_attempts: int = 5,
        backoff: float = 0.05,
        sweep_interval: float = 1.0,
        concurrency: int = 8,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._projection = projection
        self._applier = Applier(store, projection)
        self._fetch_batch = fetch_batch
        self._page = page
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._sweep_interval = sweep_interval
        self._slots = asyncio.Semaphore(concurrency)
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._retries: dict[UUID, _Retry] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._last_sweep: dict[UUID, int] = {}
        self._reached: dict[UUID, int] = {}
        """Per tenant, a position this runner knows committed: a message for a seq at or
        below it is a duplicate, acknowledged without a transaction. Positions only move
        forward, except when a rebuild parks a tenant lower; the sweep then refreshes it
        from the database (and a parked partition applies nothing anyway)."""

    @property
    def durable(self) -> str:
        return f"projection_{self._projection.name}"

    async def run(self) -> None:
        """Consume and sweep until cancelled."""
        tasks = [
            asyncio.create_task(self._consume_loop()),
            asyncio.create_task(self._sweep_loop()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            children = [*tasks, *self._background]
            pending = set(children)
            while pending:
                # Cancel again until they end: on Python 3.11 nats-py's fetch (through
                # asyncio.wait_for) can swallow a cancellation, and the loop goes on.
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.2)
            for task in children:
                if not task.cancelled():
                    task.exception()  # retrieved: run() reports only its own outcome

    # ---- consuming --------------------------------------------------------------

    async def _consume_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                js = await self._broker.jetstream()
                sub = await js.pull_subscribe(
                    f"{SUBJECT_PREFIX}.>",
                    durable=self.durable,
                    stream=STREAM_NAME,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.NEW,
                        ack_wait=30,
                        max_ack_pending=20_000,
                        description=f"Strongroom projection {self._projection.name}",
                    ),
                )
                delay = 0.2
                while True:
                    try:
                        messages = await sub.fetch(self._fetch_batch, timeout=1.0)
                    except TimeoutError:
                        continue
                    await self.handle_messages(messages)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "projection %s: consumer failed (%s); reconnecting",
                    self._projection.name,
                    type(e).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def handle_messages(self, messages: Sequence[Msg]) -> None:
        """Apply what a batch of messages announces, then acknowledge them."""
        targets: dict[UUID, int] = {}
        announced: dict[UUID, int] = {}
        parsed_all = [_parse(msg) for msg in messages]
        for parsed in parsed_all:
            if parsed is None:
                log.warning("projection %s: ignored a malformed message", self._projection.name)
                continue
            tenant_id, seq = parsed
            targets[tenant_id] = max(targets.get(tenant_id, 0), seq)
            announced[tenant_id] = announced.get(tenant_id, 0) + 1
        for tenant_id in [t for t, s in targets.items() if s <= self._reached.get(t, 0)]:
            del targets[tenant_id]  # duplicates only: nothing to read
            metrics.DUPLICATES.labels(self._projection.name).inc(announced[tenant_id])
        outcomes = await asyncio.gather(
            *(self._advance_announced(t, s, announced[t]) for t, s in targets.items())
        )
        failed = {t for t, done in zip(targets, outcomes, strict=True) if not done}
        for msg, parsed in zip(messages, parsed_all, strict=True):
            try:
                if parsed is None or parsed[0] not in failed:
                    await msg.ack()
                else:
                    await msg.nak(delay=1.0)
            except Exception as e:
                log.debug("ack failed (%s): the message comes again", type(e).__name__)

    async def _advance_announced(self, tenant_id: UUID, target: int, messages: int) -> bool:
        """Advance for messages; False on a transient failure (messages are redelivered)."""
        if tenant_id in self._retries:
            return True  # its retry catches up from the store when it succeeds
        try:
            before, after = await self.advance(tenant_id, target)
        except HandlerFailedError as failure:
            self._start_retry(tenant_id, failure)
            return True
        except Exception as e:
            log.warning(
                "projection %s: could not apply (%s); will retry",
                self._projection.name,
                type(e).__name__,
            )
            return False
        fresh = after - before
        if fresh < messages:
            metrics.DUPLICATES.labels(self._projection.name).inc(messages - fresh)
        elif fresh > messages:
            metrics.CAUGHT_UP_FROM_STORE.labels(self._projection.name).inc(fresh - messages)
        return True

    # ---- applying ---------------------------------------------------------------

    async def advance(self, tenant_id: UUID, target: int) -> tuple[int, int]:
        """Apply the tenant's events up to ``target`` (in pages); returns (before, after).

        Raises :class:`HandlerFailedError` after committing the events before the
        failing one.
        """
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        # The tenant's lock first: waiting for it does not hold a slot other tenants need.
        async with lock, self._slots:
            reached = self._reached.get(tenant_id, 0)
            if reached >= target:  # known applied (a message's duplicate, a sweep's late)
                return reached, reached
            first: int | None = None
            while True:
                try:
                    page = await self._apply_one_page(tenant_id, target)
                except HandlerFailedError as failure:
                    metrics.HANDLER_ERRORS.labels(self._projection.name).inc()
                    # The events before the failing one are fine: commit them.
                    await self._apply_one_page(tenant_id, failure.seq - 1)
                    raise
                first = page.before if first is None else first
                if page.parked or page.after >= target or page.after == page.before:
                    return first, page.after

    async def _apply_one_page(self, tenant_id: UUID, target: int) -> Page:
        page = await self._applier.apply_in(
            lambda: tenant_transaction(self._pool, tenant_id), tenant_id, target, self._page
        )
        self._reached[tenant_id] = max(self._reached.get(tenant_id, 0), page.after)
        name = self._projection.name
        if page.after > page.before:
            metrics.PROJECTED.labels(name).inc(page.after - page.before)
            if page.first_ts is not None:
                metrics.LAG_SECONDS.labels(name).set(
                    max((datetime.now(UTC) - page.first_ts).total_seconds(), 0.0)
                )
        return page

    # ---- poison events ----------------------------------------------------------

    def _start_retry(self, tenant_id: UUID, failure: HandlerFailedError) -> None:
        log.warning(
            "projection %s: seq %d (%s) failed: %s; retrying",
            self._projection.name,
            failure.seq,
            failure.event_type,
            describe(failure.cause),
        )
        retry = _Retry(failure.seq, 1)
        self._retries[tenant_id] = retry
        retry.task = self._spawn(self._retry(tenant_id, retry, failure))

    async def _retry(self, tenant_id: UUID, retry: _Retry, failure: HandlerFailedError) -> None:
        try:
            while retry.attempts < self._max_attempts:
                await asyncio.sleep(self._backoff * 2 ** (retry.attempts - 1))
                retry.attempts += 1
                try:
                    await self.advance(tenant_id, retry.seq)
                except HandlerFailedError as again:
                    failure = again
                    continue
                await self.advance(tenant_id, await self._head(tenant_id))
                log.info("projection %s: seq %d applied on retry", self._projection.name, retry.seq)
                return
            async with tenant_transaction(self._pool, tenant_id) as conn:
                await self._applier.park(conn, tenant_id, failure, retry.attempts)
            log.error(
                "projection %s: partition parked at seq %d (%s) after %d attempts: %s",
                self._projection.name,
                failure.seq,
                failure.event_type,
                retry.attempts,
                describe(failure.cause),
            )
        except Exception as e:
            log.warning(
                "projection %s: retry interrupted (%s); the sweep resumes it",
                self._projection.name,
                type(e).__name__,
            )
        finally:
            self._retries.pop(tenant_id, None)

    async def _head(self, tenant_id: UUID) -> int:
        async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
            size = await conn.fetchval(
                "SELECT size FROM tenant_log WHERE tenant_id = $1", tenant_id
            )
        return int(size or 0)

    # ---- sweeping ---------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "projection %s: sweep failed (%s)", self._projection.name, type(e).__name__
                )

    async def sweep(self, *, patient: bool = True) -> int:
        """Catch up partitions that are behind and made no progress since the last
        sweep (all that are behind when ``patient`` is False). Returns how many."""
        name = self._projection.name
        behind = await partitions(self._pool, name, behind_only=True)
        metrics.PARKED.labels(name).set(sum(1 for p in behind if p.parked_seq is not None))
        metrics.LAG_EVENTS.labels(name).set(sum(p.lag for p in behind))
        if not any(p.lag for p in behind if p.parked_seq is None):
            metrics.LAG_SECONDS.labels(name).set(0)
        for p in behind:  # what the database says: a rebuild may have parked one lower
            self._reached[p.tenant_id] = p.position
        stalled = [
            p
            for p in behind
            if p.parked_seq is None
            and p.lag > 0
            and p.tenant_id not in self._retries
            and not self._busy(p.tenant_id)  # being applied now: not stalled
            and (not patient or self._last_sweep.get(p.tenant_id) == p.position)
        ]
        self._last_sweep = {p.tenant_id: p.position for p in behind}
        await asyncio.gather(*(self._catch_up(p) for p in stalled))
        return len(stalled)

    def _busy(self, tenant_id: UUID) -> bool:
        lock = self._locks.get(tenant_id)
        return lock is not None and lock.locked()

    async def _catch_up(self, partition: Partition) -> None:
        try:
            before, after = await self.advance(partition.tenant_id, partition.head)
        except HandlerFailedError as failure:
            self._start_retry(partition.tenant_id, failure)
            return
        metrics.CAUGHT_UP_FROM_STORE.labels(self._projection.name).inc(after - before)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _parse(msg: Msg) -> tuple[UUID, int] | None:
    """(tenant, seq) from a message's subject and header, or None if malformed."""
    parts = msg.subject.split(".")
    try:
        if len(parts) != 4 or ".".join(parts[:2]) != SUBJECT_PREFIX:
            return None
        seq = int((msg.headers or {}).get("Strongroom-Seq", ""))
        return (UUID(parts[2]), seq) if seq >= 1 else None
    except ValueError:
        return None
