"""The single-statement append protocol: stale heads, replays, conflicts, guessed versions."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from infra.db import call_in_tenant, create_pool
from infra.eventstore import (
    Actor,
    CommandIdReusedError,
    ConcurrencyError,
    EventStore,
    NewEvent,
)
from infra.keyring import Keyring
from infra.merkle import reference_root
from infra.verify import verify_tenant
from tests.conftest import LOG_HOST, Database

ACTOR = Actor("system", "test")


def event(stream: str, n: int = 0) -> NewEvent:
    return NewEvent(stream=stream, type="thing.noted", data={"n": n})


async def append(store: EventStore, tenant: uuid.UUID, stream: str, expected: int | None) -> int:
    result = await store.append(
        tenant, [event(stream)], expected={stream: expected}, command_id=uuid.uuid4(), actor=ACTOR
    )
    return result.last_seq


async def test_two_stores_in_turn_see_each_others_appends_through_a_stale_head(
    database: Database, store: EventStore, keyring: Keyring
) -> None:
    other_pool = await create_pool(database.app_url, max_size=4)
    other = EventStore(other_pool, keyring, log_host=LOG_HOST)
    tenant = uuid.uuid4()
    try:
        seqs = []
        for i in range(6):
            writer = store if i % 2 == 0 else other
            seqs.append(await append(writer, tenant, f"thing-{i}", 0))
        assert seqs == [1, 2, 3, 4, 5, 6]
        both = await asyncio.gather(
            *(
                append(s, tenant, f"many-{i}{k}", 0)
                for i in range(40)
                for k, s in enumerate((store, other))
            )
        )
        assert sorted(both) == list(range(7, 87))
    finally:
        await other_pool.close()
    leaves = await store.read_log(tenant, limit=1000)
    assert [e.seq for e in leaves] == list(range(1, 87))
    head = await store.head(tenant)
    assert head is not None and head.root == reference_root([e.leaf_hash for e in leaves])
    assert (await verify_tenant(store._pool, tenant)).ok


async def test_an_any_version_append_finds_the_stream_version_it_did_not_know(
    database: Database, store: EventStore, keyring: Keyring
) -> None:
    tenant = uuid.uuid4()
    other_pool = await create_pool(database.app_url, max_size=2)
    try:
        other = EventStore(other_pool, keyring, log_host=LOG_HOST)
        for _ in range(3):
            await append(other, tenant, "thing-a", None)
    finally:
        await other_pool.close()
    await append(store, tenant, "thing-a", None)
    versions = [e.version for e in await store.read_stream(tenant, "thing-a")]
    assert versions == [1, 2, 3, 4]


async def test_a_replayed_command_in_a_later_batch_returns_the_first_positions(
    store: EventStore,
) -> None:
    tenant = uuid.uuid4()
    command = uuid.uuid4()
    first = await store.append(
        tenant, [event("thing-x")], expected={"thing-x": 0}, command_id=command, actor=ACTOR
    )
    again, fresh = await asyncio.gather(
        store.append(
            tenant, [event("thing-x")], expected={"thing-x": 0}, command_id=command, actor=ACTOR
        ),
        append(store, tenant, "thing-y", 0),
    )
    assert again.replayed and again.events == first.events
    assert fresh == 2
    with pytest.raises(CommandIdReusedError):
        await store.append(
            tenant, [event("thing-z")], expected={"thing-z": 0}, command_id=command, actor=ACTOR
        )


async def test_a_conflict_found_by_the_database_rejects_only_that_command(
    store: EventStore,
) -> None:
    tenant = uuid.uuid4()
    await append(store, tenant, "thing-a", 0)
    results = await asyncio.gather(
        append(store, tenant, "thing-a", 0),
        append(store, tenant, "thing-b", 0),
        return_exceptions=True,
    )
    assert isinstance(results[0], ConcurrencyError)
    assert results[0].expected == 0 and results[0].actual == 1
    assert results[1] == 2


async def test_the_append_function_refuses_a_tenant_other_than_the_one_set(
    pool: asyncpg.Pool,
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(a))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval(
                "SELECT append_batch($1::uuid, 'x', 0, ''::bytea, 0, ''::bytea, ''::bytea, now(),"
                " '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',"
                " '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
                b,
            )
    with pytest.raises(ValueError, match="not a tenant function"):
        await call_in_tenant(pool, a, "pg_sleep", 1)


async def test_the_same_command_id_from_another_actor_is_not_a_replay(store: EventStore) -> None:
    tenant = uuid.uuid4()
    command = uuid.uuid4()
    await store.append(
        tenant, [event("thing-a")], expected={"thing-a": 0}, command_id=command, actor=ACTOR
    )
    with pytest.raises(CommandIdReusedError):
        await store.append(
            tenant,
            [event("thing-a")],
            expected={"thing-a": 0},
            command_id=command,
            actor=Actor("user", "someone-else"),
        )


async def test_verify_names_a_row_slipped_in_beyond_the_head(
    store: EventStore, pool: asyncpg.Pool, superuser: asyncpg.Connection
) -> None:
    tenant = uuid.uuid4()
    for i in range(5):
        await append(store, tenant, f"thing-{i}", 0)
    await superuser.execute(
        "INSERT INTO event_log (tenant_id, seq, stream_id, stream_version, event_id, event_type,"
        " recorded_at, leaf, leaf_hash, chain_hash)"
        " SELECT tenant_id, 6, 'thing-x', 1, $2, event_type, recorded_at, leaf, leaf_hash,"
        " chain_hash FROM event_log WHERE tenant_id = $1 AND seq = 5",
        tenant,
        uuid.uuid4(),
    )
    report = await verify_tenant(pool, tenant)
    assert not report.ok and report.first_bad_seq == 6
    assert report.reason is not None and "beyond the head" in report.reason


async def test_exactly_the_complete_subtrees_of_16_or_more_leaves_are_stored(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid.uuid4()
    await store.append(
        tenant,
        [event(f"thing-{i}", i) for i in range(70)],
        expected={f"thing-{i}": 0 for i in range(70)},
        command_id=uuid.uuid4(),
        actor=ACTOR,
    )
    leaves = [e.leaf_hash for e in await store.read_log(tenant, limit=100)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
        rows = await conn.fetch("SELECT level, idx, hash FROM merkle_node ORDER BY level, idx")
    stored = {(r["level"], r["idx"]): r["hash"] for r in rows}
    # 70 leaves: level 4 holds 4 subtrees of 16, level 5 holds 2 of 32, level 6 one of 64.
    assert sorted(stored) == [(4, 0), (4, 1), (4, 2), (4, 3), (5, 0), (5, 1), (6, 0)]
    for (level, idx), digest in stored.items():
        width = 1 << level
        assert digest == reference_root(leaves[idx * width : (idx + 1) * width])
