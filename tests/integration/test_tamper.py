"""The log is append-only for every role we run as, and a rogue DBA's edit is found.

The rogue DBA is the superuser with triggers switched off for one transaction
(``SET LOCAL session_replication_role = replica``); each scenario gets its own tenant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from infra.eventstore import Actor, EventStore, NewEvent
from infra.merkle import reference_root
from infra.verify import VerifyReport, verify_tenant
from tests.conftest import Database

ACTOR = Actor("system", "tamper-test")
LOG_TABLES = ("event_log", "merkle_node", "command_log")
SIZE = 20
STRONGROOM = str(Path(sys.executable).parent / "strongroom")


async def twenty_events(store: EventStore) -> UUID:
    """A fresh tenant with 20 events in 8 commands over 3 streams."""
    tenant = uuid4()
    seq = 0
    for size in (1, 2, 3, 4, 1, 3, 2, 4):
        events = [
            NewEvent(
                stream=f"thing-{(seq + k) % 3}",
                type="thing.noted",
                data={"note": f"event-{seq + k + 1:02d}"},
            )
            for k in range(size)
        ]
        await store.append(
            tenant,
            events,
            expected={e.stream: None for e in events},
            command_id=uuid4(),
            actor=ACTOR,
        )
        seq += size
    assert seq == SIZE
    return tenant


@pytest.fixture
async def owner(database: Database) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database.owner_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def victim(store: EventStore) -> UUID:
    return await twenty_events(store)


async def as_tenant_then_rollback(
    conn: asyncpg.Connection, tenant: UUID, sql: str, *args: object
) -> None:
    """Run ``sql`` for ``tenant`` and always roll back (a missing guard must not do harm)."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
        await conn.execute(sql, *args)
    finally:
        await tx.rollback()


MUTATIONS = {
    "UPDATE": "UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1",
    "DELETE": "DELETE FROM {table} WHERE tenant_id = $1",
    "TRUNCATE": "TRUNCATE {table}",
}


def mutation(verb: str, table: str) -> tuple[str, tuple[object, ...]]:
    return MUTATIONS[verb].format(table=table), ()


# ---- append-only, for the app role and for the owner ---------------------------------


@pytest.mark.parametrize("table", LOG_TABLES)
@pytest.mark.parametrize("verb", ["UPDATE", "DELETE", "TRUNCATE"])
async def test_the_app_role_cannot_rewrite_the_log(
    pool: asyncpg.Pool, victim: UUID, table: str, verb: str
) -> None:
    sql = MUTATIONS[verb].format(table=table)
    args = () if verb == "TRUNCATE" else (victim,)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_tenant_then_rollback(conn, victim, sql, *args)


@pytest.mark.parametrize("table", LOG_TABLES)
@pytest.mark.parametrize("verb", ["UPDATE", "DELETE", "TRUNCATE"])
async def test_not_even_the_owner_can_rewrite_the_log(
    owner: asyncpg.Connection, victim: UUID, table: str, verb: str
) -> None:
    async with owner.transaction():
        await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(victim))
        assert await owner.fetchval(f"SELECT count(*) FROM {table}") > 0, "real rows targeted"
    sql = MUTATIONS[verb].format(table=table)
    args = () if verb == "TRUNCATE" else (victim,)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await as_tenant_then_rollback(owner, victim, sql, *args)


async def test_the_log_head_cannot_shrink_move_or_go_as_the_app_role(
    pool: asyncpg.Pool, victim: UUID
) -> None:
    async with pool.acquire() as conn:
        for sql in (
            "UPDATE tenant_log SET size = size - 1 WHERE tenant_id = $1",
            "UPDATE tenant_log SET size = 0 WHERE tenant_id = $1",
            "UPDATE tenant_log SET origin = origin || 'x' WHERE tenant_id = $1",
            "UPDATE tenant_log SET tenant_id = gen_random_uuid() WHERE tenant_id = $1",
            "DELETE FROM tenant_log WHERE tenant_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await as_tenant_then_rollback(conn, victim, sql, victim)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_tenant_then_rollback(conn, victim, "TRUNCATE tenant_log")


async def test_the_log_head_cannot_shrink_move_or_go_as_the_owner(
    owner: asyncpg.Connection, victim: UUID
) -> None:
    for sql, message in (
        ("UPDATE tenant_log SET size = size - 1 WHERE tenant_id = $1", "only grow"),
        ("UPDATE tenant_log SET origin = 'elsewhere' WHERE tenant_id = $1", "only grow"),
        ("DELETE FROM tenant_log WHERE tenant_id = $1", "refused"),
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=message):
            await as_tenant_then_rollback(owner, victim, sql, victim)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="refused"):
        await as_tenant_then_rollback(owner, victim, "TRUNCATE tenant_log")


async def test_the_app_role_has_only_select_and_insert_on_the_log_tables(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        for table in LOG_TABLES:
            granted = {
                privilege
                for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES")
                if await conn.fetchval(
                    "SELECT has_table_privilege(current_user, $1, $2)", table, privilege
                )
            }
            assert granted == {"SELECT", "INSERT"}, table


# ---- the rogue DBA ----------------------------------------------------------------------


async def as_rogue_dba(superuser: asyncpg.Connection, sql: str, *args: object) -> str:
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        status: str = await superuser.execute(sql, *args)
    return status


async def flip_a_data_byte(superuser: asyncpg.Connection, tenant: UUID) -> None:
    leaf: bytes = await superuser.fetchval(
        "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = 7", tenant
    )
    at = leaf.index(b'"event-07"') + 1
    changed = leaf[:at] + bytes([leaf[at] ^ 1]) + leaf[at + 1 :]
    assert changed != leaf and json.loads(changed)
    await as_rogue_dba(
        superuser,
        "UPDATE event_log SET leaf = $2 WHERE tenant_id = $1 AND seq = 7",
        tenant,
        changed,
    )


async def flip_a_byte_and_rehash(superuser: asyncpg.Connection, tenant: UUID) -> None:
    await flip_a_data_byte(superuser, tenant)
    await as_rogue_dba(
        superuser,
        "UPDATE event_log SET leaf_hash = sha256('\\x00'::bytea || leaf) "
        "WHERE tenant_id = $1 AND seq = 7",
        tenant,
    )


async def delete_seq_7(superuser: asyncpg.Connection, tenant: UUID) -> None:
    status = await as_rogue_dba(
        superuser, "DELETE FROM event_log WHERE tenant_id = $1 AND seq = 7", tenant
    )
    assert status == "DELETE 1"


async def swap_5_and_9(superuser: asyncpg.Connection, tenant: UUID) -> None:
    status = await as_rogue_dba(
        superuser,
        "UPDATE event_log e SET leaf = o.leaf, leaf_hash = o.leaf_hash, chain_hash = o.chain_hash "
        "FROM event_log o WHERE e.tenant_id = $1 AND o.tenant_id = $1 "
        "AND ((e.seq = 5 AND o.seq = 9) OR (e.seq = 9 AND o.seq = 5))",
        tenant,
    )
    assert status == "UPDATE 2"


async def truncate_the_tail(superuser: asyncpg.Connection, tenant: UUID) -> None:
    status = await as_rogue_dba(
        superuser, "DELETE FROM event_log WHERE tenant_id = $1 AND seq >= 15", tenant
    )
    assert status == "DELETE 6"


async def alter_a_merkle_node(superuser: asyncpg.Connection, tenant: UUID) -> None:
    # Level 4, index 0 covers seq 1..16 (smaller subtrees are not stored), so it is
    # checked when seq 16 closes it.
    status = await as_rogue_dba(
        superuser,
        "UPDATE merkle_node SET hash = sha256(hash) WHERE tenant_id = $1 AND level = 4 AND idx = 0",
        tenant,
    )
    assert status == "UPDATE 1"


async def delete_a_merkle_node(superuser: asyncpg.Connection, tenant: UUID) -> None:
    # Level 4, index 0 covers seq 1..16.
    status = await as_rogue_dba(
        superuser, "DELETE FROM merkle_node WHERE tenant_id = $1 AND level = 4 AND idx = 0", tenant
    )
    assert status == "DELETE 1"


async def alter_the_head_chain(superuser: asyncpg.Connection, tenant: UUID) -> None:
    status = await as_rogue_dba(
        superuser,
        "UPDATE tenant_log SET chain_hash = sha256(chain_hash) WHERE tenant_id = $1",
        tenant,
    )
    assert status == "UPDATE 1"


async def backdate_recorded_at(superuser: asyncpg.Connection, tenant: UUID) -> None:
    # recorded_at is an index column derived from the leaf's ts, like stream_id or seq.
    status = await as_rogue_dba(
        superuser,
        "UPDATE event_log SET recorded_at = recorded_at - interval '1 day' "
        "WHERE tenant_id = $1 AND seq = 7",
        tenant,
    )
    assert status == "UPDATE 1"


Tamper = Callable[[asyncpg.Connection, UUID], Awaitable[None]]


@pytest.mark.parametrize(
    ("tamper", "first_bad_seq", "reason"),
    [
        pytest.param(flip_a_data_byte, 7, "leaf hash", id="one byte of one leaf"),
        pytest.param(flip_a_byte_and_rehash, 7, "chain", id="a leaf and its leaf hash"),
        pytest.param(delete_seq_7, 7, "missing", id="a deleted event"),
        pytest.param(swap_5_and_9, 5, "seq", id="two leaves swapped"),
        pytest.param(truncate_the_tail, 15, "ends at seq 14", id="a truncated tail"),
        pytest.param(alter_a_merkle_node, 16, "Merkle node level 4 index 0", id="a Merkle node"),
        pytest.param(delete_a_merkle_node, 16, "Merkle node level 4", id="a deleted Merkle node"),
        pytest.param(alter_the_head_chain, 20, "chain", id="the head's chain hash"),
        pytest.param(backdate_recorded_at, 7, "", id="a backdated recorded_at column"),
    ],
)
async def test_a_rogue_dbas_edit_is_found_at_its_first_bad_seq(
    store: EventStore,
    pool: asyncpg.Pool,
    superuser: asyncpg.Connection,
    tamper: Tamper,
    first_bad_seq: int,
    reason: str,
) -> None:
    tenant = await twenty_events(store)
    assert (await verify_tenant(pool, tenant)).ok
    await tamper(superuser, tenant)
    report = await verify_tenant(pool, tenant)
    assert report.ok is False
    assert report.first_bad_seq == first_bad_seq, report
    assert report.size == SIZE
    assert isinstance(report.reason, str) and reason in report.reason, report.reason


async def test_an_untouched_log_verifies(store: EventStore, pool: asyncpg.Pool) -> None:
    tenant = await twenty_events(store)
    report = await verify_tenant(pool, tenant)
    log = await store.read_log(tenant)
    assert report == VerifyReport(
        tenant, SIZE, SIZE, ok=True, root=reference_root([e.leaf_hash for e in log])
    )


async def test_the_command_line_names_the_first_bad_seq_and_why(
    database: Database, store: EventStore, superuser: asyncpg.Connection
) -> None:
    tenant = await twenty_events(store)
    await delete_seq_7(superuser, tenant)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")},
        "STRONGROOM_DATABASE_URL": database.app_url,
        "STRONGROOM_OWNER_DATABASE_URL": database.owner_url,
        "STRONGROOM_CLI_DATABASE_URL": database.cli_url,
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [STRONGROOM, "verify", "--tenant", str(tenant), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["first_bad_seq"]) == (False, 7)
    assert report["reason"] == "event missing"


async def test_a_row_planted_beyond_the_head_is_reported_even_though_it_blocks_the_audit(
    database: Database, store: EventStore, superuser: asyncpg.Connection
) -> None:
    # The planted row takes the seq the next append needs, so the verification's own
    # audit event cannot be written: the report must still be shown (and say why not).
    tenant = await twenty_events(store)
    status = await as_rogue_dba(
        superuser,
        "INSERT INTO event_log (tenant_id, seq, stream_id, stream_version, event_id, "
        "event_type, recorded_at, leaf, leaf_hash, chain_hash) "
        "SELECT tenant_id, 21, stream_id, stream_version + 100, gen_random_uuid(), event_type, "
        "recorded_at, leaf, leaf_hash, chain_hash FROM event_log "
        "WHERE tenant_id = $1 AND seq = 20",
        tenant,
    )
    assert status == "INSERT 0 1"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")},
        "STRONGROOM_DATABASE_URL": database.app_url,
        "STRONGROOM_OWNER_DATABASE_URL": database.owner_url,
        "STRONGROOM_CLI_DATABASE_URL": database.cli_url,
    }
    result = subprocess.run(
        [STRONGROOM, "verify", "--tenant", str(tenant), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["first_bad_seq"]) == (False, 21)
    assert "beyond the head" in report["reason"]
    assert report["investigation_seq"] is None and report["audit_error"]
    assert "could not be recorded in the tenant's log" in result.stderr
    assert "Traceback" not in result.stderr
