"""Read-model schemas: created from each projection's DDL, rebuilt from the store.

Each projection lives in schema ``proj_<name>``: its tables plus ``position``.
Every table gets row-level security (ENABLE + FORCE, the tenant policy) and
must have ``tenant_id`` leading every unique key; the app role gets
SELECT/INSERT/UPDATE/DELETE and no DDL. This needs the owner role.

Rebuild (``strongroom replay rebuild``): a fresh copy is built in
``proj_<name>__rebuild`` from the event store (never from NATS) by the same
``Applier`` the runner uses, while the live copy keeps serving and being
updated. Then, in one owner transaction, the live tables are locked, the copy
catches up the last events, and it is swapped in: the schemas are renamed
(all tenants) or the tenant's rows are replaced (one tenant). Waiters are
notified of the new positions.

A rebuild of every tenant can use more than one process (``workers``): tenants are
independent, so helper processes (``python -m infra.rebuild_worker``) take tenants
from the same queue as this process, largest first, each building a whole tenant
into the same copy. This process alone catches up and swaps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import pickle
import secrets
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from infra.db import APP_ROLE, SERVER_SETTINGS, set_tenant, tenant_transaction
from infra.eventstore import EventStore
from infra.keyring import TenantKeyError
from infra.projector import (
    NOTIFY_CHANNEL,
    POSITION_DDL,
    Applier,
    HandlerFailedError,
    Transactions,
    describe,
)
from projections.base import Projection

log = logging.getLogger(__name__)

PAGE = 1000
EVENTS_PER_WORKER = 20_000
"""A helper process costs ~0.4 s to start (an interpreter and its imports): a rebuild
uses one more process per this many events, up to ``workers``."""
_POLICY = "tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid"
_LOCK_BASE = 0x5245_4255_494C_0000  # "REBUIL"


class ProjectionDefinitionError(RuntimeError):
    """A projection's DDL breaks the rules of a read model."""


class RebuildError(RuntimeError):
    """A rebuild cannot run (another one holds the lock, unknown tenant...)."""


def ddl_sha256(projection: Projection) -> str:
    text = " ".join((POSITION_DDL + projection.tables).split())
    return hashlib.sha256(text.encode()).hexdigest()


async def _tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        schema,
    )
    return [r["relname"] for r in rows]


async def create_copy(
    conn: asyncpg.Connection,
    projection: Projection,
    schema: str,
    *,
    grantees: Sequence[str] = (APP_ROLE,),
) -> None:
    """Create ``schema`` with the projection's tables, secured (inside a transaction);
    ``grantees`` may read and write its rows (as row-level security lets them)."""
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    path = await conn.fetchval("SELECT current_setting('search_path')")
    await conn.execute("SELECT set_config('search_path', $1, true)", f'"{schema}"')
    try:
        await conn.execute(POSITION_DDL)
        await conn.execute(projection.tables)
    except asyncpg.PostgresError as e:
        raise ProjectionDefinitionError(f"{projection.name}: {e}") from e
    finally:
        await conn.execute("SELECT set_config('search_path', $1, true)", path)
    for table in await _tables(conn, schema):
        qualified = f'"{schema}"."{table}"'
        firsts = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = $1::regclass AND i.indisunique",
            qualified,
        )
        if not firsts or any(r["attname"] != "tenant_id" for r in firsts):
            raise ProjectionDefinitionError(
                f"{projection.name}.{table}: needs a primary key, and tenant_id must lead "
                "every unique key"
            )
        await conn.execute(f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY")
        await conn.execute(f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY")
        await conn.execute(
            f"CREATE POLICY tenant_isolation ON {qualified} USING ({_POLICY}) "
            f"WITH CHECK ({_POLICY})"
        )
    await conn.execute(
        f'CREATE POLICY platform_read ON "{schema}".position FOR SELECT TO CURRENT_USER '
        "USING (true)"
    )
    roles = ", ".join(grantees)
    await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {roles}')
    await conn.execute(
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO {roles}'
    )


async def _register(conn: asyncpg.Connection, projection: Projection) -> None:
    await conn.execute(
        "INSERT INTO projection_registry (name, schema_name, ddl_sha256) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET ddl_sha256 = EXCLUDED.ddl_sha256, built_at = now()",
        projection.name,
        projection.schema,
        ddl_sha256(projection),
    )


@dataclass(frozen=True, slots=True)
class EnsureReport:
    created: list[str] = field(default_factory=list)
    outdated: list[str] = field(default_factory=list)
    """Projections whose DDL changed since they were built: rebuild them."""


async def ensure_projections(owner_url: str, projections: Sequence[Projection]) -> EnsureReport:
    """Create the schema of every projection that has none (as the owner role)."""
    report = EnsureReport()
    conn = await asyncpg.connect(owner_url, server_settings=SERVER_SETTINGS)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_BASE)
        for projection in projections:
            built = await conn.fetchval(
                "SELECT ddl_sha256 FROM projection_registry r WHERE r.name = $1 AND EXISTS "
                "(SELECT 1 FROM pg_namespace WHERE nspname = r.schema_name)",
                projection.name,
            )
            if built is None:
                async with conn.transaction():
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{projection.schema}" CASCADE')
                    await create_copy(conn, projection, projection.schema)
                    await _register(conn, projection)
                report.created.append(projection.name)
            elif built != ddl_sha256(projection):
                report.outdated.append(projection.name)
    finally:
        await conn.close()
    return report


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, where the OS says), at most 4:
    each process holds ``concurrency`` connections of its own."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """How a helper process of a rebuild opens the event store: the app role's URL, the
    master key and the log's host. Neither the URL (it may hold a password) nor the key
    is ever printed."""

    app_url: str = field(repr=False)
    master_key: bytes = field(repr=False)
    log_host: str


@dataclass(frozen=True, slots=True)
class RebuildReport:
    projection: str
    tenants: int
    events: int
    seconds: float
    parked: list[UUID]
    per_process: list[int] = field(default_factory=list)
    """Events built by each process, this one first."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]


async def rebuild(
    owner_url: str,
    pool: asyncpg.Pool,
    store: EventStore,
    projection: Projection,
    *,
    tenant_id: UUID | None = None,
    progress: Progress | None = None,
    concurrency: int = 4,
    workers: int = 1,
    spec: StoreSpec | None = None,
    events_per_worker: int = EVENTS_PER_WORKER,
) -> RebuildReport:
    """Rebuild ``projection`` (for every tenant, or one) from the store and swap it in.

    ``concurrency`` tenants at a time in each process; up to ``workers`` processes (one
    per ``events_per_worker`` events and at most one per tenant; helpers need ``spec``),
    for every tenant only.
    """
    if min(workers, concurrency, events_per_worker) < 1:
        raise ValueError("workers, concurrency and events_per_worker are at least 1")
    if workers > 1 and tenant_id is None and spec is None:
        raise ValueError("helper processes need the StoreSpec to open the store")
    started = time.perf_counter()
    shadow = f"{projection.schema}__rebuild"
    applier = Applier(store, projection, schema=shadow)
    owner = await asyncpg.connect(owner_url, server_settings=SERVER_SETTINGS)
    lock = _LOCK_BASE + 1 + int(hashlib.sha256(projection.name.encode()).hexdigest()[:8], 16)
    try:
        if not await owner.fetchval("SELECT pg_try_advisory_lock($1)", lock):
            raise RebuildError(f"another rebuild of {projection.name} is running")
        registered = await owner.fetchval(
            "SELECT ddl_sha256 FROM projection_registry WHERE name = $1", projection.name
        )
        if registered is None:
            raise RebuildError(f"{projection.name} has no read model yet: run strongroom migrate")
        if tenant_id is not None and registered != ddl_sha256(projection):
            raise RebuildError(
                f"the tables of {projection.name} changed: rebuild it for all tenants"
            )
        async with owner.transaction():
            await owner.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
            await create_copy(owner, projection, shadow)
        heads = await _heads(owner, tenant_id)
        if tenant_id is not None and tenant_id not in heads:
            raise RebuildError(f"tenant {tenant_id} has no log")
        total = sum(heads.values())
        built = _Built(total, progress)
        parked: set[UUID] = set()
        processes = min(workers, total // events_per_worker, len(heads))
        helpers = 0 if tenant_id is not None else processes - 1
        async with AsyncExitStack() as stack:
            if helpers > 0:
                assert spec is not None
                setup = _HelperSetup(spec, projection, shadow, concurrency)
                others = await stack.enter_async_context(
                    _helper_processes(setup, helpers, built, parked)
                )
            else:
                others = []
            # Appends continue meanwhile: close most of the gap outside the lock.
            todo = dict(heads)
            for _ in range(3):
                ready = [(t, size) for t, size in todo.items() if t not in parked]
                queue = deque(sorted(ready, key=lambda h: h[1], reverse=True))
                lanes = [_Lane(pool, applier, built, parked) for _ in range(concurrency)]
                await _drain(queue, [lane.drain for lane in lanes + others])
                fresh = await _heads(owner, tenant_id)
                grown = sum(fresh.values()) - sum(heads.values())
                todo = {t: size for t, size in fresh.items() if size > heads.get(t, 0)}
                heads = fresh
                if grown < PAGE:
                    break
                built.total += grown
        elsewhere = [helper.built for helper in others]
        async with owner.transaction():
            if tenant_id is None:
                await _swap_all(owner, applier, projection, shadow, built, parked)
            else:
                await _swap_tenant(owner, applier, projection, shadow, tenant_id, built, parked)
            if tenant_id is None:
                await _register(owner, projection)
        return RebuildReport(
            projection.name,
            len(heads),
            built.done,
            time.perf_counter() - started,
            sorted(parked),
            [built.done - sum(elsewhere), *elsewhere],
        )
    except TenantKeyError as e:  # in this process; a helper's ends as a RebuildError
        raise RebuildError(f"{e}; nothing was swapped in") from None
    finally:
        try:
            await owner.execute(f'DROP SCHEMA IF EXISTS "{shadow}" CASCADE')
            await owner.execute("SELECT pg_advisory_unlock($1)", lock)
        finally:
            await owner.close()


@dataclass(slots=True)
class _Built:
    total: int
    progress: Progress | None
    done: int = 0

    def add(self, events: int) -> None:
        self.done += events
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))


async def _heads(owner: asyncpg.Connection, tenant_id: UUID | None) -> dict[UUID, int]:
    rows = await owner.fetch(
        "SELECT tenant_id, size FROM public.tenant_log "
        "WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY tenant_id",
        tenant_id,
    )
    return {r["tenant_id"]: r["size"] for r in rows}


async def _build_tenant(
    transactions: Transactions,
    applier: Applier,
    tenant_id: UUID,
    size: int,
    built: _Built,
    parked: set[UUID],
) -> None:
    """Bring the copy of one tenant to ``size``, one page per transaction.

    A failing projector parks the tenant in the copy, with the events before the
    failing one applied, as the runner does.
    """
    while True:
        try:
            page = await applier.apply_in(transactions, tenant_id, size, PAGE)
        except HandlerFailedError as failure:
            async with transactions() as conn:
                page = await applier.apply_page(
                    conn, tenant_id, failure.seq - 1, PAGE, batched=False
                )
                built.add(page.after - page.before)
                await applier.park(conn, tenant_id, failure, 1)
            parked.add(tenant_id)
            return
        built.add(page.after - page.before)
        if page.after >= size or page.after == page.before or page.parked:
            return


Drain = Callable[[deque[tuple[UUID, int]]], Awaitable[None]]


async def _drain(queue: deque[tuple[UUID, int]], drains: Sequence[Drain]) -> None:
    """Run every drain on the shared queue until it is empty and each is done. The first
    failure cancels the others and is raised as it is."""
    tasks = [asyncio.ensure_future(drain(queue)) for drain in drains]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class _Lane:
    """Builds tenants from the queue in this process, one at a time."""

    pool: asyncpg.Pool
    applier: Applier
    built: _Built
    parked: set[UUID]

    async def drain(self, queue: deque[tuple[UUID, int]]) -> None:
        while queue:
            tenant_id, size = queue.popleft()
            transactions = _pooled(self.pool, tenant_id)
            await _build_tenant(
                transactions, self.applier, tenant_id, size, self.built, self.parked
            )


@dataclass(frozen=True, slots=True)
class _HelperSetup:
    """What a helper process is told, pickled on its standard input's first line."""

    spec: StoreSpec
    projection: Projection
    schema: str
    concurrency: int


class _Helper:
    """One helper process (``python -m infra.rebuild_worker``), fed tenants on its
    standard input ("<tenant> <size>" lines, up to ``concurrency`` outstanding). It
    answers "ready", then "p <events built so far>" per page and "d <tenant> <0|1>"
    when a tenant is done (1: parked)."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        concurrency: int,
        built: _Built,
        parked: set[UUID],
    ) -> None:
        self._process = process
        self._concurrency = concurrency
        self._built = built
        self._parked = parked
        self._started = False
        self._gone = False
        """It stopped before taking any tenant: the others go on without it."""
        self._stderr_tail = bytearray()
        self._stderr = asyncio.ensure_future(self._collect_stderr())
        self.built = 0

    @classmethod
    async def start(
        cls, setup: bytes, concurrency: int, built: _Built, parked: set[UUID]
    ) -> _Helper:
        # -P: never import from the working directory (it gets the master key); the
        # parent's own path instead, where the projection's module was found.
        paths = [p or os.getcwd() for p in sys.path]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "infra.rebuild_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        )
        try:
            helper = cls(process, concurrency, built, parked)
            helper._send(setup.decode())
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return helper

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")

    async def _collect_stderr(self) -> None:
        """Keep the end of what it writes on standard error (never blocking it)."""
        assert self._process.stderr is not None
        while chunk := await self._process.stderr.read(1 << 16):
            self._stderr_tail += chunk
            del self._stderr_tail[:-8192]

    async def _last_words(self) -> str:
        await self._process.wait()
        await asyncio.gather(self._stderr, return_exceptions=True)
        lines = self._stderr_tail.decode(errors="replace").splitlines()
        return next((line for line in reversed(lines) if line.strip()), "no message")

    async def _receive(self) -> list[str]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            last = await self._last_words()
            raise RebuildError(
                f"a rebuild helper process stopped (exit {self._process.returncode}): {last}"
            )
        return line.decode().split()

    async def drain(self, queue: deque[tuple[UUID, int]]) -> None:
        """Take tenants from the queue (once this process is up) until it is empty."""
        if self._gone:
            return
        if not self._started and queue:
            try:
                said = await self._receive()
            except RebuildError as e:  # no tenant was sent to it: safe to go on without
                log.warning("%s; the rebuild goes on without it", e)
                self._gone = True
                return
            if said != ["ready"]:
                raise RebuildError("a rebuild helper process did not start as expected")
            self._started = True
        outstanding = 0
        while True:
            while outstanding < self._concurrency and queue:
                tenant_id, size = queue.popleft()
                self._send(f"{tenant_id} {size}")
                outstanding += 1
            if outstanding == 0:
                return
            match await self._receive():
                case ["p", done] if done.isdigit():
                    self._built.add(int(done) - self.built)
                    self.built = int(done)
                case ["d", tenant, "0" | "1" as was_parked]:
                    outstanding -= 1
                    if was_parked == "1":
                        self._parked.add(UUID(tenant))
                case _:
                    raise RebuildError("a rebuild helper process broke the protocol")

    def stop(self, *, failed: bool) -> None:
        """End of input (it finishes and exits), or a kill if ``failed``."""
        process = self._process
        if process.returncode is not None:
            return
        if failed:
            process.kill()
        elif process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()

    async def stopped(self) -> None:
        """Wait for it to exit (killed after 30 s); a RebuildError if it failed."""
        process = self._process
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.gather(self._stderr, return_exceptions=True)
        if process.returncode != 0 and not self._gone:
            raise RebuildError(f"a rebuild helper process ended with exit {process.returncode}")


@asynccontextmanager
async def _helper_processes(
    setup: _HelperSetup, count: int, built: _Built, parked: set[UUID]
) -> AsyncIterator[list[_Helper]]:
    """Start ``count`` helpers; on the way out every one is stopped and waited for, even
    when this is cancelled meanwhile."""
    pickled = base64.b64encode(pickle.dumps(setup))  # before any process: it may fail
    helpers: list[_Helper] = []
    failed = True
    try:
        for _ in range(count):
            helpers.append(await _Helper.start(pickled, setup.concurrency, built, parked))
        yield helpers
        failed = False
    finally:
        for helper in helpers:
            helper.stop(failed=failed)
        waiting = asyncio.gather(*(h.stopped() for h in helpers), return_exceptions=True)
        try:
            outcomes = await asyncio.shield(waiting)
        except BaseException:
            for helper in helpers:
                helper.stop(failed=True)
            raise
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        if errors and not failed:
            raise errors[0]


def _pooled(pool: asyncpg.Pool, tenant_id: UUID) -> Transactions:
    return lambda: tenant_transaction(pool, tenant_id)


def _savepoints(owner: asyncpg.Connection) -> Transactions:
    """Savepoints inside the swap transaction: a failing projector rolls back alone."""

    @asynccontextmanager
    async def savepoint() -> AsyncIterator[asyncpg.Connection]:
        async with owner.transaction():
            yield owner

    return savepoint


async def _catch_up_locked(
    owner: asyncpg.Connection,
    applier: Applier,
    tenant_id: UUID,
    size: int,
    built: _Built,
    parked: set[UUID],
) -> None:
    """Inside the swap transaction: bring the copy of one tenant to ``size``."""
    await set_tenant(owner, tenant_id)
    await _build_tenant(_savepoints(owner), applier, tenant_id, size, built, parked)


async def _swap_all(
    owner: asyncpg.Connection,
    applier: Applier,
    projection: Projection,
    shadow: str,
    built: _Built,
    parked: set[UUID],
) -> None:
    live = projection.schema
    for table in await _tables(owner, live):
        await owner.execute(f'LOCK TABLE "{live}"."{table}" IN ACCESS EXCLUSIVE MODE')
    behind = await owner.fetch(
        f'SELECT t.tenant_id, t.size FROM public.tenant_log t LEFT JOIN "{shadow}".position p '
        "ON p.tenant_id = t.tenant_id "
        "WHERE t.size > COALESCE(p.last_seq, 0) AND p.parked_seq IS NULL"
    )
    for r in behind:
        await _catch_up_locked(owner, applier, r["tenant_id"], r["size"], built, parked)
    await owner.execute(f'ALTER SCHEMA "{live}" RENAME TO "{live}__old"')
    await owner.execute(f'ALTER SCHEMA "{shadow}" RENAME TO "{live}"')
    await owner.execute(f'DROP SCHEMA "{live}__old" CASCADE')
    await owner.execute(
        f"SELECT pg_notify($1, $2 || ' ' || tenant_id || ' ' || last_seq) FROM \"{live}\".position",
        NOTIFY_CHANNEL,
        projection.name,
    )


async def _swap_tenant(
    owner: asyncpg.Connection,
    applier: Applier,
    projection: Projection,
    shadow: str,
    tenant_id: UUID,
    built: _Built,
    parked: set[UUID],
) -> None:
    live = projection.schema
    await set_tenant(owner, tenant_id)
    await owner.execute(
        f'INSERT INTO "{live}".position (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING', tenant_id
    )
    await owner.execute(
        f'SELECT 1 FROM "{live}".position WHERE tenant_id = $1 FOR UPDATE', tenant_id
    )
    size = await owner.fetchval(
        "SELECT size FROM public.tenant_log WHERE tenant_id = $1", tenant_id
    )
    if tenant_id not in parked:
        await _catch_up_locked(owner, applier, tenant_id, size, built, parked)
    for table in await _tables(owner, live):
        await owner.execute(f'DELETE FROM "{live}"."{table}" WHERE tenant_id = $1', tenant_id)
        await owner.execute(
            f'INSERT INTO "{live}"."{table}" SELECT * FROM "{shadow}"."{table}" '
            "WHERE tenant_id = $1",
            tenant_id,
        )
    await owner.execute(
        f"SELECT pg_notify($1, $2 || ' ' || tenant_id || ' ' || last_seq) FROM \"{live}\".position "
        "WHERE tenant_id = $3",
        NOTIFY_CHANNEL,
        projection.name,
        tenant_id,
    )


# ---- a copy as of a past point (``strongroom replay dry-run``) ---------------------------


@dataclass(frozen=True, slots=True)
class AsOfCopy:
    """A projection rebuilt for one tenant up to a seq, in a scratch schema."""

    schema: str
    tenant_id: UUID
    until: int
    events: int
    """Events read from the log (handled or not) to get there."""
    failed_at: int | None
    """The seq of an event the projection raised for: the copy stops before it."""
    failure: str | None
    tables: dict[str, list[dict[str, Any]]]
    """Each table's rows for the tenant (at most ``max_rows``), in primary-key order."""
    truncated: list[str]
    kept: bool


async def build_as_of(
    owner_url: str,
    pool: asyncpg.Pool,
    store: EventStore,
    projection: Projection,
    tenant_id: UUID,
    until: int,
    *,
    grantee: str,
    keep: bool = False,
    max_rows: int = 1000,
    progress: Progress | None = None,
) -> AsOfCopy:
    """Rebuild ``projection`` for ``tenant_id`` from the store up to ``until`` into a
    fresh ``scratch_<name>_<random>`` schema, read its rows, and drop it (unless
    ``keep``). The live read model is never touched, and nothing is registered.

    The owner only creates (and drops) the schema; the events are applied and the
    rows read by ``pool`` (the investigation role, granted the schema), in the
    tenant's transactions, under row-level security as everywhere else.
    """
    schema = f"scratch_{projection.name}_{secrets.token_hex(4)}"
    owner = await asyncpg.connect(owner_url, server_settings=SERVER_SETTINGS)
    try:
        async with owner.transaction():
            await create_copy(owner, projection, schema, grantees=(grantee,))
        applier = Applier(store, projection, schema=schema)
        transactions = _pooled(pool, tenant_id)
        built = _Built(until, progress)
        failed_at: int | None = None
        failure: str | None = None
        while True:
            try:
                page = await applier.apply_in(transactions, tenant_id, until, PAGE)
            except HandlerFailedError as failed:
                async with transactions() as conn:
                    page = await applier.apply_page(
                        conn, tenant_id, failed.seq - 1, PAGE, batched=False
                    )
                built.add(page.after - page.before)
                if page.after >= failed.seq - 1:
                    failed_at, failure = failed.seq, describe(failed.cause)
                    break
                continue
            built.add(page.after - page.before)
            if page.after >= until or page.after == page.before:
                break
        tables: dict[str, list[dict[str, Any]]] = {}
        truncated = []
        async with tenant_transaction(pool, tenant_id, readonly=True) as conn:
            for table in await _tables(conn, schema):
                if table == "position":
                    continue
                key = await _primary_key(conn, schema, table)
                rows = await conn.fetch(
                    f'SELECT * FROM "{schema}"."{table}" ORDER BY {key} LIMIT $1',
                    max_rows + 1,
                )
                if len(rows) > max_rows:
                    truncated.append(table)
                tables[table] = [
                    msgspec.to_builtins(dict(r), str_keys=True) for r in rows[:max_rows]
                ]
        return AsOfCopy(
            schema, tenant_id, until, built.done, failed_at, failure, tables, truncated, keep
        )
    finally:
        try:
            if not keep:
                await owner.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await owner.close()


async def _primary_key(conn: asyncpg.Connection, schema: str, table: str) -> str:
    columns = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
        f'"{schema}"."{table}"',
    )
    return ", ".join(f'"{c["attname"]}"' for c in columns) or "1"
