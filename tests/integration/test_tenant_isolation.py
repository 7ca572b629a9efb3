"""Row-level security, seen from the application's own database role.

Every table with a ``tenant_id`` column, in ``public`` and in the schema of every
read model of ``projections.ALL``, is found in the catalogue, so a new table is covered (and must be
isolated) the day it is added.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import pytest

from infra.broker import Broker
from infra.db import APP_ROLE, tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent
from infra.projector import ProjectionRunner
from infra.publisher import advance_cursor
from projections import ALL as ALL_PROJECTIONS
from tests.conftest import Database

EXPECTED_TENANT_TABLES = {
    "event_log",
    "tenant_log",
    "merkle_node",
    "command_log",
    "tenant_key",
    "subject_key",
    "pii_value",
    "relay_cursor",
    "projection_failure",
    "proj_members.members_view",
    "proj_members.position",
}
POLICY_TEXT = "NULLIF(current_setting('app.tenant_id'"


@dataclass(frozen=True)
class Tenants:
    a: UUID
    b: UUID
    tables: list[str]


async def tenant_tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname "
        "ELSE n.nspname || '.' || c.relname END AS name FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p') "
        "AND a.attname = 'tenant_id' AND NOT a.attisdropped ORDER BY 1",
        ["public", *(p.schema for p in ALL_PROJECTIONS)],
    )
    return [r["name"] for r in rows]


async def fill(store: EventStore, pool: asyncpg.Pool, broker: Broker, tenant: UUID) -> None:
    """Give a tenant rows in every tenant table: events, nodes, commands, keys, PII,
    publication cursor, read models and their positions, a projection failure."""
    for i in range(16):  # 16 leaves close the first stored Merkle node
        member = uuid4()
        subject = f"member-{member}"
        await store.append(
            tenant,
            [
                NewEvent(
                    stream=subject,
                    type="member.invited",
                    data={"tenant_id": str(tenant), "role": "readonly"},
                    personal={"email": f"m{i}@example.com"},
                    subject=subject,
                )
            ],
            expected={subject: 0},
            command_id=uuid4(),
            actor=Actor("system", "isolation-test"),
        )
    assert await advance_cursor(pool, tenant, 1, 16)
    for projection in ALL_PROJECTIONS:
        await ProjectionRunner(pool, store, broker, projection).advance(tenant, 16)
    async with tenant_transaction(pool, tenant) as conn:
        await conn.execute(
            "INSERT INTO projection_failure (tenant_id, projection, seq, event_type, error, "
            "attempts) VALUES ($1, 'members', 1, 'member.invited', 'ValueError', 1)",
            tenant,
        )


@pytest.fixture(scope="module")
async def tenants(store: EventStore, pool: asyncpg.Pool, database: Database) -> Tenants:
    a, b = uuid4(), uuid4()
    broker = Broker("nats://127.0.0.1:1")  # never connected: advance() reads the store only
    await fill(store, pool, broker, a)
    await fill(store, pool, broker, b)
    conn = await asyncpg.connect(database.app_url)
    try:
        tables = await tenant_tables(conn)
    finally:
        await conn.close()
    return Tenants(a, b, tables)


@pytest.fixture
async def app_conn(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the app role that has never set a tenant."""
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


async def privileges(conn: asyncpg.Connection, table: str) -> set[str]:
    found = set()
    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
        if await conn.fetchval(
            "SELECT has_table_privilege($1, $2, $3)", APP_ROLE, table, privilege
        ):
            found.add(privilege)
    return found


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [r["attname"] for r in rows]


async def count_rows(superuser: asyncpg.Connection, table: str, tenant: UUID) -> int:
    """Counted as the superuser, which row-level security does not restrict."""
    count: int = await superuser.fetchval(
        f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant
    )
    return count


# ---- the catalogue ------------------------------------------------------------------


async def test_the_tenant_tables_are_found_in_the_catalogue(tenants: Tenants) -> None:
    assert tenants.tables
    assert set(tenants.tables) >= EXPECTED_TENANT_TABLES


async def test_every_tenant_table_enables_and_forces_row_level_security(
    superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    rows = await superuser.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE oid = ANY($1::regclass[])",
        tenants.tables,
    )
    assert len(rows) == len(tenants.tables)
    for r in rows:
        assert r["relrowsecurity"] and r["relforcerowsecurity"], r["relname"]


async def test_every_tenant_table_has_exactly_one_fail_closed_policy_for_everyone(
    superuser: asyncpg.Connection, tenants: Tenants, database: Database
) -> None:
    owner = await superuser.fetchval(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'event_log'::regclass"
    )
    for table in tenants.tables:
        schema, _, name = table.rpartition(".")
        policies = await superuser.fetch(
            "SELECT policyname, permissive, roles, cmd, qual, with_check FROM pg_policies "
            "WHERE schemaname = $1 AND tablename = $2",
            schema or "public",
            name,
        )
        # Besides it, only the schema owner may have a read-only policy (platform scans).
        platform = [p for p in policies if p["policyname"] == "platform_read"]
        for p in platform:
            assert (p["cmd"], p["roles"], p["with_check"]) == ("SELECT", [owner], None), table
        policies = [p for p in policies if p["policyname"] != "platform_read"]
        assert len(policies) == 1, table
        [p] = policies
        assert (p["permissive"], p["cmd"], p["roles"]) == ("PERMISSIVE", "ALL", ["public"]), table
        for expression in (p["qual"], p["with_check"]):
            assert expression is not None, table
            assert expression.startswith("(tenant_id = "), (table, expression)
            assert POLICY_TEXT in expression, (table, expression)


async def test_the_app_role_is_no_superuser_bypasses_nothing_and_owns_nothing(
    superuser: asyncpg.Connection,
) -> None:
    role = await superuser.fetchrow(
        "SELECT oid, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = $1",
        APP_ROLE,
    )
    assert role is not None
    assert role["rolsuper"] is False
    assert role["rolbypassrls"] is False
    assert role["rolcreaterole"] is False and role["rolcreatedb"] is False
    owned = await superuser.fetch(
        "SELECT relname, relkind FROM pg_class WHERE relowner = $1", role["oid"]
    )
    assert owned == [], "the app role owns tables, views, sequences or indexes"
    functions = await superuser.fetch(
        "SELECT proname FROM pg_proc WHERE proowner = $1", role["oid"]
    )
    assert functions == []
    schemas = await superuser.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspowner = $1", role["oid"]
    )
    assert schemas == []
    memberships = await superuser.fetch(
        "SELECT roleid::regrole::text AS role FROM pg_auth_members WHERE member = $1", role["oid"]
    )
    assert memberships == [], "the app role could SET ROLE to another role"
    schemas_with_create = await superuser.fetch(
        "SELECT nspname FROM pg_namespace WHERE (nspname = 'public' OR nspname LIKE 'proj\\_%') "
        "AND has_schema_privilege($1, oid, 'CREATE')",
        APP_ROLE,
    )
    assert schemas_with_create == []


async def test_the_app_role_may_truncate_no_table(superuser: asyncpg.Connection) -> None:
    tables = await superuser.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'"
    )
    assert tables
    truncatable = [
        t["relname"]
        for t in tables
        if await superuser.fetchval(
            "SELECT has_table_privilege($1, $2::oid, 'TRUNCATE')", APP_ROLE, t["oid"]
        )
    ]
    assert truncatable == []


async def test_every_unique_key_of_a_tenant_table_leads_with_tenant_id(
    superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    rows = await superuser.fetch(
        "SELECT i.indexrelid::regclass::text AS index, c.oid::regclass::text AS relname, "
        "a.attname AS first "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indisunique AND c.oid = ANY($1::regclass[])",
        tenants.tables,
    )
    assert len({r["relname"] for r in rows}) == len(tenants.tables), "every table has a key"
    for r in rows:
        assert r["first"] == "tenant_id", r["index"]


async def test_views_run_with_the_callers_rights(superuser: asyncpg.Connection) -> None:
    views = await superuser.fetch(
        "SELECT relname, reloptions FROM pg_class "
        "WHERE relkind = 'v' AND relnamespace = 'public'::regnamespace"
    )
    for v in views:
        assert "security_invoker=true" in (v["reloptions"] or []), v["relname"]


# ---- cross-tenant access as the app role ------------------------------------------------


async def test_tenant_a_sees_none_of_tenant_bs_rows(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    for table in tenants.tables:
        assert await count_rows(superuser, table, tenants.b) > 0, table
        own = await count_rows(superuser, table, tenants.a)
        async with tenant_transaction(pool, tenants.a, readonly=True) as conn:
            theirs = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenants.b
            )
            visible = await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")
        assert theirs == 0, table
        assert [r["tenant_id"] for r in visible] == [tenants.a], table
        assert own > 0, table


async def test_tenant_a_updates_and_deletes_none_of_tenant_bs_rows(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    for table in tenants.tables:
        before = await count_rows(superuser, table, tenants.b)
        async with pool.acquire() as probe:
            granted = await privileges(probe, table)
        for verb, sql in (
            ("UPDATE", f"UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1"),
            ("DELETE", f"DELETE FROM {table} WHERE tenant_id = $1"),
        ):
            if verb in granted:
                async with tenant_transaction(pool, tenants.a) as conn:
                    status = await conn.execute(sql, tenants.b)
                assert status == f"{verb} 0", (table, status)
            else:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with tenant_transaction(pool, tenants.a) as conn:
                        await conn.execute(sql, tenants.b)
        assert await count_rows(superuser, table, tenants.b) == before, table


async def test_tenant_a_cannot_move_its_rows_to_tenant_b(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    for table in tenants.tables:
        own = await count_rows(superuser, table, tenants.a)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with tenant_transaction(pool, tenants.a) as conn:
                await conn.execute(f"UPDATE {table} SET tenant_id = $1", tenants.b)
        assert await count_rows(superuser, table, tenants.a) == own, table


async def test_tenant_a_cannot_insert_a_row_tagged_with_tenant_b(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    for table in tenants.tables:
        before = await count_rows(superuser, table, tenants.b)
        async with pool.acquire() as probe:
            assert "INSERT" in await privileges(probe, table), table
            names = await columns(probe, table)
        # A copy of one of A's own rows, retagged: only the policy can refuse it.
        copied = ", ".join("$1::uuid" if c == "tenant_id" else c for c in names)
        sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT {copied} FROM {table} LIMIT 1"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with tenant_transaction(pool, tenants.a) as conn:
                await conn.execute(sql, tenants.b)
        assert await count_rows(superuser, table, tenants.b) == before, table


async def test_without_a_tenant_nothing_is_visible(
    app_conn: asyncpg.Connection, pool: asyncpg.Pool, tenants: Tenants
) -> None:
    async with tenant_transaction(pool, tenants.a, readonly=True):
        pass
    for table in tenants.tables:
        async with app_conn.transaction(readonly=True):
            assert await app_conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # A pooled connection after a tenant transaction: the setting is '' now.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (
                None,
                "",
            )
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_without_a_tenant_nothing_can_be_inserted(
    app_conn: asyncpg.Connection, pool: asyncpg.Pool, tenants: Tenants
) -> None:
    async with tenant_transaction(pool, tenants.a, readonly=True) as conn:
        leaf = await conn.fetchrow(
            "SELECT * FROM event_log WHERE tenant_id = $1 AND seq = 1", tenants.a
        )
    assert leaf is not None
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await app_conn.execute(
            "INSERT INTO event_log (tenant_id, seq, stream_id, stream_version, event_id, "
            "event_type, recorded_at, leaf, leaf_hash, chain_hash) "
            "VALUES ($1, 99, 'thing-x', 1, $2, 'thing.noted', now(), $3, $4, $4)",
            tenants.a,
            uuid4(),
            leaf["leaf"],
            leaf["leaf_hash"],
        )


async def test_the_tenant_setting_does_not_outlive_its_transaction(
    pool: asyncpg.Pool, tenants: Tenants
) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenants.a))
            assert await conn.fetchval("SELECT count(*) FROM tenant_log") == 1
        assert await conn.fetchval("SELECT count(*) FROM tenant_log") == 0


async def tenant_functions(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    """Functions the app role may call whose first argument is a tenant id."""
    rows = await conn.fetch(
        "SELECT p.proname, p.pronargs FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace AND p.pronargs > 0 "
        "AND p.proargtypes[0] = 'uuid'::regtype "
        "AND has_function_privilege($1, p.oid, 'EXECUTE')",
        APP_ROLE,
    )
    return [(r["proname"], r["pronargs"]) for r in rows]


async def test_a_tenant_function_refuses_a_tenant_other_than_the_one_set(
    pool: asyncpg.Pool, app_conn: asyncpg.Connection, tenants: Tenants
) -> None:
    for name, nargs in await tenant_functions(app_conn):
        nulls = ", NULL" * (nargs - 1)
        sql = f"SELECT {name}($1::uuid{nulls})"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with tenant_transaction(pool, tenants.a) as conn:
                await conn.execute(sql, tenants.b)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with app_conn.transaction():
                await app_conn.execute(sql, tenants.b)


async def test_the_platform_functions_return_positions_and_no_content(
    pool: asyncpg.Pool, tenants: Tenants
) -> None:
    """The app role's only cross-tenant view: tenant ids, sizes and positions."""
    async with pool.acquire() as conn:
        backlog = await conn.fetch("SELECT * FROM relay_backlog('0 s', 10)")
        parts = await conn.fetch("SELECT * FROM projection_partitions('members', false)")
        not_a_projection = conn.fetch("SELECT * FROM projection_partitions('event_log', false)")
        with pytest.raises(asyncpg.NoDataFoundError):
            await not_a_projection
    assert {r["tenant_id"] for r in parts} >= {tenants.a, tenants.b}
    assert all(set(r.keys()) == {"tenant_id", "size", "published_seq"} for r in backlog)
    assert set(parts[0].keys()) == {
        "tenant_id",
        "head",
        "position",
        "parked_seq",
        "parked_error",
        "parked_at",
        "updated_at",
    }
