"""Two batches of one tenant in flight: the second planned on the head the first leaves.

These tests make the pipeline actually run (writers that append again as soon as they
are answered, or a queue split in two) and count the calls by path, so a change that
quietly stops pipelining, or pipelines a batch it should not, fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID, uuid4

import asyncpg
from prometheus_client import REGISTRY

from infra.db import create_pool
from infra.eventstore import (
    AppendResult,
    Committed,
    ConcurrencyError,
    EventStore,
)
from infra.keyring import Keyring
from tests.conftest import LOG_HOST, Database
from tests.integration.test_event_store import append, assert_log_is_intact, thing


def calls(path: str) -> float:
    return REGISTRY.get_sample_value("strongroom_append_calls_total", {"path": path}) or 0.0


class Listener:
    """Records what a store announces, per tenant, in the order it announces it."""

    def __init__(self) -> None:
        self.seqs: dict[UUID, list[int]] = {}

    def __call__(self, tenant: UUID, committed: Sequence[Committed]) -> None:
        self.seqs.setdefault(tenant, []).extend(c.seq for c in committed)


async def writer(store: EventStore, tenant: UUID, stream: str, count: int) -> list[AppendResult]:
    """Append ``count`` events to ``stream`` one after another, each expecting the last."""
    results = []
    for version in range(count):
        results.append(await append(store, tenant, [thing(stream, n=version)], {stream: version}))
    return results


async def test_writers_appending_in_a_loop_are_pipelined_and_commit_in_order(
    pool: asyncpg.Pool, keyring: Keyring
) -> None:
    store = EventStore(pool, keyring, log_host=LOG_HOST)
    listener = Listener()
    store.add_commit_listener(listener)
    tenant = uuid4()
    await append(store, tenant, [thing("thing-first")])
    pipelined = calls("pipelined")

    results = await asyncio.gather(*(writer(store, tenant, f"thing-w{w}", 15) for w in range(16)))

    assert calls("pipelined") > pipelined
    for w, mine in enumerate(results):
        assert [r.events[0].version for r in mine] == list(range(1, 16)), w
    size = 1 + 16 * 15
    assert listener.seqs[tenant] == list(range(1, size + 1))
    await assert_log_is_intact(store, pool, tenant, size)


async def test_a_batch_behind_one_the_database_rejects_is_written_again(
    pool: asyncpg.Pool, keyring: Keyring
) -> None:
    store = EventStore(pool, keyring, log_host=LOG_HOST)
    other = EventStore(pool, keyring, log_host=LOG_HOST)
    tenant = uuid4()
    await append(other, tenant, [thing("thing-taken")], {"thing-taken": 0})
    await append(store, tenant, [thing("thing-first")])  # the store knows the head now
    pipelined, careful = calls("pipelined"), calls("careful")

    # One queue, split in two: the first half holds a command only the database can see
    # is stale, so that batch writes nothing and the half planned behind it is stale too.
    outcomes = await asyncio.gather(
        append(store, tenant, [thing("thing-taken", n=1)], {"thing-taken": 0}),
        *(append(store, tenant, [thing(f"thing-{i}")], {f"thing-{i}": 0}) for i in range(7)),
        return_exceptions=True,
    )

    assert calls("pipelined") > pipelined and calls("careful") > careful
    assert isinstance(outcomes[0], ConcurrencyError)
    assert (outcomes[0].expected, outcomes[0].actual) == (0, 1)
    assert all(isinstance(o, AppendResult) for o in outcomes[1:]), outcomes
    log = await assert_log_is_intact(store, pool, tenant, 2 + 7)
    assert sorted(r.stream for r in log[2:]) == [f"thing-{i}" for i in range(7)]


async def test_two_processes_looping_on_one_tenant_never_starve_each_other(
    database: Database, keyring: Keyring, pool: asyncpg.Pool
) -> None:
    pools = [await create_pool(database.app_url, min_size=2, max_size=4) for _ in range(2)]
    try:
        stores = [EventStore(p, keyring, log_host=LOG_HOST) for p in pools]
        tenant = uuid4()
        locked = calls("locked")
        results = await asyncio.gather(
            *(writer(stores[w % 2], tenant, f"thing-w{w}", 10) for w in range(12))
        )
        # Each store's head went stale under it; its retries plan under the head lock,
        # so the other store's pipelined calls cannot starve them.
        assert calls("locked") > locked
        for mine in results:
            assert [r.events[0].version for r in mine] == list(range(1, 11))
        await assert_log_is_intact(stores[0], pool, tenant, 12 * 10)
    finally:
        for p in pools:
            await p.close()
