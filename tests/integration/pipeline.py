"""Helpers for the projection tests: an appending process wired to JetStream, runners,
projections that count what they apply, workloads, and polling with deadlines.

Nothing here is mocked: the store, Postgres and NATS are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from domain.member import Member
from domain.roles import Role
from infra.broker import STREAM_NAME, SUBJECT_PREFIX, Broker
from infra.db import tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent, RecordedEvent
from infra.keyring import Keyring
from infra.projector import ProjectionRunner
from infra.publisher import Publisher
from infra.repository import EventRegistry, Repository
from projections.base import Event, Projection
from projections.members import list_members
from tests.conftest import LOG_HOST

ACTOR = Actor("system", "projection-tests")
PROBE = "probe.noted"
"""An event type no aggregate and no other test file uses."""

DEADLINE = 20.0


# ---- projections that count what they apply ---------------------------------------------


class AppliedProjection(Projection):
    """Records every applied (tenant, seq) with how many times it was applied."""

    handles = frozenset({PROBE})
    tables = """
        CREATE TABLE applied (
            tenant_id  uuid NOT NULL,
            seq        bigint NOT NULL,
            type       text NOT NULL,
            times      integer NOT NULL,
            PRIMARY KEY (tenant_id, seq)
        );
    """

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        await conn.execute(
            "INSERT INTO applied (tenant_id, seq, type, times) VALUES ($1, $2, $3, 1) "
            "ON CONFLICT (tenant_id, seq) DO UPDATE SET times = applied.times + 1",
            event.tenant_id,
            event.seq,
            event.type,
        )
        await self.after_write(event)

    async def after_write(self, event: Event) -> None:
        """Hook for projections that misbehave after writing their row."""


async def applied(pool: asyncpg.Pool, projection: Projection, tenant: UUID) -> dict[int, int]:
    """seq -> times applied, for one tenant."""
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            f'SELECT seq, times FROM "{projection.schema}".applied WHERE tenant_id = $1', tenant
        )
    return {r["seq"]: r["times"] for r in rows}


def exactly_once(last: int) -> dict[int, int]:
    return dict.fromkeys(range(1, last + 1), 1)


# ---- positions and heads --------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    last_seq: int
    parked_seq: int | None
    parked_error: str | None


async def position(pool: asyncpg.Pool, projection: Projection, tenant: UUID) -> Position:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        row = await conn.fetchrow(
            f'SELECT last_seq, parked_seq, parked_error FROM "{projection.schema}".position '
            "WHERE tenant_id = $1",
            tenant,
        )
    return Position(0, None, None) if row is None else Position(**dict(row))


async def head(pool: asyncpg.Pool, tenant: UUID) -> int:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        size = await conn.fetchval("SELECT size FROM tenant_log WHERE tenant_id = $1", tenant)
    return int(size or 0)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, what: str, timeout: float = DEADLINE
) -> None:
    """Poll ``check`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_position(
    pool: asyncpg.Pool, projection: Projection, tenant: UUID, seq: int
) -> Position:
    """Wait until ``projection`` has reached ``seq`` for ``tenant``."""
    reached = Position(0, None, None)

    async def check() -> bool:
        nonlocal reached
        reached = await position(pool, projection, tenant)
        return reached.last_seq >= seq

    try:
        await wait_until(check, what=f"{projection.name} to reach {seq}")
    except AssertionError:
        raise AssertionError(f"{projection.name} stopped at {reached} short of {seq}") from None
    return reached


async def read_all(store: EventStore, tenant: UUID, *, to_seq: int | None = None) -> list[Any]:
    events: list[RecordedEvent] = []
    while True:
        page = await store.read_log(tenant, after=events[-1].seq if events else 0, limit=1000)
        events += [e for e in page if to_seq is None or e.seq <= to_seq]
        if len(page) < 1000:
            return events


# ---- JetStream --------------------------------------------------------------------------


async def consumer_ready(js: JetStreamContext, durable: str) -> None:
    """Wait until the durable consumer exists (it delivers only messages after that)."""

    async def exists() -> bool:
        try:
            await js.consumer_info(STREAM_NAME, durable)
        except NotFoundError:
            return False
        return True

    await wait_until(exists, what=f"consumer {durable}")


@contextlib.asynccontextmanager
async def tenant_subscription(js: JetStreamContext, tenant: UUID, *, ack: bool = True) -> Any:
    """An ephemeral pull consumer over everything the stream holds for ``tenant``."""
    sub = await js.pull_subscribe(
        f"{SUBJECT_PREFIX}.{tenant}.>",
        stream=STREAM_NAME,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT if ack else AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=60.0,
        ),
    )
    name = (await sub.consumer_info()).name
    try:
        yield sub
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(STREAM_NAME, name)


async def fetch_exactly(sub: Any, count: int) -> list[Msg]:
    msgs: list[Msg] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while len(msgs) < count:
        if loop.time() > deadline:
            raise AssertionError(f"got {len(msgs)} of {count} messages")
        with contextlib.suppress(TimeoutError):
            msgs += await sub.fetch(count - len(msgs), timeout=1.0)
    return msgs


async def stream_messages(js: JetStreamContext, tenant: UUID) -> list[Msg]:
    """Every message the stream holds for ``tenant``, in stream order."""
    async with tenant_subscription(js, tenant, ack=False) as sub:
        pending = (await sub.consumer_info()).num_pending
        return await fetch_exactly(sub, pending)


# ---- an appending process and runners on one NATS -------------------------------------


class Pipeline:
    """A store whose commits a Publisher puts on JetStream, plus runners to start."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, nats_url: str) -> None:
        self.pool = pool
        self.broker = Broker(nats_url)
        self.store = EventStore(pool, keyring, log_host=LOG_HOST)
        self.repo = Repository(self.store, EventRegistry([Member]))
        self.publisher = Publisher(self.broker, pool, flush_interval=0.1)
        self.store.add_commit_listener(self.publisher.committed)
        self.tasks: list[asyncio.Task[None]] = []
        self.js: JetStreamContext

    async def __aenter__(self) -> Pipeline:
        self.broker.start()
        self.publisher.start()
        try:
            self.js = await asyncio.wait_for(self.broker.jetstream(), DEADLINE)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start_runner(
        self, projection: Projection, **options: Any
    ) -> tuple[ProjectionRunner, asyncio.Task[None]]:
        """Run a projection (its own durable consumer) until the pipeline closes."""
        runner = ProjectionRunner(self.pool, self.store, self.broker, projection, **options)
        task = asyncio.create_task(runner.run())
        self.tasks.append(task)
        await consumer_ready(self.js, runner.durable)
        return runner, task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.publisher.close()
        await self.broker.close()


# ---- workloads --------------------------------------------------------------------------


async def append_probe(
    store: EventStore, tenant: UUID, *, stream: str | None = None, **data: Any
) -> int:
    """One command with one probe event carrying a personal value; returns its seq."""
    stream = stream or f"probe-{uuid4()}"
    result = await store.append(
        tenant,
        [
            NewEvent(
                stream=stream,
                type=PROBE,
                data={"marker": uuid4().hex, **data},
                personal={"email": f"{uuid4().hex}@personal.example"},
                subject=stream,
            )
        ],
        expected={stream: None},
        command_id=uuid4(),
        actor=ACTOR,
    )
    return result.last_seq


async def append_probes(store: EventStore, tenant: UUID, count: int) -> int:
    last = 0
    for _ in range(count):
        last = await append_probe(store, tenant)
    return last


@dataclass
class MemberWorkload:
    """Random member commands for one tenant (plus probe events no member projection
    handles), kept in step with the store: one writer per tenant."""

    repo: Repository
    store: EventStore
    tenant: UUID
    rng: random.Random
    with_probes: bool = True
    members: list[Member] = field(default_factory=list)
    last_seq: int = 0
    commands: int = 0

    async def step(self) -> int:
        roll = self.rng.random()
        if self.with_probes and roll < 0.15:
            self.last_seq = await append_probe(self.store, self.tenant)
        else:
            changed = self._change(roll)
            result = await self.repo.save(self.tenant, *changed, command_id=uuid4(), actor=ACTOR)
            assert result is not None
            self.last_seq = result.last_seq
        self.commands += 1
        return self.last_seq

    async def steps(self, count: int) -> int:
        for _ in range(count):
            await self.step()
        return self.last_seq

    def _invite(self) -> Member:
        member = Member.invite(
            self.tenant, f"{uuid4().hex[:12]}@members.example", self.rng.choice(list(Role))
        )
        self.members.append(member)
        return member

    def _change(self, roll: float) -> Sequence[Member]:
        if len(self.members) < 3 or roll < 0.3:
            return [self._invite()]
        member = self.rng.choice(self.members)
        if roll < 0.4:  # two aggregates in one command
            other = self._invite()
            self._mutate(member)
            return [member, other]
        self._mutate(member)
        return [member]

    def _mutate(self, member: Member) -> None:
        if not member.active:
            member.reactivate()
        elif self.rng.random() < 0.25:
            member.deactivate()
        else:
            member.change_role(self.rng.choice([r for r in Role if r != member.role]))


async def members_and_log(
    pool: asyncpg.Pool, store: EventStore, repo: Repository, tenant: UUID, to_seq: int
) -> tuple[dict[UUID, tuple[Any, ...]], dict[UUID, tuple[Any, ...]]]:
    """(the members read model, a fold of the log up to ``to_seq``), per member."""
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await list_members(conn, tenant, limit=10_000)
    model = {r.member_id: (r.email, r.role, r.active, r.version) for r in rows}
    streams: dict[str, list[RecordedEvent]] = {}
    for event in await read_all(store, tenant, to_seq=to_seq):
        if event.type.startswith("member."):
            streams.setdefault(event.stream, []).append(event)
    folded: dict[UUID, tuple[Any, ...]] = {}
    for events in streams.values():
        member = repo.fold(events)
        assert isinstance(member, Member)
        folded[member.id] = (member.email, str(member.role), member.active, member.version)
    return model, folded
