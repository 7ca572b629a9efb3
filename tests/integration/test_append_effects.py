"""An append's effect: state written in the same transaction as the events, or not at all."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest

from infra.db import tenant_transaction
from infra.eventstore import Actor, ConcurrencyError, EventStore, NewEvent

ACTOR = Actor("system", "effects-test")


def noted(stream: str) -> NewEvent:
    return NewEvent(stream=stream, type="thing.noted", data={"n": 1})


async def failures(pool: asyncpg.Pool, tenant: UUID) -> int:
    """Rows of auth_failure, a tenant table the app role may insert into."""
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM auth_failure WHERE tenant_id = $1", tenant
        )
        return count


def insert_failure(tenant: UUID) -> object:
    async def effect(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO auth_failure (tenant_id, account_key, kind) VALUES ($1, $2, 'password')",
            tenant,
            b"k" * 32,
        )

    return effect


async def test_an_effect_commits_with_its_events(store: EventStore, pool: asyncpg.Pool) -> None:
    tenant = uuid4()
    result = await store.append(
        tenant,
        [noted("thing-1")],
        expected={"thing-1": 0},
        command_id=uuid4(),
        actor=ACTOR,
        effect=insert_failure(tenant),  # type: ignore[arg-type]
    )
    assert result.last_seq == 1
    assert await failures(pool, tenant) == 1


async def test_a_failing_effect_writes_no_event_and_raises(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()

    async def broken(conn: asyncpg.Connection) -> None:
        await insert_failure(tenant)(conn)  # type: ignore[operator]
        raise LookupError("the effect refused")

    with pytest.raises(LookupError):
        await store.append(
            tenant,
            [noted("thing-1")],
            expected={"thing-1": 0},
            command_id=uuid4(),
            actor=ACTOR,
            effect=broken,
        )
    head = await store.head(tenant)
    assert head is None or head.size == 0
    assert await failures(pool, tenant) == 0
    after = await store.append(
        tenant, [noted("thing-1")], expected={"thing-1": 0}, command_id=uuid4(), actor=ACTOR
    )
    assert after.last_seq == 1


async def test_an_effect_does_not_run_for_a_stale_command_or_a_replay(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    command = uuid4()
    await store.append(
        tenant,
        [noted("thing-1")],
        expected={"thing-1": 0},
        command_id=command,
        actor=ACTOR,
        effect=insert_failure(tenant),  # type: ignore[arg-type]
    )
    replay = await store.append(
        tenant,
        [noted("thing-1")],
        expected={"thing-1": 0},
        command_id=command,
        actor=ACTOR,
        effect=insert_failure(tenant),  # type: ignore[arg-type]
    )
    assert replay.replayed
    with pytest.raises(ConcurrencyError):
        await store.append(
            tenant,
            [noted("thing-1")],
            expected={"thing-1": 0},
            command_id=uuid4(),
            actor=ACTOR,
            effect=insert_failure(tenant),  # type: ignore[arg-type]
        )
    assert await failures(pool, tenant) == 1


async def test_concurrent_commands_with_and_without_effects_all_commit_gaplessly(
    store: EventStore, pool: asyncpg.Pool
) -> None:
    tenant = uuid4()
    results = await asyncio.gather(
        *(
            store.append(
                tenant,
                [noted(f"thing-{i}")],
                expected={f"thing-{i}": 0},
                command_id=uuid4(),
                actor=ACTOR,
                effect=insert_failure(tenant) if i % 2 else None,  # type: ignore[arg-type]
            )
            for i in range(20)
        )
    )
    assert sorted(r.last_seq for r in results) == list(range(1, 21))
    assert await failures(pool, tenant) == 10
