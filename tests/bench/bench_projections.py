"""The projection pipeline: commit → JetStream → read model, the relay, and rebuild.

Rows (targets from docs PERFORMANCE.md; an ``r`` row is the raw baseline of the row before
it, measured in the same run):

6.  commit → members read model visible: member role changes (one event each) offered
    at a steady 1,000 commands/s (open loop: one started every millisecond, 256 tenants
    round robin, 16 members each), in a process wired by ``Runtime.open`` as
    ``strongroom up`` wires it (after-commit publisher, relay, members runner, pool of
    16). Per command: the time from the repository's ``append`` returning to the
    runner's ``NOTIFY`` for that position reaching a ``LISTEN`` connection (the wake-up
    ``PositionWaiter.wait_for`` uses, without its read of the position per call: load a
    benchmark should not add). At most 500 commands in flight: the rest are shed, so an
    overload shows as a lower rate and a run that still ends;
7.  ``Relay.relay_once(idle=0)`` publishing a log nobody published (the store had no
    publisher attached): 50 tenants, 12,500 members, each invited (personal e-mail),
    given another role, deactivated and reactivated: 50,000 events;
7r. raw JetStream ``publish_async`` of the same messages (subject, leaf, headers),
    at most 4,000 in flight, all acknowledged, into a scratch stream of the same config;
8.  ``rebuild`` of the members projection from the store (every tenant, 4 at a time in
    each process, as many processes as CPUs, as ``strongroom replay rebuild`` does):
    row 7's log, one more like it and row 6's tenants: 100,000 events and row 6's;
8r. raw: the same events read in pages of 1,000 (4 tenants at a time), and per page, in
    one transaction, one upsert of a trivial row per event (one statement) and a
    checkpoint row, in scratch tables without row-level security.

``--quick``: 4 members per tenant in row 6, logs of 2,500 events. Checks: after 6, every
command is in the read model (member count, sum of versions) and no partition is behind;
after 7, the relay published and the stream gained exactly the log, and no relay cursor is
behind; after 8, the rebuilt read model holds every member with its last role and version,
no partition is behind or parked; after 8r, the scratch table holds every event. Notes (no
failure by themselves): commands shed, events that reached the read model by the runner's
sweep rather than by their message, events the relay published because their cursor stood
still, events the publisher left to the relay at shutdown.

These rows want a fresh database and NATS (``make bench`` starts both). With external
servers, what earlier runs left is caught up by the runner before row 6, marked as
published before row 7 (so the relay measures its own log) and rebuilt in row 8.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import prometheus_client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from domain.member import Member
from domain.roles import Role
from infra.broker import STREAM_NAME, Broker, StreamPolicy
from infra.db import APP_ROLE, create_pool, tenant_transaction
from infra.eventstore import Actor, Committed, EventStore
from infra.keyring import Keyring
from infra.projector import NOTIFY_CHANNEL, ProjectionRunner, partitions
from infra.publisher import Relay, headers_for
from infra.readmodels import StoreSpec, default_workers, rebuild
from infra.repository import EventRegistry, Repository
from infra.runtime import Endpoints, Runtime, Workers
from infra.settings import Settings
from projections.members import MembersProjection
from tests.bench._harness import Measurement, Window, run_paced
from tests.bench._stack import BenchDatabase
from tests.bench.bench_append import FULL, QUICK, RowResult, RowSpec, evaluate

OFFERED_RATE = 1000.0
TENANTS = 256
MAX_IN_FLIGHT = 500
POOL_MAX = 16  # STRONGROOM_DB_POOL_SIZE's default
LOG_HOST = "bench.strongroom.localhost"
EVENTS_PER_MEMBER = 4  # invited (personal e-mail), role changed, deactivated, reactivated
MEMBERS_PER_COMMAND = 250  # 1,000 events: the most one command may hold
BUILD_CONCURRENCY = 4
REBUILD_CONCURRENCY = 4  # what ``rebuild`` uses
REBUILD_WORKERS = default_workers()  # what ``strongroom replay rebuild`` uses
PAGE = 1000
MEMBERS = MembersProjection()
REGISTRY = EventRegistry([Member])
ADMIN = Actor("user", "bench-admin")


@dataclass(frozen=True, slots=True)
class LogSize:
    tenants: int
    members_per_tenant: int

    @property
    def members(self) -> int:
        return self.tenants * self.members_per_tenant

    @property
    def events(self) -> int:
        return EVENTS_PER_MEMBER * self.members


@dataclass(frozen=True, slots=True)
class Scale:
    window: Window
    """Row 6's warm-up and measuring time."""
    members_per_tenant: int
    """Row 6's members in each of its tenants."""
    log: LogSize
    """Row 7 relays one log of this size; row 8 rebuilds it, one more and row 6's tenants."""


FULL_SCALE = Scale(FULL, 16, LogSize(tenants=50, members_per_tenant=250))
QUICK_SCALE = Scale(QUICK, 4, LogSize(tenants=5, members_per_tenant=125))

SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec(
            "6",
            "commit -> members visible, 1,000 cmd/s offered",
            1,
            min_rate=0.95 * OFFERED_RATE,
            max_p99_ms=100.0,
        ),
        RowSpec("7", "relay_once, unpublished log of member events", 1, "7r"),
        RowSpec("7r", "  raw JetStream publish_async, same messages", 1, role="baseline"),
        RowSpec(
            "8", "rebuild members projection from the store", REBUILD_CONCURRENCY, "8r", 50_000
        ),
        RowSpec("8r", "  raw: read pages of 1,000, upsert + checkpoint", 4, role="baseline"),
    )
}


def _measured(events: int, seconds: float, errors: list[BaseException]) -> Measurement:
    """A row timed as one piece of work: no per-operation latencies."""
    first = f"{type(errors[0]).__name__}: {errors[0]}" if errors else None
    return Measurement(events, 0, seconds, 0.0, 0.0, len(errors), first, events)


@dataclass(slots=True)
class Stack:
    """A pool, a store with no publisher attached, and a NATS connection."""

    pool: asyncpg.Pool
    store: EventStore
    broker: Broker

    async def close(self) -> None:
        await self.broker.close()
        await self.pool.close()


@asynccontextmanager
async def open_stack(db: BenchDatabase, nats_url: str, keyring: Keyring) -> AsyncIterator[Stack]:
    pool = await create_pool(db.app_url, min_size=8, max_size=POOL_MAX)
    broker = Broker(nats_url)
    broker.start()
    stack = Stack(pool, EventStore(pool, keyring, log_host=LOG_HOST), broker)
    try:
        yield stack
    finally:
        await stack.close()


@dataclass(frozen=True, slots=True)
class MemberStats:
    members: int = 0
    approvers: int = 0
    versions: int = 0
    """Sum of the members' versions: one more for every change applied."""

    def __add__(self, other: MemberStats) -> MemberStats:
        return MemberStats(
            self.members + other.members,
            self.approvers + other.approvers,
            self.versions + other.versions,
        )


async def member_stats(pool: asyncpg.Pool, tenants: Iterable[UUID]) -> MemberStats:
    """What the live members read model holds for ``tenants``."""
    stats = MemberStats()
    for tenant in tenants:
        async with tenant_transaction(pool, tenant, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE role = 'approver') AS a, "
                f'coalesce(sum(version), 0) AS v FROM "{MEMBERS.schema}".members_view '
                "WHERE tenant_id = $1",
                tenant,
            )
        stats += MemberStats(row["n"], row["a"], row["v"])
    return stats


async def _behind(pool: asyncpg.Pool, tenants: set[UUID]) -> list[str]:
    all_behind = await partitions(pool, MEMBERS.name, behind_only=True)
    behind = [p for p in all_behind if p.tenant_id in tenants]
    if not behind:
        return []
    parked = sum(1 for p in behind if p.parked_seq is not None)
    return [
        f"{len(behind)} members partitions behind ({parked} parked), "
        f"{sum(p.lag for p in behind)} events not applied"
    ]


async def _unpublished(pool: asyncpg.Pool) -> dict[UUID, int]:
    """Events committed but not published (per the relay cursors), by tenant."""
    rows = await pool.fetch(
        "SELECT tenant_id, size - published_seq AS n FROM relay_backlog($1, 1000000)",
        timedelta(0),
    )
    return {r["tenant_id"]: r["n"] for r in rows}


# ---- row 6: commit -> read model visible ---------------------------------------------------


RELAYED = ("strongroom_events_published_total", {"source": "relay"})
CAUGHT_UP = ("strongroom_projection_store_catchup_events_total", {"projection": MEMBERS.name})


def _counter(sample: tuple[str, dict[str, str]]) -> float:
    """A counter of infra/metrics.py (this process's)."""
    return prometheus_client.REGISTRY.get_sample_value(*sample) or 0.0


class Visibility:
    """When the members read model reached each tenant's positions, as its runner
    announces them (``NOTIFY`` at commit, the wake-up ``PositionWaiter`` uses): a wait
    ends when the notification is handled here, stamped with ``time.perf_counter()``."""

    def __init__(self) -> None:
        self._reached: dict[UUID, int] = {}
        self._waiters: dict[UUID, list[tuple[int, asyncio.Future[float]]]] = {}
        self._conn: asyncpg.Connection | None = None

    async def start(self, url: str) -> None:
        self._conn = await asyncpg.connect(url)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._notified)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        now = time.perf_counter()
        name, tenant_text, seq_text = payload.split(" ")
        if name != MEMBERS.name:
            return
        tenant, seq = UUID(tenant_text), int(seq_text)
        self._reached[tenant] = max(self._reached.get(tenant, 0), seq)
        for wanted, future in self._waiters.get(tenant, []):
            if seq >= wanted and not future.done():
                future.set_result(now)

    async def wait(self, tenant: UUID, seq: int, timeout: float = 10.0) -> float:
        """The time the read model showed ``seq`` of ``tenant`` (now, if it already has)."""
        if self._reached.get(tenant, 0) >= seq:
            return time.perf_counter()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        entry = (seq, future)
        self._waiters.setdefault(tenant, []).append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiters[tenant].remove(entry)


@dataclass(slots=True)
class Directory:
    """The members of row 6's tenants, kept in memory; one command at a time per member."""

    repository: Repository
    free: dict[UUID, deque[Member]]
    versions: int = 0

    @classmethod
    async def invite(
        cls, repository: Repository, visibility: Visibility, tenants: list[UUID], per_tenant: int
    ) -> Directory:
        free: dict[UUID, deque[Member]] = {}

        async def fill(tenant: UUID) -> None:
            members = deque(
                Member.invite(tenant, f"member-{i}@example.test", Role.REQUESTER)
                for i in range(per_tenant)
            )
            result = await repository.save(tenant, *members, command_id=uuid4(), actor=ADMIN)
            assert result is not None
            await visibility.wait(tenant, result.last_seq, timeout=30)
            free[tenant] = members

        await asyncio.gather(*(fill(t) for t in tenants))
        return cls(repository, free, len(tenants) * per_tenant)

    async def change_role(self, tenant: UUID) -> int:
        """Change a free member's role (the other of two); returns the seq written."""
        members = self.free[tenant]
        if not members:
            raise RuntimeError("every member of the tenant has a command in flight")
        member = members.popleft()
        try:
            member.change_role(Role.APPROVER if member.role == Role.REQUESTER else Role.REQUESTER)
            result = await self.repository.save(tenant, member, command_id=uuid4(), actor=ADMIN)
        except Exception:
            member = await self.repository.get(tenant, Member, member.id)
            raise
        finally:
            members.append(member)
        assert result is not None
        self.versions += 1
        return result.last_seq


async def commit_to_visible(
    db: BenchDatabase, nats_url: str, master_key: bytes, scale: Scale
) -> tuple[RowResult, list[UUID], MemberStats]:
    """Row 6; also returns its tenants and what their read model must hold."""
    tenants = [uuid4() for _ in range(TENANTS)]
    settings = Settings(log_host=LOG_HOST)
    endpoints = Endpoints(db.app_url, nats_url, master_key)
    visibility = Visibility()
    runtime: Runtime | None = None
    try:
        await visibility.start(db.app_url)
        runtime = await Runtime.open(
            settings, endpoints, Workers(relay=True, projections=(MEMBERS,))
        )
        await _wait_for_consumer(await runtime.broker.jetstream(), f"projection_{MEMBERS.name}")
        # An external database may hold partitions behind: catch them up first.
        await ProjectionRunner(runtime.pool, runtime.store, runtime.broker, MEMBERS).sweep(
            patient=False
        )
        repository = Repository(runtime.store, REGISTRY)
        directory = await Directory.invite(
            repository, visibility, tenants, scale.members_per_tenant
        )

        async def change_role(n: int) -> float:
            tenant = tenants[n % TENANTS]
            seq = await directory.change_role(tenant)
            appended = time.perf_counter()
            await visibility.wait(tenant, seq)
            return appended

        published, caught_up = _counter(RELAYED), _counter(CAUGHT_UP)
        measurement = await run_paced(
            change_role, OFFERED_RATE, scale.window, max_in_flight=MAX_IN_FLIGHT
        )
        published, caught_up = _counter(RELAYED) - published, _counter(CAUGHT_UP) - caught_up
    finally:
        if runtime is not None:
            await runtime.close()  # the publisher moves the relay cursors over what was acked
        await visibility.close()
    expected = MemberStats(len(tenants) * scale.members_per_tenant, 0, directory.versions)
    pool = await create_pool(db.app_url)
    try:
        problems = await _behind(pool, set(tenants))
        held = await member_stats(pool, tenants)
        if (held.members, held.versions) != (expected.members, expected.versions):
            problems.append(
                f"read model holds {held.members} members at versions summing to "
                f"{held.versions}, expected {expected.members} and {expected.versions}"
            )
        left = {t: n for t, n in (await _unpublished(pool)).items() if t in set(tenants)}
    finally:
        await pool.close()
    notes = []
    if measurement.shed:
        notes.append(
            f"{measurement.shed} commands not started: {MAX_IN_FLIGHT} in flight (overload)"
        )
    if caught_up:
        notes.append(f"{caught_up:.0f} events reached the read model by the sweep, not a message")
    if published:
        notes.append(
            f"the relay published {published:.0f} events (their cursors stood still for 5 s)"
        )
    if left:
        notes.append(
            f"the publisher left {sum(left.values())} events of {len(left)} tenants to the "
            "relay at shutdown"
        )
    return RowResult(SPECS["6"], measurement, problems, notes), tenants, expected


async def _wait_for_consumer(js: JetStreamContext, durable: str) -> None:
    """The runner's consumer delivers only messages published after it exists."""
    async with asyncio.timeout(15):
        while True:
            with contextlib.suppress(NotFoundError):
                await js.consumer_info(STREAM_NAME, durable)
                return
            await asyncio.sleep(0.05)


# ---- the log of rows 7 and 8 ---------------------------------------------------------------


Captured = list[tuple[UUID, Sequence[Committed]]]


def capture(store: EventStore) -> Captured:
    """What ``store`` commits from now on (a list, not a publisher)."""
    captured: Captured = []
    store.add_commit_listener(lambda tenant, events: captured.append((tenant, events)))
    return captured


async def build_log(store: EventStore, size: LogSize) -> list[UUID]:
    """Append ``size`` members' events in new tenants (big commands, a few tenants at a
    time); return the tenants."""
    repository = Repository(store, REGISTRY)
    tenants = [uuid4() for _ in range(size.tenants)]
    slots = asyncio.Semaphore(BUILD_CONCURRENCY)

    async def fill(tenant: UUID) -> None:
        async with slots:
            for first in range(0, size.members_per_tenant, MEMBERS_PER_COMMAND):
                members = []
                for i in range(first, min(first + MEMBERS_PER_COMMAND, size.members_per_tenant)):
                    member = Member.invite(tenant, f"user-{i}@example.test", Role.REQUESTER)
                    member.change_role(Role.APPROVER)
                    member.deactivate()
                    member.reactivate()
                    members.append(member)
                await repository.save(tenant, *members, command_id=uuid4(), actor=ADMIN)

    await asyncio.gather(*(fill(t) for t in tenants))
    return tenants


async def _settle_relay(db: BenchDatabase, pool: asyncpg.Pool, keep: set[UUID]) -> None:
    """Mark what other tenants left unpublished as published (an external database only:
    a fresh one has nothing), so that the relay row measures its own log."""
    others = [t for t in await _unpublished(pool) if t not in keep]
    if not others:
        return
    conn = await asyncpg.connect(db.owner_url)
    try:
        async with conn.transaction():
            for tenant in others:
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                await conn.execute(
                    "INSERT INTO relay_cursor (tenant_id, published_seq) "
                    "SELECT tenant_id, size FROM tenant_log WHERE tenant_id = $1 "
                    "ON CONFLICT (tenant_id) DO UPDATE SET published_seq = EXCLUDED.published_seq",
                    tenant,
                )
    finally:
        await conn.close()


# ---- row 7: the relay, and raw JetStream publishing ------------------------------------------


async def relay_log(stack: Stack, tenants: list[UUID], size: LogSize) -> RowResult:
    js = await stack.broker.jetstream()
    before = (await js.stream_info(STREAM_NAME)).state.messages
    errors: list[BaseException] = []
    published = 0
    started = time.perf_counter()
    try:
        published = await Relay(stack.pool, stack.broker).relay_once(js, idle=timedelta(0))
    except Exception as e:
        errors.append(e)
    seconds = time.perf_counter() - started
    gained = (await js.stream_info(STREAM_NAME)).state.messages - before
    problems = []
    if published != size.events or gained != size.events:
        problems.append(
            f"relay published {published} and the stream gained {gained} messages, "
            f"the log holds {size.events}"
        )
    left = {t: n for t, n in (await _unpublished(stack.pool)).items() if t in set(tenants)}
    if left:
        problems.append(f"relay cursors left {sum(left.values())} events unpublished")
    return RowResult(SPECS["7"], _measured(published, seconds, errors), problems)


async def raw_publish(js: JetStreamContext, captured: Captured, suffix: str) -> RowResult:
    name, prefix = f"BENCH_RAW_{suffix.upper()}", f"bench_raw_{suffix}"
    config = dataclasses.replace(
        StreamPolicy().config(), name=name, subjects=[f"{prefix}.>"], description="bench"
    )
    await js.add_stream(config)
    errors: list[BaseException] = []
    futures: list[asyncio.Future[Any]] = []
    total = sum(len(events) for _, events in captured)
    try:
        started = time.perf_counter()
        try:
            for tenant, events in captured:
                for e in events:
                    subject = f"{prefix}.{tenant}.{e.stream.split('-', 1)[0]}"
                    headers = headers_for(tenant, e)
                    futures.append(await js.publish_async(subject, e.leaf, headers=headers))
            async with asyncio.timeout(60):
                await asyncio.gather(*futures)
        except Exception as e:
            errors.append(e)
        seconds = time.perf_counter() - started
        stored = (await js.stream_info(name)).state.messages
    finally:
        await js.delete_stream(name)
    acked = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
    problems = [] if stored == total else [f"stream holds {stored} messages of {total} sent"]
    return RowResult(SPECS["7r"], _measured(acked, seconds, errors), problems)


# ---- row 8: rebuild, and the raw read + upsert + checkpoint --------------------------------


async def rebuild_members(
    db: BenchDatabase,
    stack: Stack,
    log_tenants: list[UUID],
    size: LogSize,
    row6: tuple[list[UUID], MemberStats],
    master_key: bytes,
) -> RowResult:
    errors: list[BaseException] = []
    notes: list[str] = []
    events = 0
    spec = StoreSpec(db.app_url, master_key, LOG_HOST)
    started = time.perf_counter()
    try:
        report = await rebuild(
            db.owner_url, stack.pool, stack.store, MEMBERS, workers=REBUILD_WORKERS, spec=spec
        )
        events = report.events
        notes.append(
            "events built per process: " + " + ".join(f"{n:,}" for n in report.per_process)
        )
        if report.parked:
            errors.append(RuntimeError(f"{len(report.parked)} tenants parked"))
    except Exception as e:
        errors.append(e)
    seconds = time.perf_counter() - started
    heads = await partitions(stack.pool, MEMBERS.name)
    problems = await _behind(stack.pool, {p.tenant_id for p in heads})
    held_log = await member_stats(stack.pool, log_tenants)
    if held_log != MemberStats(size.members, size.members, size.events):
        problems.append(
            f"read model holds {held_log.members} members ({held_log.approvers} approvers, "
            f"versions summing to {held_log.versions}) of the log's {size.members} "
            f"({size.members}, {size.events})"
        )
    row6_tenants, row6_expected = row6
    held_row6 = await member_stats(stack.pool, row6_tenants)
    if (held_row6.members, held_row6.versions) != (row6_expected.members, row6_expected.versions):
        problems.append(
            f"read model holds {held_row6.members} of row 6's {row6_expected.members} members, "
            f"versions summing to {held_row6.versions}, not {row6_expected.versions}"
        )
    if not errors and events != sum(p.head for p in heads):
        problems.append(f"rebuilt {events} events, the logs hold {sum(p.head for p in heads)}")
    return RowResult(SPECS["8"], _measured(events, seconds, errors), problems, notes)


async def _owner_execute(db: BenchDatabase, sql: str) -> None:
    conn = await asyncpg.connect(db.owner_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def raw_rebuild(db: BenchDatabase, pool: asyncpg.Pool) -> RowResult:
    suffix = secrets.token_hex(4)
    rows_table, checkpoint = f"bench_proj_rows_{suffix}", f"bench_proj_ckpt_{suffix}"
    await _owner_execute(
        db,
        f"CREATE TABLE {rows_table} (tenant_id uuid, seq bigint, stream text NOT NULL, "
        "type text NOT NULL, PRIMARY KEY (tenant_id, seq));"
        f"CREATE TABLE {checkpoint} (tenant_id uuid PRIMARY KEY, last_seq bigint NOT NULL);"
        f"GRANT SELECT, INSERT, UPDATE ON {rows_table}, {checkpoint} TO {APP_ROLE};",
    )
    upsert = (
        f"INSERT INTO {rows_table} (tenant_id, seq, stream, type) "
        "SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[]) "
        "ON CONFLICT (tenant_id, seq) DO UPDATE SET stream = EXCLUDED.stream, type = EXCLUDED.type"
    )
    save_checkpoint = (
        f"INSERT INTO {checkpoint} (tenant_id, last_seq) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id) DO UPDATE SET last_seq = EXCLUDED.last_seq"
    )
    heads = {p.tenant_id: p.head for p in await partitions(pool, MEMBERS.name)}
    slots = asyncio.Semaphore(SPECS["8r"].writers)
    done = 0
    errors: list[BaseException] = []

    async def replay(tenant: UUID, size: int) -> None:
        nonlocal done
        last = 0
        async with slots:
            while last < size:
                async with tenant_transaction(pool, tenant) as conn:
                    page = await conn.fetch(
                        "SELECT seq, stream_id, event_type, leaf FROM event_log "
                        "WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
                        tenant,
                        last,
                        min(size, last + PAGE),
                    )
                    if not page:
                        return
                    await conn.execute(
                        upsert,
                        tenant,
                        [r["seq"] for r in page],
                        [r["stream_id"] for r in page],
                        [r["event_type"] for r in page],
                    )
                    await conn.execute(save_checkpoint, tenant, page[-1]["seq"])
                last = page[-1]["seq"]
                done += len(page)

    try:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(replay(t, n) for t, n in heads.items()), return_exceptions=True
        )
        seconds = time.perf_counter() - started
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        conn = await asyncpg.connect(db.owner_url)
        try:
            stored = await conn.fetchval(f"SELECT count(*) FROM {rows_table}")
        finally:
            await conn.close()
    finally:
        await _owner_execute(db, f"DROP TABLE IF EXISTS {rows_table}, {checkpoint};")
    expected = sum(heads.values())
    problems = [] if stored == expected else [f"wrote {stored} rows, the logs hold {expected}"]
    return RowResult(SPECS["8r"], _measured(done, seconds, errors), problems)


# ---- the suite ----------------------------------------------------------------------------


async def _run(db: BenchDatabase, nats_url: str, scale: Scale) -> list[RowResult]:
    master_key = secrets.token_bytes(32)
    row6, row6_tenants, row6_expected = await commit_to_visible(db, nats_url, master_key, scale)
    size = scale.log
    async with open_stack(db, nats_url, Keyring(master_key)) as stack:
        js = await stack.broker.jetstream()
        captured = capture(stack.store)
        relayed = await build_log(stack.store, size)
        await _settle_relay(db, stack.pool, set(relayed))
        row7 = await relay_log(stack, relayed, size)
        row7r = await raw_publish(js, captured, secrets.token_hex(4))
        more = await build_log(stack.store, size)
        both = LogSize(2 * size.tenants, size.members_per_tenant)
        row6_both = (row6_tenants, row6_expected)
        row8 = await rebuild_members(db, stack, relayed + more, both, row6_both, master_key)
        row8r = await raw_rebuild(db, stack.pool)
    evaluate([row6], scale.window)
    evaluate([row7, row7r, row8, row8r], None)
    return [row6, row7, row7r, row8, row8r]


def run_suite(db: BenchDatabase, nats_url: str, *, quick: bool) -> list[RowResult]:
    return asyncio.run(_run(db, nats_url, QUICK_SCALE if quick else FULL_SCALE))
