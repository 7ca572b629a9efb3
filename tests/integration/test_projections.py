"""The projection pipeline on a real PostgreSQL and a real NATS JetStream: publishing,
the relay, consuming, gaps filled from the store, crashes, NATS restarts, poison
events, rebuilds under load, waiting for a position, and tenant isolation.

Test projections record every (tenant, seq) they apply in a table keyed on it, with a
counter, so an event applied twice shows as ``times = 2``. Each test projection has its
own schema and its own durable consumer; every test uses fresh tenants.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import asyncpg
import msgspec
import orjson
import pytest

from domain.errors import UnavailableError
from domain.member import Member
from infra.broker import Broker, subject_for
from infra.db import tenant_transaction
from infra.embedded import EmbeddedNats
from infra.eventstore import (
    Committed,
    EventStore,
    EventStoreIntegrityError,
    NewEvent,
    RecordedEvent,
)
from infra.keyring import Keyring, TenantKeyError
from infra.positions import PositionTimeoutError, PositionWaiter
from infra.projector import (
    Applier,
    HandlerFailedError,
    ProjectionRunner,
    partitions,
    projection_events,
    to_projection_event,
    unpark,
)
from infra.publisher import Relay, advance_cursor, publish_events
from infra.readmodels import RebuildError, StoreSpec, ensure_projections, rebuild
from infra.repository import EventRegistry, Repository
from projections.base import Event, Projection
from projections.members import MembersProjection
from tests.conftest import LOG_HOST, Database
from tests.integration.pipeline import (
    ACTOR,
    DEADLINE,
    PROBE,
    AppliedProjection,
    MemberWorkload,
    Pipeline,
    Position,
    append_probe,
    append_probes,
    applied,
    exactly_once,
    fetch_exactly,
    head,
    members_and_log,
    position,
    read_all,
    stream_messages,
    tenant_subscription,
    wait_position,
    wait_until,
)

# ---- test projections -------------------------------------------------------------------


class SimulatedCrash(BaseException):
    """The process dies: nothing after this line of the handler runs, nothing commits."""


class NatsApplied(AppliedProjection):
    name = "t_nats"
    handles = AppliedProjection.handles | MembersProjection.handles


class GapApplied(AppliedProjection):
    name = "t_gap"


class WaitApplied(AppliedProjection):
    name = "t_wait"


class CrashApplied(AppliedProjection):
    name = "t_crash"

    def __init__(self, crash_at: tuple[UUID, int] | None = None) -> None:
        self.crash_at = crash_at

    async def after_write(self, event: Event) -> None:
        if (event.tenant_id, event.seq) == self.crash_at:
            raise SimulatedCrash


class PoisonApplied(AppliedProjection):
    name = "t_poison"

    def __init__(self, poison: tuple[UUID, int] | None) -> None:
        self.poison = poison
        self.poison_calls = 0  # event by event: what the runner counts as attempts
        self.poison_batches = 0  # inside a batch, which is then retried event by event
        self._in_batch = False

    async def apply_batch(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        self._in_batch = True
        try:
            await super().apply_batch(conn, events)
        finally:
            self._in_batch = False

    async def after_write(self, event: Event) -> None:
        if (event.tenant_id, event.seq) == self.poison:
            if self._in_batch:
                self.poison_batches += 1
            else:
                self.poison_calls += 1
            raise ValueError(f"cannot project {dict(event.personal)} {dict(event.data)}")


@dataclass
class Gate:
    """Holds the handler at one (tenant, seq) until released."""

    tenant: UUID
    seq: int
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def passing(self, event: Event) -> None:
        if (event.tenant_id, event.seq) == (self.tenant, self.seq):
            self.reached.set()
            await asyncio.wait_for(self.release.wait(), DEADLINE)


class TallyProjection(Projection):
    """Per probe stream: how many events, the sum of their amounts, the latest e-mail."""

    name = "t_tally"
    handles = frozenset({PROBE})
    tables = """
        CREATE TABLE tally (
            tenant_id  uuid NOT NULL,
            stream     text NOT NULL,
            events     integer NOT NULL,
            total      bigint NOT NULL,
            email      text,
            version    integer NOT NULL,
            PRIMARY KEY (tenant_id, stream)
        );
    """

    def __init__(self) -> None:
        self.gate: Gate | None = None

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        if self.gate is not None:
            await self.gate.passing(event)
        await conn.execute(
            "INSERT INTO tally (tenant_id, stream, events, total, email, version) "
            "VALUES ($1, $2, 1, $3, $4, $5) ON CONFLICT (tenant_id, stream) DO UPDATE SET "
            "events = tally.events + 1, total = tally.total + EXCLUDED.total, "
            "email = COALESCE(EXCLUDED.email, tally.email), version = EXCLUDED.version",
            event.tenant_id,
            event.stream,
            event.data.get("amount", 0),
            event.personal.get("email"),
            event.version,
        )


def fold_tally(events: list[RecordedEvent]) -> dict[str, tuple[Any, ...]]:
    folded: dict[str, tuple[Any, ...]] = {}
    for e in events:
        if e.type != PROBE:
            continue
        count, total, email, _ = folded.get(e.stream, (0, 0, None, 0))
        value = e.personal.get("email")
        folded[e.stream] = (
            count + 1,
            total + e.data.get("amount", 0),
            value if isinstance(value, str) else email,
            e.version,
        )
    return folded


async def tally_model(pool: asyncpg.Pool, tenant: UUID) -> dict[str, tuple[Any, ...]]:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT stream, events, total, email, version FROM proj_t_tally.tally "
            "WHERE tenant_id = $1",
            tenant,
        )
    return {r["stream"]: (r["events"], r["total"], r["email"], r["version"]) for r in rows}


async def append_tally(store: EventStore, tenant: UUID, rng: random.Random) -> int:
    stream = f"probe-{tenant.hex[:12]}x{rng.randrange(3)}"
    return await append_probe(store, tenant, stream=stream, amount=rng.randrange(1, 100))


TEST_PROJECTIONS: tuple[Projection, ...] = (
    NatsApplied(),
    GapApplied(),
    WaitApplied(),
    CrashApplied(),
    PoisonApplied(None),
    TallyProjection(),
)


@pytest.fixture(scope="module", autouse=True)
async def read_models(database: Database) -> None:
    await ensure_projections(database.owner_url, TEST_PROJECTIONS)


async def relay_cursor(pool: asyncpg.Pool, tenant: UUID) -> int:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        seq = await conn.fetchval(
            "SELECT published_seq FROM relay_cursor WHERE tenant_id = $1", tenant
        )
    return int(seq or 0)


# ---- 1. end to end ----------------------------------------------------------------------


async def test_saved_members_are_published_and_projected_to_a_fold_of_the_log(
    pool: asyncpg.Pool, keyring: Keyring, nats_url: str
) -> None:
    members = MembersProjection()
    tenants = [uuid4(), uuid4()]
    async with Pipeline(pool, keyring, nats_url) as p:
        await p.start_runner(members, sweep_interval=3600)  # no sweep: messages only
        workloads = [
            MemberWorkload(p.repo, p.store, t, random.Random(i)) for i, t in enumerate(tenants)
        ]
        for _ in range(25):
            for w in workloads:
                await w.step()
        for w in workloads:  # end on events the members projection does not handle
            w.last_seq = await append_probes(p.store, w.tenant, 2)
        assert PROBE not in members.handles

        for w in workloads:
            assert await wait_position(pool, members, w.tenant, w.last_seq) == Position(
                w.last_seq, None, None
            )
            model, folded = await members_and_log(pool, p.store, p.repo, w.tenant, w.last_seq)
            assert len(folded) == len(w.members) >= 3
            assert model == folded

            log = await read_all(p.store, w.tenant)
            assert [e.seq for e in log] == list(range(1, w.last_seq + 1))
            published = [
                (
                    m.subject,
                    m.headers["Nats-Msg-Id"],
                    m.headers["Strongroom-Seq"],
                    m.headers["Strongroom-Type"],
                    m.data,
                )
                for m in await stream_messages(p.js, w.tenant)
                if m.headers
            ]
            assert published == [
                (subject_for(w.tenant, e.stream), f"{w.tenant}:{e.seq}", str(e.seq), e.type, e.leaf)
                for e in log
            ]

            async def cursor_at_head(w: MemberWorkload = w) -> bool:
                return await relay_cursor(pool, w.tenant) == w.last_seq

            await wait_until(cursor_at_head, what="the publisher to move the relay cursor")


# ---- 2. NATS killed mid-stream ----------------------------------------------------------


async def test_a_nats_crash_mid_stream_is_healed_by_the_relay_with_nothing_lost_or_doubled(
    pool: asyncpg.Pool, keyring: Keyring, tmp_path: Path
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = await asyncio.to_thread(server.start)
    port = server.port
    tenant = uuid4()
    projections: list[Projection] = [MembersProjection(), NatsApplied()]
    try:
        async with Pipeline(pool, keyring, url) as p:
            for projection in projections:
                await p.start_runner(projection, sweep_interval=3600)  # no sweep
            workload = MemberWorkload(p.repo, p.store, tenant, random.Random(7))
            stop = asyncio.Event()

            async def keep_appending() -> None:
                while not stop.is_set():
                    await workload.step()
                    await asyncio.sleep(0.01)

            async def appended(count: int) -> None:
                start = workload.last_seq

                async def check() -> bool:
                    assert not appender.done(), appender
                    return workload.last_seq >= start + count

                await wait_until(check, what=f"{count} more appends")

            async def disconnected() -> bool:
                return not p.broker.connected

            async def connected() -> bool:
                return p.broker.connected

            appender = asyncio.create_task(keep_appending())
            try:
                await wait_position(pool, projections[1], tenant, 5)  # flowing through NATS
                await asyncio.to_thread(server.kill)
                await wait_until(disconnected, what="the client to notice")
                await appended(10)  # appends go on while NATS is down
            finally:
                stop.set()
                await appender
            last = workload.last_seq

            await asyncio.to_thread(server.start)
            assert server.port == port
            await wait_until(connected, what="the client to reconnect")
            # What was appended during the outage never reached JetStream.
            assert await relay_cursor(pool, tenant) < last
            for projection in projections:
                assert (await position(pool, projection, tenant)).last_seq < last

            relay = Relay(pool, p.broker)

            async def relayed() -> bool:
                try:
                    await relay.relay_once(p.js, idle=timedelta(0))
                except Exception:  # JetStream may still be recovering its store
                    return False
                return await relay_cursor(pool, tenant) >= last

            await wait_until(relayed, what="the relay to publish the backlog")

            for projection in projections:
                assert await wait_position(pool, projection, tenant, last) == Position(
                    last, None, None
                )
            assert await applied(pool, projections[1], tenant) == exactly_once(last)
            model, folded = await members_and_log(pool, p.store, p.repo, tenant, last)
            assert model == folded and len(model) >= 3
            messages = await stream_messages(p.js, tenant)
            seqs = sorted(int(m.headers["Strongroom-Seq"]) for m in messages if m.headers)
            assert seqs == list(range(1, last + 1))  # republished copies were dropped
            assert all(
                m.headers and m.headers["Nats-Msg-Id"] == f"{tenant}:{m.headers['Strongroom-Seq']}"
                for m in messages
            )

            # After the restart, new appends flow again through the publisher.
            last = await workload.steps(3)
            for projection in projections:
                await wait_position(pool, projection, tenant, last)
            assert await applied(pool, projections[1], tenant) == exactly_once(last)
    finally:
        await asyncio.to_thread(server.stop)


# ---- 3. gaps, reordering, lost messages -------------------------------------------------


def committed(events: list[RecordedEvent]) -> dict[int, Committed]:
    return {e.seq: Committed(e.seq, e.stream, e.type, e.leaf, e.chain_hash) for e in events}


async def test_a_dropped_and_a_reordered_message_are_made_good_from_the_store(
    pool: asyncpg.Pool, store: EventStore, nats_url: str
) -> None:
    tenant = uuid4()
    projection = GapApplied()
    last = await append_probes(store, tenant, 6)  # the session store publishes nothing
    events = committed(await read_all(store, tenant))
    order = [1, 2, 4, 3, 6]  # 5 is lost, 3 and 4 arrive swapped
    broker = Broker(nats_url)
    broker.start()
    try:
        js = await asyncio.wait_for(broker.jetstream(), DEADLINE)
        runner = ProjectionRunner(pool, store, broker, projection, sweep_interval=3600)
        async with tenant_subscription(js, tenant) as sub:
            await asyncio.gather(*await publish_events(js, tenant, [events[s] for s in order]))
            messages = await fetch_exactly(sub, len(order))
            assert [int(m.headers["Strongroom-Seq"]) for m in messages if m.headers] == order

            reached = []
            for message in messages:
                await runner.handle_messages([message])
                reached.append((await position(pool, projection, tenant)).last_seq)
            assert reached == [1, 2, 4, 4, last]
            assert await applied(pool, projection, tenant) == exactly_once(last)

            await runner.handle_messages(messages)  # all of them again, as on redelivery
            assert await applied(pool, projection, tenant) == exactly_once(last)
            assert (await position(pool, projection, tenant)).last_seq == last
            assert (await sub.consumer_info()).num_ack_pending == 0
    finally:
        await broker.close()


async def test_lost_last_messages_are_caught_up_by_the_sweep_once_the_partition_stalls(
    pool: asyncpg.Pool, store: EventStore, nats_url: str
) -> None:
    tenant = uuid4()
    projection = GapApplied()
    last = await append_probes(store, tenant, 6)
    events = committed(await read_all(store, tenant))
    broker = Broker(nats_url)
    broker.start()
    try:
        js = await asyncio.wait_for(broker.jetstream(), DEADLINE)
        runner = ProjectionRunner(pool, store, broker, projection, sweep_interval=3600)
        async with tenant_subscription(js, tenant) as sub:
            await asyncio.gather(*await publish_events(js, tenant, [events[s] for s in (1, 2, 3)]))
            await runner.handle_messages(await fetch_exactly(sub, 3))
        assert (await position(pool, projection, tenant)).last_seq == 3

        assert await runner.sweep() == 0  # the first sweep only notes where partitions are
        assert (await position(pool, projection, tenant)).last_seq == 3
        assert await runner.sweep() >= 1  # no progress since: caught up from the store
        assert await position(pool, projection, tenant) == Position(last, None, None)
        assert await applied(pool, projection, tenant) == exactly_once(last)
    finally:
        await broker.close()


# ---- 4. a crash between the handler and the commit -------------------------------------


async def test_a_crash_between_handler_and_commit_applies_nothing_twice(
    pool: asyncpg.Pool, keyring: Keyring, nats_url: str
) -> None:
    tenant = uuid4()
    async with Pipeline(pool, keyring, nats_url) as p:
        _, doomed = await p.start_runner(CrashApplied(crash_at=(tenant, 5)), sweep_interval=3600)
        await append_probes(p.store, tenant, 4)
        await wait_position(pool, CrashApplied(), tenant, 4)
        await append_probes(p.store, tenant, 4)

        await asyncio.wait({doomed}, timeout=DEADLINE)
        assert doomed.done() and isinstance(doomed.exception(), SimulatedCrash)
        # Seq 5's row was written, then the process died: the transaction is gone.
        assert await position(pool, CrashApplied(), tenant) == Position(4, None, None)
        assert await applied(pool, CrashApplied(), tenant) == exactly_once(4)

        _, fresh = await p.start_runner(CrashApplied(), sweep_interval=0.2)
        await wait_position(pool, CrashApplied(), tenant, 8)  # the sweep finds the lag
        last = await append_probes(p.store, tenant, 2)  # and messages flow again
        assert await wait_position(pool, CrashApplied(), tenant, last) == Position(last, None, None)
        assert await applied(pool, CrashApplied(), tenant) == exactly_once(last)
        assert not fresh.done()


# ---- 5. poison --------------------------------------------------------------------------


async def test_a_poison_event_parks_only_its_tenant_until_it_is_unparked(
    pool: asyncpg.Pool, keyring: Keyring, nats_url: str
) -> None:
    sick, healthy = uuid4(), uuid4()
    projection = PoisonApplied(poison=(sick, 4))
    async with Pipeline(pool, keyring, nats_url) as p:
        runner, _ = await p.start_runner(
            projection, max_attempts=3, backoff=0.01, sweep_interval=3600
        )
        for _ in range(6):
            await append_probe(p.store, sick)
            await append_probe(p.store, healthy)

        async def parked() -> bool:
            return (await position(pool, projection, sick)).parked_seq is not None

        await wait_until(parked, what="the sick partition to park")
        await wait_position(pool, projection, healthy, 6)

        poison = (await read_all(p.store, sick))[3]
        assert poison.seq == 4
        secrets = [poison.personal["email"], poison.data["marker"], "cannot project"]
        at = await position(pool, projection, sick)
        assert (at.last_seq, at.parked_seq) == (3, 4)  # the events before it are applied
        assert at.parked_error is not None and at.parked_error.startswith("ValueError")
        assert not any(str(s) in at.parked_error for s in secrets)
        assert await applied(pool, projection, sick) == exactly_once(3)
        assert projection.poison_calls == 3
        # Only the first attempt can meet it in a batch (when 5 or 6 came with it);
        # retries read up to the failing event alone.
        assert projection.poison_batches <= 1
        async with tenant_transaction(pool, sick, readonly=True) as conn:
            failures = await conn.fetch(
                "SELECT projection, seq, event_type, error, attempts FROM projection_failure "
                "WHERE tenant_id = $1",
                sick,
            )
        assert [dict(f) for f in failures] == [
            {
                "projection": projection.name,
                "seq": 4,
                "event_type": PROBE,
                "error": at.parked_error,
                "attempts": 3,
            }
        ]

        # The healthy tenant keeps flowing; the parked one stays where it is.
        sick_last = await append_probes(p.store, sick, 3)
        healthy_last = await append_probes(p.store, healthy, 3)
        await wait_position(pool, projection, healthy, healthy_last)
        assert await applied(pool, projection, healthy) == exactly_once(healthy_last)
        assert await position(pool, projection, sick) == at
        [stuck] = [
            x
            for x in await partitions(pool, projection.name, behind_only=True)
            if x.tenant_id == sick
        ]
        assert (stuck.position, stuck.head, stuck.parked_seq, stuck.lag) == (
            3,
            sick_last,
            4,
            sick_last - 3,
        )

        projection.poison = None  # the fix is deployed
        assert await unpark(pool, projection, sick)
        assert not await unpark(pool, projection, sick)  # nothing parked any more
        await runner.sweep(patient=False)
        assert await wait_position(pool, projection, sick, sick_last) == Position(
            sick_last, None, None
        )
        assert await applied(pool, projection, sick) == exactly_once(sick_last)
        assert projection.poison_calls == 3


async def test_an_event_whose_personal_data_does_not_open_is_a_poison_event(
    pool: asyncpg.Pool, store: EventStore, database: Database, superuser: asyncpg.Connection
) -> None:
    tenant = uuid4()
    await append_probes(store, tenant, 3)
    bad = await append_probe(store, tenant)
    await append_probes(store, tenant, 2)
    leaf = orjson.loads((await read_all(store, tenant))[bad - 1].leaf)
    async with superuser.transaction():  # a rogue DBA: triggers off for this transaction
        await superuser.execute("SET LOCAL session_replication_role = replica")
        altered = await superuser.execute(
            "UPDATE pii_value SET ciphertext = ciphertext || '\\x00'::bytea "
            "WHERE tenant_id = $1 AND value_hash = $2",
            tenant,
            bytes.fromhex(leaf["pii"]["email"]),
        )
    assert altered == "UPDATE 1"
    projection = PoisonApplied(None)
    runner = ProjectionRunner(pool, store, Broker("nats://127.0.0.1:1"), projection)

    # The runner: the events before it are applied, the failure names it (then it is
    # retried and parked as any poison event).
    with pytest.raises(HandlerFailedError) as failed:
        await runner.advance(tenant, bad + 2)
    assert (failed.value.seq, failed.value.event_type) == (bad, PROBE)
    assert isinstance(failed.value.cause, EventStoreIntegrityError)
    assert await position(pool, projection, tenant) == Position(bad - 1, None, None)
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        assert await conn.fetchval(  # the time of the event the position names
            "SELECT p.last_ts = l.recorded_at FROM proj_t_poison.position p JOIN event_log l "
            "ON l.tenant_id = p.tenant_id AND l.seq = p.last_seq WHERE p.tenant_id = $1",
            tenant,
        )

    # A rebuild parks the tenant at it rather than failing.
    report = await rebuild(database.owner_url, pool, store, projection, tenant_id=tenant)
    assert report.parked == [tenant] and report.events == bad - 1
    at = await position(pool, projection, tenant)
    assert (at.last_seq, at.parked_seq) == (bad - 1, bad)
    assert at.parked_error is not None and at.parked_error.startswith("EventStoreIntegrityError")
    assert await applied(pool, projection, tenant) == exactly_once(bad - 1)


# ---- 5b. batches ------------------------------------------------------------------------


async def test_projection_events_are_the_decoded_events_as_a_projector_sees_them(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    tenant = uuid4()
    repo = Repository(store, EventRegistry([Member]))
    await MemberWorkload(repo, store, tenant, random.Random(37)).steps(60)
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        subject = await conn.fetchval(
            "SELECT min(subject_id) FROM pii_value WHERE tenant_id = $1", tenant
        )
    assert subject is not None
    await store.shred_subject(tenant, subject)

    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT seq, leaf, leaf_hash, chain_hash FROM event_log WHERE tenant_id = $1 "
            "ORDER BY seq",
            tenant,
        )
        seen = await projection_events(store, conn, tenant, rows)
        decoded = await store.decode(conn, tenant, rows)
    assert seen == [to_projection_event(tenant, e) for e in decoded]
    personal = [e.personal for e in seen if e.personal]
    assert any(None in p.values() for p in personal)  # the shredded subject's
    assert any(None not in p.values() for p in personal)
    assert all(e.ts.tzinfo is not None for e in seen)


async def members_rows(pool: asyncpg.Pool, tenant: UUID) -> dict[UUID, tuple[Any, ...]]:
    """Every column of the tenant's members_view rows but the tenant, by member."""
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT * FROM proj_members.members_view WHERE tenant_id = $1", tenant
        )
    return {r["member_id"]: tuple(v for k, v in r.items() if k != "tenant_id") for r in rows}


async def test_the_members_batch_leaves_exactly_the_rows_of_one_event_at_a_time(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    members = MembersProjection()
    source = uuid4()
    repo = Repository(store, EventRegistry([Member]))
    workload = MemberWorkload(repo, store, source, random.Random(31), with_probes=False)
    await workload.steps(80)
    events = [
        to_projection_event(source, e)
        for e in await read_all(store, source)
        if e.type in members.handles
    ]
    assert {e.type for e in events} == members.handles
    applier = Applier(store, members)  # only for its search_path

    one, batched = uuid4(), uuid4()  # the same events, applied as two other tenants'
    async with tenant_transaction(pool, one) as conn:
        await applier.enter(conn)
        for event in events:
            await members.apply(conn, msgspec.structs.replace(event, tenant_id=one))
    rest = [msgspec.structs.replace(e, tenant_id=batched) for e in events]
    rng = random.Random(5)
    while rest:  # batches of every size: one event, a few, many changes of one member
        size = rng.choice([1, 2, 3, 7, 40, len(rest)])
        async with tenant_transaction(pool, batched) as conn:
            await applier.enter(conn)
            await members.apply_batch(conn, rest[:size])
        rest = rest[size:]

    expected = await members_rows(pool, one)
    assert len(expected) == len(workload.members)
    assert await members_rows(pool, batched) == expected

    # Where apply raises, the batch raises: an invite of a member who exists, twice in
    # one batch, and a change of a member who does not.
    invite = next(e for e in events if e.type == "member.invited")
    change = next(e for e in events if e.type == "member.role_changed")
    for batch in (
        [
            msgspec.structs.replace(change, tenant_id=batched),
            msgspec.structs.replace(invite, tenant_id=batched),
        ],
        [msgspec.structs.replace(invite, tenant_id=uuid4())] * 2,
        [msgspec.structs.replace(change, tenant_id=one, stream=f"member-{uuid4()}")] * 2,
    ):
        async with tenant_transaction(pool, batch[0].tenant_id) as conn:
            await applier.enter(conn)
            with pytest.raises((LookupError, asyncpg.UniqueViolationError)):
                await members.apply_batch(conn, batch)
    assert await members_rows(pool, one) == expected


async def test_a_poison_event_inside_a_batch_commits_the_events_before_it_and_parks_there(
    pool: asyncpg.Pool, store: EventStore, database: Database
) -> None:
    members = MembersProjection()
    tenant = uuid4()
    repo = Repository(store, EventRegistry([Member]))
    workload = MemberWorkload(repo, store, tenant, random.Random(41), with_probes=False)
    await workload.steps(8)
    ghost = f"member-{uuid4()}"  # changed, never invited: its row cannot be updated
    poisoned = await store.append(
        tenant,
        [NewEvent(stream=ghost, type="member.role_changed", data={"role": "approver"})],
        expected={ghost: None},
        command_id=uuid4(),
        actor=ACTOR,
    )
    poison = poisoned.last_seq
    last = await workload.steps(8)

    # The runner: one page holds every event; its batch fails, the page is applied again
    # one event at a time, which names the poison; the events before it are committed.
    runner = ProjectionRunner(pool, store, Broker("nats://127.0.0.1:1"), members)
    with pytest.raises(HandlerFailedError) as failed:
        await runner.advance(tenant, last)
    assert (failed.value.seq, failed.value.event_type) == (poison, "member.role_changed")
    assert isinstance(failed.value.cause, LookupError)
    assert await position(pool, members, tenant) == Position(poison - 1, None, None)
    model, folded = await members_and_log(pool, store, repo, tenant, poison - 1)
    assert model == folded and model

    # A rebuild parks the tenant at the poison, with the events before it applied.
    report = await rebuild(database.owner_url, pool, store, members, tenant_id=tenant)
    assert (report.parked, report.events) == ([tenant], poison - 1)
    at = await position(pool, members, tenant)
    assert (at.last_seq, at.parked_seq) == (poison - 1, poison)
    assert at.parked_error is not None and at.parked_error.startswith("LookupError")
    assert await members_and_log(pool, store, repo, tenant, poison - 1) == (model, folded)


# ---- 6. rebuild while appends continue --------------------------------------------------


async def rebuild_under_appends(
    database: Database,
    pool: asyncpg.Pool,
    store: EventStore,
    tally: TallyProjection,
    gate: Gate,
    writers: list[UUID],
    rng: random.Random,
    *,
    tenant_id: UUID | None = None,
) -> Any:
    """Rebuild while a task appends to ``writers``; the copy is held at ``gate`` until
    appends landed after the rebuild began, then the writer stops."""
    tally.gate = gate
    stop = asyncio.Event()
    rounds = 0

    async def keep_appending() -> None:
        nonlocal rounds
        while not stop.is_set():
            for tenant in writers:
                await append_tally(store, tenant, rng)
            rounds += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(keep_appending())
    rebuilding = asyncio.create_task(
        rebuild(database.owner_url, pool, store, tally, tenant_id=tenant_id)
    )
    try:
        reached = asyncio.create_task(gate.reached.wait())
        await asyncio.wait(
            {reached, rebuilding}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        reached.cancel()
        assert gate.reached.is_set(), rebuilding.exception() if rebuilding.done() else "stuck"
        mark = rounds

        async def more_appends() -> bool:
            assert not writer.done(), writer
            return rounds >= mark + 5

        await wait_until(more_appends, what="appends during the rebuild")
    finally:
        stop.set()
        try:
            await writer  # no append may land after the swap: positions must equal heads
        finally:
            gate.release.set()
    report = await asyncio.wait_for(rebuilding, 60)
    tally.gate = None
    return report


async def project_live(
    pool: asyncpg.Pool, store: EventStore, tally: TallyProjection, tenants: list[UUID]
) -> ProjectionRunner:
    live = ProjectionRunner(pool, store, Broker("nats://127.0.0.1:1"), tally)  # never started
    for tenant in tenants:
        await live.advance(tenant, await head(pool, tenant))
    return live


async def corrupt(pool: asyncpg.Pool, tenant: UUID) -> None:
    async with tenant_transaction(pool, tenant) as conn:
        await conn.execute(
            "UPDATE proj_t_tally.tally SET total = total + 1000 WHERE tenant_id = $1", tenant
        )
        await conn.execute(
            "DELETE FROM proj_t_tally.tally WHERE tenant_id = $1 AND stream = "
            "(SELECT min(stream) FROM proj_t_tally.tally WHERE tenant_id = $1)",
            tenant,
        )


async def tally_schemas(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'proj\\_t\\_tally%'"
    )
    return {r["nspname"] for r in rows}


async def test_a_rebuild_of_all_tenants_under_concurrent_appends_swaps_in_exactly_the_log(
    pool: asyncpg.Pool, store: EventStore, database: Database
) -> None:
    tally = TallyProjection()
    rng = random.Random(11)
    tenants = [uuid4(), uuid4()]
    for tenant in tenants:
        for _ in range(12):
            await append_tally(store, tenant, rng)
    live = await project_live(pool, store, tally, tenants)
    for tenant in tenants:
        await corrupt(pool, tenant)
        assert await tally_model(pool, tenant) != fold_tally(await read_all(store, tenant))

    report = await rebuild_under_appends(
        database, pool, store, tally, Gate(tenants[0], 3), tenants, rng
    )

    heads = {t: await head(pool, t) for t in tenants}
    assert not set(tenants) & set(report.parked)
    assert report.tenants >= 2 and report.events >= sum(heads.values())
    found = {x.tenant_id: x for x in await partitions(pool, tally.name)}
    for tenant in tenants:
        assert heads[tenant] > 12
        assert (found[tenant].head, found[tenant].position, found[tenant].parked_seq) == (
            heads[tenant],
            heads[tenant],
            None,
        ), found[tenant]
        assert await tally_model(pool, tenant) == fold_tally(await read_all(store, tenant))
    assert await tally_schemas(pool) == {"proj_t_tally"}

    # The swapped-in copy is the live one: the runner keeps it up to date.
    last = await append_tally(store, tenants[0], rng)
    assert await live.advance(tenants[0], last) == (heads[tenants[0]], last)
    assert await tally_model(pool, tenants[0]) == fold_tally(await read_all(store, tenants[0]))


async def test_a_rebuild_of_one_tenant_under_concurrent_appends_replaces_only_its_rows(
    pool: asyncpg.Pool, store: EventStore, database: Database
) -> None:
    tally = TallyProjection()
    rng = random.Random(13)
    target, bystander = uuid4(), uuid4()
    for tenant in (target, bystander):
        for _ in range(10):
            await append_tally(store, tenant, rng)
    await project_live(pool, store, tally, [target, bystander])
    for tenant in (target, bystander):
        await corrupt(pool, tenant)
    assert await tally_model(pool, target) != fold_tally(await read_all(store, target))
    bystander_rows = await tally_model(pool, bystander)
    bystander_at = await position(pool, tally, bystander)

    report = await rebuild_under_appends(
        database, pool, store, tally, Gate(target, 2), [target, bystander], rng, tenant_id=target
    )

    last = await head(pool, target)
    assert last > 10
    assert (report.projection, report.tenants, report.events, report.parked) == (
        tally.name,
        1,
        last,
        [],
    )
    assert await position(pool, tally, target) == Position(last, None, None)
    assert await tally_model(pool, target) == fold_tally(await read_all(store, target))
    assert await tally_model(pool, bystander) == bystander_rows  # untouched, still corrupt
    assert await position(pool, tally, bystander) == bystander_at
    assert await head(pool, bystander) > bystander_at.last_seq
    assert await tally_schemas(pool) == {"proj_t_tally"}


# ---- 6b. rebuild in helper processes -----------------------------------------------------


class ElsewhereTally(TallyProjection):
    """The tally, for a rebuild with helper processes. In this process every apply waits
    until a helper has met the poison event (or crashed on its first event, with
    ``crash``), which it marks with a file: a helper must do that work."""

    def __init__(
        self, marker: Path, poison: tuple[UUID, int] | None = None, *, crash: bool = False
    ) -> None:
        super().__init__()
        self.home = os.getpid()
        self.marker = str(marker)
        self.poison = poison
        self.crash = crash

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        if os.getpid() == self.home:
            async with asyncio.timeout(DEADLINE):
                while not os.path.exists(self.marker):
                    await asyncio.sleep(0.01)
        elif self.crash:
            Path(self.marker).touch()
            raise SimulatedCrash
        else:
            print(f"a stray print in a helper, seq {event.seq}")  # must not break its answers
        if (event.tenant_id, event.seq) == self.poison:
            Path(self.marker).touch()
            raise ValueError("cannot project this one")
        await super().apply(conn, event)


async def test_a_rebuild_with_helper_processes_swaps_in_the_log_and_parks_their_poison(
    pool: asyncpg.Pool, store: EventStore, database: Database, master_key: bytes, tmp_path: Path
) -> None:
    rng = random.Random(17)
    tenants = [uuid4() for _ in range(4)]
    for tenant in tenants:
        for _ in range(12):
            await append_tally(store, tenant, rng)
    # Smaller than every other tenant of this test: this process's only lane waits on a
    # bigger one (largest first) while a helper builds this one.
    sick = uuid4()
    await append_tally(store, sick, rng)
    poison_seq = await append_tally(store, sick, rng)
    tally = ElsewhereTally(tmp_path / "met", (sick, poison_seq))
    live = await project_live(pool, store, TallyProjection(), tenants)
    for tenant in tenants:
        await corrupt(pool, tenant)

    report = await rebuild(
        database.owner_url,
        pool,
        store,
        tally,
        concurrency=1,
        workers=3,
        spec=StoreSpec(database.app_url, master_key, LOG_HOST),
        events_per_worker=1,
    )

    assert len(report.per_process) == 3
    assert sum(report.per_process) == report.events
    assert sum(report.per_process[1:]) > 0
    assert sick in report.parked and not set(tenants) & set(report.parked)
    found = {x.tenant_id: x for x in await partitions(pool, tally.name)}
    for tenant in tenants:
        assert (found[tenant].position, found[tenant].parked_seq) == (12, None)
        assert await tally_model(pool, tenant) == fold_tally(await read_all(store, tenant))
    assert (found[sick].position, found[sick].parked_seq) == (poison_seq - 1, poison_seq)
    assert await tally_model(pool, sick) == fold_tally((await read_all(store, sick))[:1])
    assert await tally_schemas(pool) == {"proj_t_tally"}
    # The runner goes on from the swapped-in copy.
    last = await append_tally(store, tenants[0], rng)
    assert await live.advance(tenants[0], last) == (12, last)


async def test_a_rebuild_with_helper_processes_under_appends_swaps_in_the_log_to_its_position(
    pool: asyncpg.Pool, store: EventStore, database: Database, master_key: bytes
) -> None:
    rng = random.Random(23)
    tenants = [uuid4() for _ in range(3)]
    for tenant in tenants:
        for _ in range(8):
            await append_tally(store, tenant, rng)
    started = {t: await head(pool, t) for t in tenants}
    stop = asyncio.Event()
    appended = 0

    async def keep_appending() -> None:
        nonlocal appended
        while not stop.is_set():
            for tenant in tenants:
                await append_tally(store, tenant, rng)
                appended += 1
            await asyncio.sleep(0.002)

    writer = asyncio.create_task(keep_appending())
    try:
        report = await rebuild(
            database.owner_url,
            pool,
            store,
            TallyProjection(),
            concurrency=2,
            workers=2,
            spec=StoreSpec(database.app_url, master_key, LOG_HOST),
            events_per_worker=1,
        )
    finally:
        stop.set()
        await writer
    assert appended > 0 and len(report.per_process) == 2
    found = {x.tenant_id: x for x in await partitions(pool, "t_tally")}
    for tenant in tenants:
        at = found[tenant].position
        assert at >= started[tenant] and found[tenant].parked_seq is None
        log = await read_all(store, tenant)
        assert await tally_model(pool, tenant) == fold_tally(log[:at])  # exactly its position
    assert await tally_schemas(pool) == {"proj_t_tally"}


async def test_a_rebuild_whose_helper_process_dies_fails_and_leaves_the_live_model(
    pool: asyncpg.Pool, store: EventStore, database: Database, master_key: bytes, tmp_path: Path
) -> None:
    rng = random.Random(19)
    tenant = uuid4()
    for _ in range(6):
        await append_tally(store, tenant, rng)
    await project_live(pool, store, TallyProjection(), [tenant])
    await corrupt(pool, tenant)
    corrupted = await tally_model(pool, tenant)
    spec = StoreSpec(database.app_url, master_key, LOG_HOST)

    with pytest.raises(RebuildError, match=r"helper process stopped \(exit 1\): SimulatedCrash"):
        await rebuild(
            database.owner_url,
            pool,
            store,
            ElsewhereTally(tmp_path / "crashed", crash=True),
            concurrency=1,
            workers=2,
            spec=spec,
            events_per_worker=1,
        )

    assert await tally_model(pool, tenant) == corrupted  # the live copy was not touched
    assert await tally_schemas(pool) == {"proj_t_tally"}
    # The lock is released: the next rebuild runs, and a few events use no helper.
    report = await rebuild(database.owner_url, pool, store, TallyProjection(), workers=2, spec=spec)
    assert report.per_process == [report.events]
    assert await tally_model(pool, tenant) == fold_tally(await read_all(store, tenant))


async def test_a_helper_process_that_cannot_start_is_left_out(
    pool: asyncpg.Pool,
    store: EventStore,
    database: Database,
    master_key: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(29)
    tenant = uuid4()
    for _ in range(5):
        await append_tally(store, tenant, rng)
    password = "not-the-password-" + uuid4().hex
    parts = urlsplit(database.app_url)
    wrong = parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}")
    spec = StoreSpec(urlunsplit(wrong), master_key, LOG_HOST)

    with caplog.at_level(logging.WARNING, logger="infra.readmodels"):
        report = await rebuild(
            database.owner_url,
            pool,
            store,
            TallyProjection(),
            workers=2,
            spec=spec,
            events_per_worker=1,
        )

    assert report.per_process == [report.events, 0]
    assert await tally_model(pool, tenant) == fold_tally(await read_all(store, tenant))
    assert "goes on without it" in caplog.text
    assert "InvalidPasswordError" in caplog.text  # the cause, by its class
    assert password not in caplog.text and master_key.hex() not in caplog.text


async def test_a_tenant_key_that_does_not_open_fails_a_rebuild_and_parks_nothing(
    pool: asyncpg.Pool,
    store: EventStore,
    database: Database,
    master_key: bytes,
    superuser: asyncpg.Connection,
) -> None:
    rng = random.Random(31)
    tenant = uuid4()
    for _ in range(4):
        await append_tally(store, tenant, rng)
    tally = TallyProjection()
    await project_live(pool, store, tally, [tenant])
    live = await tally_model(pool, tenant)
    wrapped = await superuser.fetchval(
        "SELECT wrapped FROM tenant_key WHERE tenant_id = $1 AND version = 1", tenant
    )

    async def set_wrapped(value: bytes) -> None:
        async with superuser.transaction():  # a rogue DBA: triggers off
            await superuser.execute("SET LOCAL session_replication_role = replica")
            await superuser.execute(
                "UPDATE tenant_key SET wrapped = $2 WHERE tenant_id = $1 AND version = 1",
                tenant,
                value,
            )

    await set_wrapped(wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    try:
        await append_tally(store, tenant, rng)  # this process still holds the key
        fresh = EventStore(pool, Keyring(master_key), log_host=LOG_HOST)  # one that does not
        runner = ProjectionRunner(pool, fresh, Broker("nats://127.0.0.1:1"), tally)
        with pytest.raises(TenantKeyError):  # the runner retries it; nothing parks
            await runner.advance(tenant, await head(pool, tenant))
        assert await position(pool, tally, tenant) == Position(4, None, None)
        with pytest.raises(RebuildError, match="does not open under the master key"):
            await rebuild(database.owner_url, pool, fresh, tally, tenant_id=tenant)
        assert await tally_model(pool, tenant) == live
        assert await tally_schemas(pool) == {"proj_t_tally"}
    finally:
        await set_wrapped(wrapped)  # other tests rebuild every tenant
    assert await runner.advance(tenant, 5) == (4, 5)  # the key is back: it resumes


def test_helper_processes_need_a_store_spec_which_never_prints_its_secrets(
    database: Database, master_key: bytes
) -> None:
    spec = StoreSpec(database.app_url, master_key, LOG_HOST)
    assert LOG_HOST in repr(spec)
    assert database.app_url not in repr(spec) and master_key.hex() not in repr(spec)
    assert repr(master_key) not in repr(spec)
    with pytest.raises(ValueError, match="StoreSpec"):
        asyncio.run(
            rebuild(database.owner_url, None, None, TallyProjection(), workers=2)  # type: ignore[arg-type]
        )
    for wrong in ({"workers": 0}, {"concurrency": 0}, {"events_per_worker": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            asyncio.run(
                rebuild(database.owner_url, None, None, TallyProjection(), spec=spec, **wrong)  # type: ignore[arg-type]
            )


# ---- 7. waiting for a position ----------------------------------------------------------


async def test_waiting_for_a_position_returns_once_reached_and_times_out_cleanly(
    pool: asyncpg.Pool, keyring: Keyring, nats_url: str, database: Database
) -> None:
    tenant = uuid4()
    projection = WaitApplied()
    waiter = PositionWaiter(pool, database.app_url)
    waiter.start()
    try:
        async with Pipeline(pool, keyring, nats_url) as p:
            await p.start_runner(projection, sweep_interval=3600)
            waiting = asyncio.create_task(waiter.wait_for(projection.name, tenant, 3, within=10))
            await asyncio.sleep(0)  # waiting before the events even exist
            last = await append_probes(p.store, tenant, 3)
            reached = await waiting
            assert reached >= last
            # Read-your-writes: what the waiter promised is in the read model.
            assert await applied(pool, projection, tenant) == exactly_once(last)
            assert await waiter.position(projection.name, tenant) == last
            assert await waiter.wait_for(projection.name, tenant, 1, within=10) == last

            with pytest.raises(PositionTimeoutError) as unreachable:
                await waiter.wait_for(projection.name, tenant, last + 5, within=0.3)
            assert (unreachable.value.seq, unreachable.value.reached) == (last + 5, last)
            assert isinstance(unreachable.value, UnavailableError)

            with pytest.raises(PositionTimeoutError) as unrun:  # no runner projects t_gap
                await waiter.wait_for(GapApplied.name, tenant, 1, within=0.3)
            assert (unrun.value.projection, unrun.value.reached) == (GapApplied.name, 0)

            # The waiter still serves after its timeouts.
            waiting = asyncio.create_task(
                waiter.wait_for(projection.name, tenant, last + 1, within=10)
            )
            last = await append_probe(p.store, tenant)
            assert await waiting >= last
    finally:
        await waiter.close()


# ---- 8. tenant isolation of the new tables ---------------------------------------------

ISOLATED_TABLES = (
    "proj_members.members_view",
    "proj_members.position",
    "relay_cursor",
    "projection_failure",
)


async def attempt(conn: asyncpg.Connection, sql: str, tenant: UUID) -> str:
    """Run ``sql`` in a savepoint that is rolled back; its status, or "denied"."""
    await conn.execute("SAVEPOINT attempt")  # tenant_transaction: no conn.transaction()
    try:
        return str(await conn.execute(sql, tenant))
    except asyncpg.InsufficientPrivilegeError:
        return "denied"
    finally:
        await conn.execute("ROLLBACK TO SAVEPOINT attempt")


async def rows_of(pool: asyncpg.Pool, table: str, tenant: UUID) -> list[dict[str, Any]]:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant)
    return sorted((dict(r) for r in rows), key=repr)


async def test_read_models_and_pipeline_tables_show_and_change_no_other_tenants_rows(
    pool: asyncpg.Pool, store: EventStore
) -> None:
    a, b = uuid4(), uuid4()
    repo = Repository(store, EventRegistry([Member]))
    runner = ProjectionRunner(pool, store, Broker("nats://127.0.0.1:1"), MembersProjection())
    for tenant in (a, b):
        last = await MemberWorkload(
            repo, store, tenant, random.Random(21), with_probes=False
        ).steps(4)
        await runner.advance(tenant, last)
        assert await advance_cursor(pool, tenant, 1, last)
        async with tenant_transaction(pool, tenant) as conn:
            await conn.execute(
                "INSERT INTO projection_failure (tenant_id, projection, seq, event_type, error, "
                "attempts) VALUES ($1, 'members', 1, 'member.invited', 'ValueError', 1)",
                tenant,
            )
    before = {table: await rows_of(pool, table, b) for table in ISOLATED_TABLES}
    assert all(before.values())

    async with tenant_transaction(pool, a) as conn:
        for table in ISOLATED_TABLES:
            seen = await conn.fetch(f"SELECT tenant_id FROM {table}")
            assert seen and {r["tenant_id"] for r in seen} == {a}, table
            for verb, sql in (
                ("UPDATE", f"UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1"),
                ("DELETE", f"DELETE FROM {table} WHERE tenant_id = $1"),
            ):
                theirs = await attempt(conn, sql, b)
                assert theirs in {f"{verb} 0", "denied"}, (table, theirs)
                if theirs != "denied":  # the statement itself works on the tenant's own rows
                    assert await attempt(conn, sql, a) not in {f"{verb} 0", "denied"}, table
        for sql in (
            "INSERT INTO proj_members.position (tenant_id) VALUES ($1)",
            "INSERT INTO relay_cursor (tenant_id, published_seq) VALUES ($1, 0)",
        ):
            assert await attempt(conn, sql, b) == "denied", sql

    for table in ISOLATED_TABLES:
        assert await rows_of(pool, table, b) == before[table], table
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # no tenant


async def test_every_read_model_table_forces_row_level_security(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT n.nspname || '.' || c.relname AS name, c.relrowsecurity, "
        "c.relforcerowsecurity, EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid "
        "AND p.polname = 'tenant_isolation') AS isolated "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname LIKE 'proj\\_%' AND c.relkind IN ('r', 'p')"
    )
    names = {r["name"] for r in rows}
    assert {"proj_members.members_view", "proj_members.position", "proj_t_tally.tally"} <= names
    assert {f"{p.schema}.applied" for p in TEST_PROJECTIONS if p.name != "t_tally"} <= names
    assert [r["name"] for r in rows if not (r["relrowsecurity"] and r["relforcerowsecurity"])] == []
    assert [r["name"] for r in rows if not r["isolated"]] == []
