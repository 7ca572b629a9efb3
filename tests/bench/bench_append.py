"""Append throughput of the event store against raw PostgreSQL and the `eventsourcing` peer.

Rows (targets from docs PERFORMANCE.md, ratios always against rows measured in this run):

1.  raw single-row INSERT + commit into a scratch table (no RLS), 32 connections;
2.  ``EventStore.append``, 256 tenants picked at random, 1 event per command, 32 writers;
2b. the same with one personal (encrypted) field per event: the cost of PII;
3.  ``EventStore.append``, ONE tenant, 1 event per command, 32 writers (group commit);
4.  ``EventStore.append``, ONE tenant, 1,000 events per command, 4 writers;
5.  the ``eventsourcing`` 9.5 Postgres recorder (psycopg), one event per save, 8 threads.

After each store row the log heads are read back: their sizes must add up to the events
the writers were told were appended (warm-up included), or the row fails.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID, uuid4

import asyncpg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from infra.db import APP_ROLE, create_pool
from infra.eventstore import Actor, EventStore, NewEvent
from infra.keyring import Keyring
from tests.bench._harness import AsyncOp, Measurement, Window, run_async, run_threads
from tests.bench._stack import BenchDatabase

WRITERS = 32
TENANTS = 256
SUBJECTS_PER_TENANT = 16
BATCH_EVENTS = 1000
BATCH_WRITERS = 4
PEER_THREADS = 8
POOL_MAX = 40
LOG_HOST = "bench.strongroom.localhost"
OpFactory = Callable[[EventStore], AsyncOp]
FULL = Window(warmup=1.5, measure=6.0)
QUICK = Window(warmup=0.3, measure=1.0)


@dataclass(frozen=True, slots=True)
class RowSpec:
    key: str
    name: str
    writers: int
    peer: str | None = None
    """Key of the row this one is compared with."""
    min_rate: float | None = None
    min_ratio: float | None = None
    max_p99_ms: float | None = None
    role: str = ""
    """Shown in the ratio column of rows that are themselves a reference."""


@dataclass(slots=True)
class RowResult:
    spec: RowSpec
    measurement: Measurement
    problems: list[str] = field(default_factory=list)
    """Errors, lost or extra events: the run exits 1."""
    notes: list[str] = field(default_factory=list)
    """Worth knowing when reading the figures (no failure by themselves)."""
    ratio: float | None = None
    passed: bool | None = None


SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec("1", "raw INSERT + commit, 32 connections", WRITERS, role="baseline"),
        RowSpec("2", "append, 256 tenants, 1 event/cmd, 32 writers", WRITERS, "1", 10_000, 0.65),
        RowSpec("2b", "  same, + 1 personal field per event", WRITERS, "2"),
        RowSpec("3", "append, 1 tenant, 1 event/cmd, 32 writers", WRITERS, "5", 8_000, 10.0),
        RowSpec("4", "append, 1 tenant, 1,000 events/cmd, 4 writers", BATCH_WRITERS, "1", 50_000),
        RowSpec("5", "eventsourcing 9.5 Postgres, 1 event/save, 8 thr", PEER_THREADS, role="peer"),
    )
}


# ---- payloads ------------------------------------------------------------------------


def event_data(n: int) -> dict[str, Any]:
    """About 200 bytes of canonical JSON, no personal data."""
    return {
        "resource": f"document/{n % 999_983:06d}/quarterly-report-q{n % 4 + 1}.pdf",
        "action": "document.shared",
        "n": n,
        "target": {"kind": "group", "id": "grp-engineering-platform"},
        "labels": ["internal", "reviewed", "retention-7y"],
    }


def one_event(rng: random.Random, n: int, *, pii: bool) -> NewEvent:
    stream = f"document-d{rng.randrange(1000)}"
    if not pii:
        return NewEvent(stream=stream, type="document.shared", data=event_data(n))
    subject = f"user-{rng.randrange(SUBJECTS_PER_TENANT)}"
    return NewEvent(
        stream=stream,
        type="document.shared",
        data=event_data(n),
        personal={"email": f"{subject}@example.test"},
        subject=subject,
    )


# ---- scratch objects -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scratch:
    raw_table: str
    peer_schema: str


async def _owner_execute(db: BenchDatabase, sql: str) -> None:
    conn = await asyncpg.connect(db.owner_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def scratch_objects(db: BenchDatabase) -> Iterator[Scratch]:
    """A raw-insert table and a schema for the peer, made by the owner, dropped afterwards."""
    suffix = secrets.token_hex(4)
    scratch = Scratch(raw_table=f"bench_raw_{suffix}", peer_schema=f"bench_es_{suffix}")
    asyncio.run(
        _owner_execute(
            db,
            f"CREATE TABLE {scratch.raw_table} (id uuid PRIMARY KEY, payload bytea NOT NULL);"
            f"GRANT SELECT, INSERT ON {scratch.raw_table} TO {APP_ROLE};"
            f"CREATE SCHEMA {scratch.peer_schema};",
        )
    )
    try:
        yield scratch
    finally:
        asyncio.run(
            _owner_execute(
                db,
                f"DROP TABLE IF EXISTS {scratch.raw_table};"
                f"DROP SCHEMA IF EXISTS {scratch.peer_schema} CASCADE;",
            )
        )


# ---- row 1: raw PostgreSQL ---------------------------------------------------------------


async def raw_insert(db: BenchDatabase, table: str, window: Window) -> RowResult:
    spec = SPECS["1"]
    pool = await create_pool(db.app_url, min_size=spec.writers, max_size=spec.writers)
    payload = secrets.token_bytes(300)  # about the size of a leaf
    sql = f"INSERT INTO {table} (id, payload) VALUES ($1, $2)"
    conns: list[asyncpg.Connection] = []  # one dedicated connection per writer

    async def insert(index: int) -> int:
        await conns[index].execute(sql, uuid4(), payload)
        return 1

    try:
        conns.extend([await pool.acquire() for _ in range(spec.writers)])
        measurement = await run_async(insert, spec.writers, window)
    finally:
        for conn in conns:
            await pool.release(conn)
        await pool.close()
    return RowResult(spec, measurement)


# ---- rows 2-4: the event store -----------------------------------------------------------


async def _open_store(db: BenchDatabase) -> tuple[asyncpg.Pool, EventStore]:
    pool = await create_pool(db.app_url, min_size=8, max_size=POOL_MAX)
    return pool, EventStore(pool, Keyring(secrets.token_bytes(32)), log_host=LOG_HOST)


async def _check_heads(store: EventStore, tenants: list[UUID], written: int) -> list[str]:
    """The log sizes must add up to what the writers were told was appended."""
    size = 0
    for tenant in tenants:
        head = await store.head(tenant)
        size += head.size if head is not None else 0
    if size != written:
        return [f"log heads hold {size} events, writers appended {written}"]
    return []


async def _store_row(
    spec: RowSpec, db: BenchDatabase, tenants: list[UUID], window: Window, make_op: OpFactory
) -> RowResult:
    pool, store = await _open_store(db)
    try:
        measurement = await run_async(make_op(store), spec.writers, window)
        problems = await _check_heads(store, tenants, measurement.total_events)
    finally:
        await pool.close()
    return RowResult(spec, measurement, problems)


def _single_event_op(tenants: list[UUID], *, pii: bool) -> OpFactory:
    rng = random.Random(7)
    actors = [Actor("user", str(uuid4())) for _ in range(WRITERS)]
    counter = iter(range(1 << 62))

    def make(store: EventStore) -> AsyncOp:
        async def op(index: int) -> int:
            new = one_event(rng, next(counter), pii=pii)
            await store.append(
                rng.choice(tenants),
                [new],
                expected={new.stream: None},
                command_id=uuid4(),
                actor=actors[index],
            )
            return 1

        return op

    return make


async def append_single(
    key: str, db: BenchDatabase, tenant_count: int, window: Window
) -> RowResult:
    tenants = [uuid4() for _ in range(tenant_count)]
    make_op = _single_event_op(tenants, pii=key == "2b")
    return await _store_row(SPECS[key], db, tenants, window, make_op)


def _batch_op(tenant: UUID) -> OpFactory:
    """Each writer reuses one prepared list of 1,000 events (new command id each time)."""
    batches = [
        [
            NewEvent(stream=f"import-w{w}", type="document.imported", data=event_data(i))
            for i in range(BATCH_EVENTS)
        ]
        for w in range(BATCH_WRITERS)
    ]
    actor = Actor("system", "bench-importer")

    def make(store: EventStore) -> AsyncOp:
        async def op(index: int) -> int:
            events = batches[index]
            await store.append(
                tenant,
                events,
                expected={events[0].stream: None},
                command_id=uuid4(),
                actor=actor,
            )
            return len(events)

        return op

    return make


async def append_batches(db: BenchDatabase, window: Window) -> RowResult:
    tenant = uuid4()
    return await _store_row(SPECS["4"], db, [tenant], window, _batch_op(tenant))


# ---- row 5: the eventsourcing peer ------------------------------------------------------


class BenchCounter(Aggregate):
    """A trivial aggregate: creation is one event, each ``touch`` one more."""

    def __init__(self) -> None:
        self.count = 0

    @event("Touched")
    def touch(self, n: int) -> None:
        self.count = n


class BenchPeerApp(Application[UUID]):
    """Stores in the table ``benchpeerapp_events`` of the scratch schema."""


def peer_env(owner_url: str, schema: str, threads: int) -> dict[str, str]:
    parts = urlsplit(owner_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or ""),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(threads),
        "CREATE_TABLE": "y",  # eventsourcing's key for it (no POSTGRES_ prefix)
    }


def eventsourcing_peer(db: BenchDatabase, schema: str, window: Window) -> RowResult:
    spec = SPECS["5"]
    app = BenchPeerApp(env=peer_env(db.owner_url, schema, spec.writers))
    aggregates: list[BenchCounter | None] = [None] * spec.writers
    try:

        def save(index: int) -> int:
            aggregate = aggregates[index]
            if aggregate is None:
                aggregate = aggregates[index] = BenchCounter()
            else:
                aggregate.touch(aggregate.count + 1)
            app.save(aggregate)
            return 1

        measurement = run_threads(save, spec.writers, window)
    finally:
        app.close()
    return RowResult(spec, measurement)


# ---- the suite ----------------------------------------------------------------------------


def run_suite(db: BenchDatabase, *, quick: bool) -> list[RowResult]:
    window = QUICK if quick else FULL
    with scratch_objects(db) as scratch:
        rows = [
            asyncio.run(raw_insert(db, scratch.raw_table, window)),
            asyncio.run(append_single("2", db, TENANTS, window)),
            asyncio.run(append_single("2b", db, TENANTS, window)),
            asyncio.run(append_single("3", db, 1, window)),
            asyncio.run(append_batches(db, window)),
            eventsourcing_peer(db, scratch.peer_schema, window),
        ]
    evaluate(rows, window)
    return rows


def evaluate(rows: list[RowResult], window: Window | None) -> None:
    """Fill in each row's ratio to its peer and whether it meets its targets (``window``:
    what the rows were asked to measure, for rows timed over a window)."""
    by_key = {r.spec.key: r for r in rows}
    for row in rows:
        spec, m = row.spec, row.measurement
        peer = by_key.get(spec.peer) if spec.peer else None
        if peer is not None and peer.measurement.rate > 0:
            row.ratio = m.rate / peer.measurement.rate
        if m.errors:
            row.problems.append(f"{m.errors} commands failed, first: {m.first_error}")
        if window is not None and m.seconds < 0.8 * window.measure:
            row.problems.append(
                f"measured only {m.seconds:.2f} s of {window.measure:g} s (stall or clock jump?)"
            )
        if spec.min_rate is None and spec.min_ratio is None and spec.max_p99_ms is None:
            row.passed = None if not row.problems else False
            continue
        rate_ok = spec.min_rate is None or m.rate >= spec.min_rate
        ratio_ok = spec.min_ratio is None or (row.ratio is not None and row.ratio >= spec.min_ratio)
        p99_ok = spec.max_p99_ms is None or (m.commands > 0 and m.p99_ms < spec.max_p99_ms)
        row.passed = rate_ok and ratio_ok and p99_ok and not row.problems
