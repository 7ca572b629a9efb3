"""The event store against a real PostgreSQL: positions, leaves, hashes, group commit,
optimistic concurrency, idempotency, rejections, reads, personal data and the repository.

Every test works on fresh tenant ids; the log is append-only and nothing is cleaned up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import types
from collections import Counter
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

import asyncpg
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.errors import ConflictError, InvalidError, NotFoundError
from domain.member import Member
from domain.recorded import RecordedAggregate
from domain.roles import Role
from domain.tenant import Tenant
from infra.canonical import MAX_LEAF_BYTES
from infra.db import create_pool, tenant_transaction
from infra.eventstore import (
    ERASED,
    Actor,
    AppendResult,
    CommandIdReusedError,
    ConcurrencyError,
    EventRejectedError,
    EventStore,
    EventStoreIntegrityError,
    NewEvent,
    PersonalDataErasedError,
    RecordedEvent,
)
from infra.keyring import DecryptionError, Keyring
from infra.merkle import ZERO_HASH, reference_root
from infra.repository import EventRegistry, Repository
from infra.verify import verify_tenant
from tests.conftest import LOG_HOST, Database

ACTOR = Actor("user", "3c7b0a52-2c55-4d0e-9d1e-6f0b7a8d9e10")
LEAF_FIELDS = {
    "v",
    "log",
    "seq",
    "ts",
    "id",
    "type",
    "stream",
    "version",
    "actor",
    "causation",
    "correlation",
    "salt",
    "data",
    "pii",
}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def thing(stream: str, type: str = "thing.noted", **data: Any) -> NewEvent:
    return NewEvent(stream=stream, type=type, data=data)


async def append(
    store: EventStore,
    tenant: UUID,
    events: list[NewEvent],
    expected: dict[str, int | None] | None = None,
    *,
    command_id: UUID | None = None,
    actor: Actor = ACTOR,
) -> AppendResult:
    return await store.append(
        tenant,
        events,
        expected={e.stream: None for e in events} if expected is None else expected,
        command_id=command_id or uuid4(),
        actor=actor,
    )


async def head_of(store: EventStore, tenant: UUID) -> tuple[int, bytes, bytes] | None:
    """The head as plain values (a Frontier compares by identity)."""
    head = await store.head(tenant)
    return None if head is None else (head.size, head.chain_hash, head.root)


async def whole_log(store: EventStore, tenant: UUID) -> list[RecordedEvent]:
    return await store.read_log(tenant, limit=10_000)


async def assert_log_is_intact(
    store: EventStore, pool: asyncpg.Pool, tenant: UUID, size: int
) -> list[RecordedEvent]:
    """Every invariant of ARCHITECTURE.md, recomputed from the stored leaves."""
    log = await whole_log(store, tenant)
    assert [r.seq for r in log] == list(range(1, size + 1))
    chain = ZERO_HASH
    for r in log:
        assert r.leaf_hash == sha256(b"\x00" + r.leaf)
        chain = sha256(chain + r.leaf_hash)
        assert r.chain_hash == chain
        assert json.loads(r.leaf)["seq"] == r.seq
    versions: dict[str, list[int]] = {}
    for r in log:
        versions.setdefault(r.stream, []).append(r.version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), stream
    head = await store.head(tenant)
    assert head is not None
    assert head.size == size
    assert head.chain_hash == chain
    assert head.root == reference_root([r.leaf_hash for r in log])
    report = await verify_tenant(pool, tenant)
    assert report.ok, report
    assert report.checked == size
    assert report.root == head.root
    return log


# ---- positions and the leaf ----------------------------------------------------------


async def test_an_append_returns_positions_and_writes_the_documented_leaf(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    stream = f"thing-{uuid4()}"
    command, correlation, causation = uuid4(), uuid4(), uuid4()
    before = datetime.now(UTC)
    result = await store.append(
        tenant,
        [thing(stream, "thing.made", n=1, s="x", nested={"b": [True, None]}), thing(stream)],
        expected={stream: 0},
        command_id=command,
        actor=ACTOR,
        correlation=correlation,
        causation=causation,
    )
    after = datetime.now(UTC)
    assert result.replayed is False
    assert [(a.seq, a.stream, a.version) for a in result.events] == [(1, stream, 1), (2, stream, 2)]
    assert result.last_seq == 2
    log = await whole_log(store, tenant)
    chain = ZERO_HASH
    for appended, recorded in zip(result.events, log, strict=True):
        leaf = json.loads(recorded.leaf)
        assert set(leaf) == LEAF_FIELDS
        assert recorded.leaf == rfc8785.dumps(leaf), "the leaf is JCS bytes"
        assert leaf["v"] == 1
        assert leaf["log"] == f"{LOG_HOST}/t/{tenant}"
        assert leaf["seq"] == appended.seq == recorded.seq
        assert TS.match(leaf["ts"])
        assert before <= datetime.fromisoformat(leaf["ts"]) <= after
        assert leaf["id"] == str(appended.event_id)
        assert leaf["stream"] == stream and leaf["version"] == appended.version
        assert leaf["actor"] == {"kind": ACTOR.kind, "id": ACTOR.id}
        assert leaf["causation"] == str(causation)
        assert leaf["correlation"] == str(correlation)
        assert len(base64.b64decode(leaf["salt"], validate=True)) == 16
        assert leaf["pii"] == {}
        assert appended.leaf_hash == sha256(b"\x00" + recorded.leaf) == recorded.leaf_hash
        chain = sha256(chain + appended.leaf_hash)
        assert appended.chain_hash == chain == recorded.chain_hash
    first, second = (json.loads(r.leaf) for r in log)
    assert first["type"] == "thing.made" and second["type"] == "thing.noted"
    assert first["data"] == {"n": 1, "s": "x", "nested": {"b": [True, None]}}
    assert first["salt"] != second["salt"]
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT seq, stream_id, stream_version, event_id, event_type, leaf_hash "
            "FROM event_log WHERE tenant_id = $1 ORDER BY seq",
            tenant,
        )
    assert [tuple(r) for r in rows] == [
        (a.seq, a.stream, a.version, a.event_id, json.loads(r.leaf)["type"], a.leaf_hash)
        for a, r in zip(result.events, log, strict=True)
    ]


async def test_seq_and_ts_come_from_the_store_and_correlation_defaults_to_the_command(
    store: EventStore,
) -> None:
    tenant = uuid4()
    command = uuid4()
    await append(store, tenant, [thing("thing-a", seq=99, ts="1970-01-01T00:00:00.000000Z")])
    second = await append(store, tenant, [thing("thing-a")], command_id=command)
    first_leaf, second_leaf = (json.loads(r.leaf) for r in await whole_log(store, tenant))
    assert first_leaf["seq"] == 1 and first_leaf["data"]["seq"] == 99
    assert first_leaf["ts"].startswith(str(datetime.now(UTC).year))
    assert second.last_seq == 2 and second_leaf["seq"] == 2
    assert second_leaf["ts"] >= first_leaf["ts"]
    assert second_leaf["correlation"] == str(command)
    assert second_leaf["causation"] is None


async def test_the_first_chain_hash_links_to_32_zero_bytes(store: EventStore) -> None:
    result = await append(store, uuid4(), [thing("thing-a")])
    [a] = result.events
    assert a.chain_hash == sha256(bytes(32) + a.leaf_hash)


async def test_a_tenant_without_events_has_no_head(store: EventStore) -> None:
    assert await store.head(uuid4()) is None


# ---- the invariants, for random histories ----------------------------------------------

commands = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),
        st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=5),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=commands, concurrently=st.booleans())
async def test_random_appends_across_tenants_keep_every_invariant(
    store: EventStore,
    pool: asyncpg.Pool,
    history: list[tuple[int, list[int], bool]],
    concurrently: bool,
) -> None:
    """Each command: (tenant, the streams of its events, strict expectations or any)."""
    tenants = [uuid4() for _ in range(3)]
    outcomes: list[AppendResult | BaseException]
    if concurrently:
        # Strict commands all expect a fresh stream, so only the first one to reach
        # a stream can win; the losers must leave no trace.
        outcomes = await asyncio.gather(
            *(
                append(
                    store,
                    tenants[t],
                    [thing(f"thing-{s}", n=i) for i, s in enumerate(streams)],
                    {f"thing-{s}": 0 if strict else None for s in streams},
                )
                for t, streams, strict in history
            ),
            return_exceptions=True,
        )
        for (_, _, strict), outcome in zip(history, outcomes, strict=True):
            assert isinstance(outcome, AppendResult) or (
                strict and isinstance(outcome, ConcurrencyError)
            ), repr(outcome)
    else:
        versions: Counter[tuple[int, int]] = Counter()
        outcomes = []
        for t, streams, strict in history:
            expected: dict[str, int | None] = {
                f"thing-{s}": versions[(t, s)] if strict else None for s in streams
            }
            events = [thing(f"thing-{s}", n=i) for i, s in enumerate(streams)]
            outcomes.append(await append(store, tenants[t], events, expected))
            versions.update((t, s) for s in streams)
    for index, tenant in enumerate(tenants):
        mine = [
            r
            for (t, _, _), r in zip(history, outcomes, strict=True)
            if t == index and isinstance(r, AppendResult)
        ]
        size = sum(len(r.events) for r in mine)
        if size == 0:
            head = await store.head(tenant)
            assert head is None or head.size == 0
            continue
        log = await assert_log_is_intact(store, pool, tenant, size)
        for result in mine:
            seqs = [a.seq for a in result.events]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a command is contiguous"
            for a in result.events:
                r = log[a.seq - 1]
                assert (r.stream, r.version, r.event_id) == (a.stream, a.version, a.event_id)
                assert (r.leaf_hash, r.chain_hash) == (a.leaf_hash, a.chain_hash)


# ---- concurrency ----------------------------------------------------------------------


async def test_of_20_concurrent_appends_expecting_one_version_exactly_one_wins(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    stream = f"thing-{uuid4()}"
    await append(store, tenant, [thing(stream)], {stream: 0})
    outcomes = await asyncio.gather(
        *(append(store, tenant, [thing(stream, n=i)], {stream: 1}) for i in range(20)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, AppendResult)]
    lost = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(won) == 1 and len(lost) == 19, outcomes
    assert all((e.stream, e.expected, e.actual) == (stream, 1, 2) for e in lost)
    events = await store.read_stream(tenant, stream)
    assert [e.version for e in events] == [1, 2]
    assert events[1].event_id == won[0].events[0].event_id
    await assert_log_is_intact(store, pool, tenant, 2)


async def test_32_concurrent_appends_to_32_streams_all_commit_gaplessly(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    results = await asyncio.gather(
        *(append(store, tenant, [thing(f"thing-{i}")], {f"thing-{i}": 0}) for i in range(32))
    )
    assert sorted(r.last_seq for r in results) == list(range(1, 33))
    await assert_log_is_intact(store, pool, tenant, 32)


async def test_two_store_processes_appending_to_one_tenant_stay_gapless(
    database: Database, keyring: Keyring, pool: asyncpg.Pool
) -> None:
    pools = [await create_pool(database.app_url, min_size=1, max_size=4) for _ in range(2)]
    try:
        stores = [EventStore(p, keyring, log_host=LOG_HOST) for p in pools]
        tenant = uuid4()
        results = await asyncio.gather(
            *(
                append(stores[i % 2], tenant, [thing(f"thing-{i % 5}", n=i)] * (1 + i % 3))
                for i in range(40)
            )
        )
        size = sum(len(r.events) for r in results)
        seqs = sorted(a.seq for r in results for a in r.events)
        assert seqs == list(range(1, size + 1))
        await assert_log_is_intact(stores[0], pool, tenant, size)
    finally:
        for p in pools:
            await p.close()


async def test_a_stale_multi_event_command_writes_nothing_while_its_batch_commits(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    await append(store, tenant, [thing("thing-b")], {"thing-b": 0})
    before = await append(store, tenant, [thing("thing-c")], {"thing-c": 0})
    outcomes = await asyncio.gather(
        append(store, tenant, [thing("thing-d")], {"thing-d": 0}),
        append(
            store,
            tenant,
            [thing("thing-a"), thing("thing-a"), thing("thing-b")],
            {"thing-a": 0, "thing-b": 0},
        ),
        append(store, tenant, [thing("thing-c")], {"thing-c": 1}),
        return_exceptions=True,
    )
    first, stale, last = outcomes
    assert isinstance(stale, ConcurrencyError)
    assert (stale.stream, stale.expected, stale.actual) == ("thing-b", 0, 1)
    assert isinstance(first, AppendResult) and isinstance(last, AppendResult)
    assert (first.last_seq, last.last_seq) == (before.last_seq + 1, before.last_seq + 2)
    assert await store.read_stream(tenant, "thing-a") == []
    assert len(await store.read_stream(tenant, "thing-b")) == 1
    await assert_log_is_intact(store, pool, tenant, 4)


@pytest.mark.parametrize(
    ("fields", "actor", "must_be_rejected"),
    [
        pytest.param(
            {"personal": {"email": "\ud800"}, "subject": "thing-odd"},
            ACTOR,
            True,
            id="a lone surrogate in a personal value",
        ),
        pytest.param(
            {"personal": {"email": "a@b.co"}, "subject": "subject-\ud800"},
            ACTOR,
            True,
            id="a lone surrogate in the subject",
        ),
        pytest.param(
            {"personal": {"email": "a@b.co"}, "subject": "subject-\x00"},
            ACTOR,
            True,
            id="a NUL character in the subject",
        ),
        pytest.param(
            {"data": types.MappingProxyType({"a": 1})},
            ACTOR,
            False,
            id="data as a read-only mapping",
        ),
    ],
)
async def test_an_odd_command_does_not_sink_the_other_commands_of_its_batch(
    store: EventStore,
    pool: asyncpg.Pool,
    fields: dict[str, Any],
    actor: Actor,
    must_be_rejected: bool,
) -> None:
    """The odd command is written or refused with EventRejectedError; its batch commits."""
    tenant = uuid4()
    odd = NewEvent(stream="thing-odd", type="thing.noted", **{"data": {}, **fields})
    first, outcome, last = await asyncio.gather(
        append(store, tenant, [thing("thing-good")], {"thing-good": 0}),
        append(store, tenant, [odd], {"thing-odd": 0}, actor=actor),
        append(store, tenant, [thing("thing-good")], {"thing-good": 1}),
        return_exceptions=True,
    )
    assert isinstance(first, AppendResult), repr(first)
    assert isinstance(last, AppendResult), repr(last)
    if must_be_rejected or isinstance(outcome, BaseException):
        assert isinstance(outcome, EventRejectedError), repr(outcome)
    size = 2 if isinstance(outcome, BaseException) else 3
    await assert_log_is_intact(store, pool, tenant, size)


# ---- idempotency ----------------------------------------------------------------------


async def test_the_same_command_twice_writes_once_and_returns_the_first_positions(
    store: EventStore,
) -> None:
    tenant = uuid4()
    command = uuid4()
    events = [thing("thing-a", n=1), thing("thing-b", n=2)]
    first = await append(store, tenant, events, {"thing-a": 0, "thing-b": 0}, command_id=command)
    moved = await append(store, tenant, [thing("thing-a")], {"thing-a": 1})
    again = await append(store, tenant, events, {"thing-a": 0, "thing-b": 0}, command_id=command)
    assert first.replayed is False
    assert again.replayed is True
    assert again.events == first.events
    head = await store.head(tenant)
    assert head is not None and head.size == moved.last_seq == 3


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([thing("thing-a", n=2)], {"thing-a": 0}, id="other data"),
        pytest.param([thing("thing-a", "thing.other", n=1)], {"thing-a": 0}, id="other type"),
        pytest.param([thing("thing-b", n=1)], {"thing-b": 0}, id="other stream"),
        pytest.param([thing("thing-a", n=1)], {"thing-a": None}, id="other expectation"),
        pytest.param([thing("thing-a", n=1)] * 2, {"thing-a": 0}, id="more events"),
    ],
)
async def test_a_command_id_reused_for_other_content_is_refused_and_writes_nothing(
    store: EventStore, events: list[NewEvent], expected: dict[str, int | None]
) -> None:
    tenant = uuid4()
    command = uuid4()
    await append(store, tenant, [thing("thing-a", n=1)], {"thing-a": 0}, command_id=command)
    with pytest.raises(CommandIdReusedError):
        await append(store, tenant, events, expected, command_id=command)
    assert [r.seq for r in await whole_log(store, tenant)] == [1]


async def test_a_command_id_reused_within_one_batch_for_other_content_is_refused(
    store: EventStore,
) -> None:
    tenant = uuid4()
    command = uuid4()
    first, second = await asyncio.gather(
        append(store, tenant, [thing("thing-a", n=1)], {"thing-a": 0}, command_id=command),
        append(store, tenant, [thing("thing-a", n=2)], {"thing-a": 0}, command_id=command),
        return_exceptions=True,
    )
    assert isinstance(first, AppendResult)
    assert isinstance(second, CommandIdReusedError)
    assert [r.seq for r in await whole_log(store, tenant)] == [1]


async def test_the_same_command_sent_twice_at_once_writes_once(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    command = uuid4()
    events = [thing("thing-a"), thing("thing-a")]
    one, two = await asyncio.gather(
        append(store, tenant, events, {"thing-a": 0}, command_id=command),
        append(store, tenant, events, {"thing-a": 0}, command_id=command),
    )
    assert sorted([one.replayed, two.replayed]) == [False, True]
    assert one.events == two.events
    await assert_log_is_intact(store, pool, tenant, 2)


# ---- rejections -----------------------------------------------------------------------

REJECTED = [
    pytest.param([thing("thing-a", x=1.5)], None, id="a float in data"),
    pytest.param([thing("thing-a", x=[1.0])], None, id="a whole float deep in data"),
    pytest.param([NewEvent(stream="thing-a", type="thing.noted", data={"é": 1})], None, id="key"),
    pytest.param([thing("thing-a", x=2**53)], None, id="the integer 2**53"),
    pytest.param([thing("thing-a", x=-(2**53))], None, id="the integer -2**53"),
    pytest.param([thing("thing-a", blob="a" * (MAX_LEAF_BYTES - 300))], None, id="leaf over 256K"),
    pytest.param([thing("Thing-a")], None, id="an upper-case category"),
    pytest.param([thing("thing")], None, id="a stream without an id"),
    pytest.param([thing("thing-")], None, id="a stream with an empty id"),
    pytest.param([thing("thing-a b")], None, id="a stream with a space"),
    pytest.param([thing("thing-a\n")], None, id="a stream with a trailing newline"),
    pytest.param([thing("thing-a", "ThingNoted")], None, id="a type without a dot"),
    pytest.param([thing("thing-a", "thing.")], None, id="a type with an empty name"),
    pytest.param([thing("thing-a", "thing.noted\n")], None, id="a type with a trailing newline"),
    pytest.param([thing("thing-a")], {"thing-b": 0}, id="a stream missing from expected"),
    pytest.param([], {}, id="no events"),
    pytest.param([thing("thing-a")], {"thing-a": -1}, id="a negative expected version"),
    pytest.param([thing("thing-a")], {"thing-a": True}, id="a boolean expected version"),
    pytest.param(
        [NewEvent(stream="thing-a", type="thing.noted", data={}, personal={"email": "a@b.co"})],
        None,
        id="personal data without a subject",
    ),
    pytest.param(
        [
            NewEvent(
                stream="thing-a",
                type="thing.noted",
                data={},
                personal={"e-mail": "a@b.co"},
                subject="thing-a",
            )
        ],
        None,
        id="a bad personal field name",
    ),
    pytest.param(
        [
            NewEvent(
                stream="thing-a",
                type="thing.noted",
                data={},
                personal={"email\n": "a@b.co"},
                subject="thing-a",
            )
        ],
        None,
        id="a personal field name with a trailing newline",
    ),
]


@pytest.mark.parametrize(("events", "expected"), REJECTED)
async def test_an_event_that_cannot_be_a_leaf_is_rejected_and_the_log_is_unchanged(
    store: EventStore, events: list[NewEvent], expected: dict[str, Any] | None
) -> None:
    tenant = uuid4()
    await append(store, tenant, [thing("thing-a")])
    head = await head_of(store, tenant)
    with pytest.raises(EventRejectedError):
        await append(store, tenant, events, expected)
    assert await head_of(store, tenant) == head
    assert [r.seq for r in await whole_log(store, tenant)] == [1]


async def test_the_largest_data_that_fits_a_leaf_is_accepted(store: EventStore) -> None:
    tenant = uuid4()
    result = await append(store, tenant, [thing("thing-a", blob="a" * (MAX_LEAF_BYTES - 1200))])
    leaf = (await store.read_event(tenant, result.last_seq)).leaf
    assert MAX_LEAF_BYTES - 1200 < len(leaf) <= MAX_LEAF_BYTES


@pytest.mark.parametrize(
    ("kind", "actor_id"),
    [("robot", "x"), ("user", ""), ("user", "\ud800"), ("user", "a\x00b"), ("user", "x" * 201)],
)
def test_an_actor_that_cannot_be_recorded_is_refused_when_made(kind: str, actor_id: str) -> None:
    with pytest.raises(EventRejectedError):
        Actor(kind, actor_id)


# ---- reads ----------------------------------------------------------------------------


async def test_a_stream_reads_up_to_a_version_or_up_to_a_log_position(store: EventStore) -> None:
    tenant = uuid4()
    for i in range(3):
        await append(store, tenant, [thing("thing-a", n=i), thing("thing-b", n=i)])
    assert [e.data["n"] for e in await store.read_stream(tenant, "thing-a")] == [0, 1, 2]
    upto_version = await store.read_stream(tenant, "thing-a", to_version=2)
    assert [(e.version, e.seq) for e in upto_version] == [(1, 1), (2, 3)]
    upto_seq = await store.read_stream(tenant, "thing-b", to_seq=4)
    assert [(e.version, e.seq) for e in upto_seq] == [(1, 2), (2, 4)]
    assert await store.read_stream(tenant, "thing-a", to_version=0) == []
    assert await store.read_stream(tenant, "thing-zzz") == []


async def test_the_log_reads_in_pages_after_a_position(store: EventStore) -> None:
    tenant = uuid4()
    for i in range(7):
        await append(store, tenant, [thing("thing-a", n=i)])
    pages = []
    after = 0
    while page := await store.read_log(tenant, after=after, limit=3):
        pages.append([e.seq for e in page])
        after = page[-1].seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    assert [e.data["n"] for e in await store.read_log(tenant, after=5)] == [5, 6]
    for limit in (0, 10_001):
        with pytest.raises(InvalidError):
            await store.read_log(tenant, limit=limit)


async def test_reading_a_missing_position_is_not_found(store: EventStore) -> None:
    tenant = uuid4()
    await append(store, tenant, [thing("thing-a", n=1)])
    event = await store.read_event(tenant, 1)
    assert (event.seq, event.stream, event.data) == (1, "thing-a", {"n": 1})
    assert event.actor == ACTOR
    with pytest.raises(NotFoundError):
        await store.read_event(tenant, 2)
    with pytest.raises(NotFoundError):
        await store.read_event(uuid4(), 1)
    assert await store.read_log(uuid4()) == []


# ---- personal data --------------------------------------------------------------------


def personal(stream: str, subject: str, **values: str) -> NewEvent:
    return NewEvent(
        stream=stream,
        type="member.invited",
        data={"role": "admin"},
        personal=values,
        subject=subject,
    )


async def stored_ciphertexts(pool: asyncpg.Pool, tenant: UUID) -> dict[str, bytes | None]:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT value_hash, ciphertext FROM pii_value WHERE tenant_id = $1", tenant
        )
    return {r["value_hash"].hex(): r["ciphertext"] for r in rows}


async def test_personal_values_stay_out_of_the_leaf_which_holds_their_ciphertext_hash(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    ada, bob = f"member-{uuid4()}", f"member-{uuid4()}"
    await append(
        store,
        tenant,
        [
            personal(ada, ada, email="ada@example.com", name="Ada Lovelace"),
            personal(bob, bob, email="bob@example.com"),
        ],
    )
    log = await whole_log(store, tenant)
    ciphertexts = await stored_ciphertexts(pool, tenant)
    for plaintext in (b"ada@example.com", b"Lovelace", b"bob@example.com"):
        assert all(plaintext not in r.leaf for r in log)
        assert all(c is not None and plaintext not in c for c in ciphertexts.values())
    ada_leaf = json.loads(log[0].leaf)
    assert set(ada_leaf["pii"]) == {"email", "name"}
    for hex_hash in ada_leaf["pii"].values():
        ciphertext = ciphertexts[hex_hash]
        assert ciphertext is not None and sha256(ciphertext).hex() == hex_hash
    assert log[0].personal == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert log[1].personal == {"email": "bob@example.com"}


async def test_shredding_a_subject_erases_its_values_and_keeps_every_proof(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    ada, bob = f"member-{uuid4()}", f"member-{uuid4()}"
    await append(store, tenant, [personal(ada, ada, email="ada@example.com", name="Ada")])
    await append(store, tenant, [personal(bob, bob, email="bob@example.com")])
    await append(store, tenant, [personal(ada, ada, email="ada@new.example")])
    before = await whole_log(store, tenant)
    head = await head_of(store, tenant)

    assert await store.shred_subject(tenant, ada) == 3
    assert await store.shred_subject(tenant, ada) == 0

    after = await assert_log_is_intact(store, pool, tenant, 3)
    assert await head_of(store, tenant) == head
    assert [r.leaf for r in after] == [r.leaf for r in before]
    assert after[0].personal == {"email": ERASED, "name": ERASED}
    assert after[2].personal == {"email": ERASED}
    assert after[1].personal == {"email": "bob@example.com"}
    assert all(b"ada@" not in (c or b"") for c in (await stored_ciphertexts(pool, tenant)).values())

    with pytest.raises(PersonalDataErasedError):
        await append(store, tenant, [personal(ada, ada, email="ada@again.example")])
    assert await head_of(store, tenant) == head
    fine = await append(store, tenant, [thing(ada, "member.deactivated")])
    assert fine.last_seq == 4


async def test_a_subject_shredded_before_it_had_data_takes_none(store: EventStore) -> None:
    tenant = uuid4()
    subject = f"member-{uuid4()}"
    await append(store, tenant, [thing("thing-a")])
    assert await store.shred_subject(tenant, subject) == 0
    ok, refused = await asyncio.gather(
        append(store, tenant, [thing("thing-b")]),
        append(store, tenant, [personal(subject, subject, email="x@example.com")]),
        return_exceptions=True,
    )
    assert isinstance(ok, AppendResult) and ok.last_seq == 2
    assert isinstance(refused, PersonalDataErasedError)


async def test_a_shred_racing_an_append_never_leaves_the_value_readable(
    store: EventStore,
) -> None:
    tenant = uuid4()
    for round_ in range(6):
        subject = f"member-{uuid4()}"
        await append(store, tenant, [personal(subject, subject, email=f"first{round_}@x.io")])
        late = personal(subject, subject, email=f"late{round_}@x.io")
        outcome, _ = await asyncio.gather(
            append(store, tenant, [late]),
            store.shred_subject(tenant, subject),
            return_exceptions=True,
        )
        assert isinstance(outcome, AppendResult | PersonalDataErasedError), repr(outcome)
        for event in await store.read_stream(tenant, subject):
            assert event.personal == {"email": ERASED}


async def test_a_ciphertext_copied_onto_another_row_does_not_read(
    store: EventStore, superuser: asyncpg.Connection
) -> None:
    tenant = uuid4()
    ada, bob = f"member-{uuid4()}", f"member-{uuid4()}"
    await append(store, tenant, [personal(ada, ada, email="ada@example.com")])
    await append(store, tenant, [personal(bob, bob, email="bob@example.com")])
    ada_hash = bytes.fromhex(json.loads((await store.read_event(tenant, 1)).leaf)["pii"]["email"])
    bob_hash = bytes.fromhex(json.loads((await store.read_event(tenant, 2)).leaf)["pii"]["email"])
    await superuser.execute(
        "UPDATE pii_value SET ciphertext = (SELECT ciphertext FROM pii_value "
        "  WHERE tenant_id = $1 AND value_hash = $2) WHERE tenant_id = $1 AND value_hash = $3",
        tenant,
        ada_hash,
        bob_hash,
    )
    with pytest.raises(EventStoreIntegrityError):
        await store.read_event(tenant, 2)
    assert (await store.read_event(tenant, 1)).personal == {"email": "ada@example.com"}


async def rewrite_leaf(superuser: asyncpg.Connection, tenant: UUID, seq: int, change: Any) -> None:
    """A rogue DBA rewrites a leaf (triggers off for this transaction)."""
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        leaf = json.loads(
            await superuser.fetchval(
                "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = $2", tenant, seq
            )
        )
        change(leaf)
        await superuser.execute(
            "UPDATE event_log SET leaf = $3 WHERE tenant_id = $1 AND seq = $2",
            tenant,
            seq,
            rfc8785.dumps(leaf),
        )


async def test_a_ciphertext_pointed_at_from_another_field_or_event_fails_to_decrypt(
    store: EventStore, pool: asyncpg.Pool, superuser: asyncpg.Connection
) -> None:
    tenant = uuid4()
    ada = f"member-{uuid4()}"
    await append(store, tenant, [personal(ada, ada, email="ada@example.com", name="Ada")])
    await append(store, tenant, [personal(ada, ada, email="ada@new.example")])
    first = json.loads((await store.read_event(tenant, 1)).leaf)["pii"]

    def swap_fields(leaf: dict[str, Any]) -> None:
        leaf["pii"] = {"email": first["name"], "name": first["email"]}

    def borrow_from_event_1(leaf: dict[str, Any]) -> None:
        leaf["pii"] = {"email": first["email"]}

    await rewrite_leaf(superuser, tenant, 1, swap_fields)
    with pytest.raises(DecryptionError):
        await store.read_event(tenant, 1)
    await rewrite_leaf(superuser, tenant, 2, borrow_from_event_1)
    with pytest.raises(DecryptionError):
        await store.read_event(tenant, 2)
    report = await verify_tenant(pool, tenant)
    assert not report.ok and report.first_bad_seq == 1


# ---- repository -----------------------------------------------------------------------


class Gadget(RecordedAggregate):
    """A test-only aggregate whose created event is at class_version 2."""

    category: ClassVar[str] = "gadget"

    class Made(RecordedAggregate.Created):
        class_version = 2
        name: str
        colour: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["colour"] = "grey"

    @classmethod
    def make(cls, name: str, colour: str) -> Gadget:
        return cls._create(cls.Made, name=name, colour=colour)

    def __init__(self, name: str, colour: str) -> None:
        self.name = name
        self.colour = colour


def member_state(member: Member) -> tuple[Any, ...]:
    return (member.id, member.version, member.tenant_id, member.email, member.role, member.active)


@pytest.fixture(scope="module")
def repository(store: EventStore) -> Repository:
    return Repository(store, EventRegistry([Tenant, Member, Gadget]))


async def test_an_invited_member_round_trips_and_loses_its_email_when_shredded(
    store: EventStore, repository: Repository
) -> None:
    tenant = uuid4()
    member = Member.invite(tenant, "ada@example.com", Role.REQUESTER)
    saved = await repository.save(tenant, member, command_id=uuid4(), actor=ACTOR)
    assert saved is not None and saved.last_seq == 1
    assert await repository.save(tenant, member, command_id=uuid4(), actor=ACTOR) is None

    loaded = await repository.get(tenant, Member, member.id)
    assert type(loaded) is Member
    assert member_state(loaded) == member_state(member)
    assert member_state(loaded) == (member.id, 1, tenant, "ada@example.com", Role.REQUESTER, True)

    [invited] = await store.read_stream(tenant, member.stream)
    assert invited.type == "member.invited"
    assert b"ada@example.com" not in invited.leaf
    assert invited.data == {"tenant_id": str(tenant), "role": "requester"}
    assert invited.personal == {"email": "ada@example.com"}

    assert await store.shred_subject(tenant, f"member-{member.id}") == 1
    erased = await repository.get(tenant, Member, member.id)
    assert erased.email is None
    assert (erased.id, erased.role, erased.version) == (member.id, Role.REQUESTER, 1)


async def test_a_members_later_events_round_trip_and_past_states_can_be_loaded(
    repository: Repository,
) -> None:
    tenant = uuid4()
    member = Member.invite(tenant, "ada@example.com", Role.REQUESTER)
    await repository.save(tenant, member, command_id=uuid4(), actor=ACTOR)
    member.change_role(Role.ADMIN)
    member.deactivate()
    await repository.save(tenant, member, command_id=uuid4(), actor=ACTOR)

    loaded = await repository.get(tenant, Member, member.id)
    assert member_state(loaded) == member_state(member)
    assert member_state(loaded) == (member.id, 3, tenant, "ada@example.com", Role.ADMIN, False)
    past = await repository.get(tenant, Member, member.id, version=1)
    assert member_state(past) == (member.id, 1, tenant, "ada@example.com", Role.REQUESTER, True)
    assert (await repository.get(tenant, Member, member.id, to_seq=2)).role is Role.ADMIN


async def test_a_created_tenant_round_trips_and_others_are_not_found(
    repository: Repository,
) -> None:
    tenant_id = uuid4()
    tenant = Tenant.create("Acme", "acme")
    await repository.save(tenant_id, tenant, command_id=uuid4(), actor=ACTOR)
    loaded = await repository.get(tenant_id, Tenant, tenant.id)
    assert (loaded.id, loaded.version, loaded.name, loaded.slug) == (tenant.id, 1, "Acme", "acme")
    with pytest.raises(NotFoundError):
        await repository.get(tenant_id, Tenant, uuid4())
    with pytest.raises(NotFoundError):
        await repository.get(uuid4(), Tenant, tenant.id)
    with pytest.raises(NotFoundError):
        await repository.get(tenant_id, Member, tenant.id)


async def test_a_renamed_tenant_round_trips_through_the_repository(
    repository: Repository,
) -> None:
    tenant_id = uuid4()
    tenant = Tenant.create("Acme", "acme")
    await repository.save(tenant_id, tenant, command_id=uuid4(), actor=ACTOR)
    tenant.rename("Acme Ltd")
    await repository.save(tenant_id, tenant, command_id=uuid4(), actor=ACTOR)
    loaded = await repository.get(tenant_id, Tenant, tenant.id)
    assert (loaded.id, loaded.version, loaded.name, loaded.slug) == (
        tenant.id,
        2,
        "Acme Ltd",
        "acme",
    )
    assert (await repository.get(tenant_id, Tenant, tenant.id, version=1)).name == "Acme"


async def test_saving_two_aggregates_is_one_command(
    store: EventStore, repository: Repository
) -> None:
    tenant_id = uuid4()
    tenant = Tenant.create("Acme", "acme")
    member = Member.invite(tenant_id, "ada@example.com", Role.OWNER)
    result = await repository.save(tenant_id, tenant, member, command_id=uuid4(), actor=ACTOR)
    assert result is not None
    assert [(a.seq, a.stream) for a in result.events] == [(1, tenant.stream), (2, member.stream)]


async def test_an_old_event_version_is_upcast_on_load(
    store: EventStore, repository: Repository
) -> None:
    tenant = uuid4()
    old_id = uuid4()
    await append(
        store, tenant, [NewEvent(stream=f"gadget-{old_id}", type="gadget.made", data={"name": "a"})]
    )
    old = await repository.get(tenant, Gadget, old_id)
    assert (old.name, old.colour, old.version) == ("a", "grey", 1)

    new = Gadget.make("b", "red")
    await repository.save(tenant, new, command_id=uuid4(), actor=ACTOR)
    [recorded] = await store.read_stream(tenant, new.stream)
    assert recorded.data == {"name": "b", "colour": "red", "class_version": 2}
    assert (await repository.get(tenant, Gadget, new.id)).colour == "red"


async def test_saving_from_a_stale_copy_is_a_concurrency_error(
    store: EventStore, repository: Repository
) -> None:
    tenant = uuid4()
    member = Member.invite(tenant, "ada@example.com", Role.REQUESTER)
    await repository.save(tenant, member, command_id=uuid4(), actor=ACTOR)
    mine = await repository.get(tenant, Member, member.id)
    theirs = await repository.get(tenant, Member, member.id)
    theirs.change_role(Role.ADMIN)
    await repository.save(tenant, theirs, command_id=uuid4(), actor=ACTOR)
    mine.deactivate()
    with pytest.raises(ConcurrencyError) as raised:
        await repository.save(tenant, mine, command_id=uuid4(), actor=ACTOR)
    assert isinstance(raised.value, ConflictError)
    assert (raised.value.expected, raised.value.actual) == (1, 2)
    recorded = await store.read_stream(tenant, member.stream)
    assert [e.type for e in recorded] == ["member.invited", "member.role_changed"]
