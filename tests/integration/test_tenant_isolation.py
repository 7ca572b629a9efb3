"""Row-level security, seen from the application's own database role.

Every table with a ``tenant_id`` column, in ``public`` and in the schema of every
read model of ``projections.ALL``, is found in the catalogue, so a new table is covered (and must be
isolated) the day it is added.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pyotp
import pytest

from domain.access import Decision
from domain.connector import Connector
from domain.errors import UnauthenticatedError
from domain.permissions import Permission, permissions_of
from domain.roles import Role
from infra.access import AccessService
from infra.broker import Broker
from infra.credentials import keyed_hash, sha256
from infra.db import APP_ROLE, tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent
from infra.idempotency import StoredResponse, fingerprint
from infra.identity import Principal
from infra.keyring import Keyring
from infra.notary import Notary
from infra.notes import Signer
from infra.projector import ProjectionRunner
from infra.publisher import advance_cursor
from infra.services import IdentityServices, create_platform_token
from infra.vault import Vault
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
    "tenant_directory",
    "member_email",
    "invite",
    "account",
    "recovery_code",
    "session",
    "api_key",
    "auth_failure",
    "idempotency_key",
    "checkpoint",
    "ledger_key",
    "proj_members.members_view",
    "proj_members.position",
    "proj_audit_events.audit_events_view",
    "proj_audit_events.position",
    "approval_key",
    "grant_schedule",
    "proj_access.requests_view",
    "proj_access.history_view",
    "proj_access.grants_view",
    "proj_access.position",
    "vault_key",
    "connector_credential",
    "proj_connectors.connectors_view",
    "proj_connectors.position",
}
PLATFORM_TABLES = {
    "schema_migrations",
    "projection_registry",
    "platform_token",
    "platform_idempotency_key",
}
"""Tables without a tenant_id: the platform's own, none of them holding a tenant's data."""
GLOBAL_UNIQUE_KEYS = {"tenant_directory_slug": ["slug"]}
"""The one unique key that does not lead with tenant_id, and its columns: slugs are one
global namespace for logins by design (see infra/sql/0013_identity.sql). It is reached by
the app role only through tenant_by_slug()."""
CREDENTIAL_LOOKUPS = ("tenant_by_slug", "credential_tenant")
POLICY_TEXT = "NULLIF(current_setting('app.tenant_id'"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Credentials:
    """What a tenant's members hold, to look their tenant up by."""

    slug: str
    session_token: str
    api_key_hmac: bytes
    invite_token: str


@dataclass(frozen=True)
class Tenants:
    a: UUID
    b: UUID
    tables: list[str]
    credentials: dict[UUID, Credentials]


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


async def create_identity(services: IdentityServices) -> tuple[UUID, Credentials]:
    """A tenant made the way the API makes one, with rows in every identity table: its
    directory entry, an owner who joined (e-mail key, used invite, account), a session,
    confirmed TOTP with recovery codes, an API key, a failed login, an idempotency key."""
    slug = f"iso-{uuid4().hex[:12]}"
    email = f"owner@{slug}.example"
    created = await services.tenants.create(f"Isolation {slug}", slug, email)
    tenant: UUID = created.values["tenant_id"]
    invite_token: str = created.values["invite_token"]
    await services.members.accept_invite(invite_token, PASSWORD)
    login = await services.sessions.login(slug, email, PASSWORD, ip="192.0.2.1", user_agent="t")
    assert login.session is not None
    principal = await services.sessions.authenticate(login.session.token)
    enrollment = await services.sessions.start_mfa_enrollment(principal, issuer="Strongroom")
    code = pyotp.TOTP(enrollment["secret"]).at(services.ctx.now())
    confirmed = await services.sessions.confirm_mfa(principal, code)
    assert len(confirmed.values["recovery_codes"]) == 10
    issued = await services.api_keys.create(
        principal, name="isolation", scopes=frozenset({Permission.MEMBERS_READ}), expires_at=None
    )
    with pytest.raises(UnauthenticatedError):
        await services.sessions.login(
            slug, email, "not the password", ip="192.0.2.1", user_agent="t"
        )
    idempotency = services.idempotency
    print_ = fingerprint("POST", "/v1/members", b"{}")
    assert await idempotency.claim(tenant, principal.id, "isolation", print_) is None
    await idempotency.complete(tenant, principal.id, "isolation", StoredResponse(201, [], b"{}"))
    hmac = keyed_hash(services.ctx.api_key_secret, issued.values["key"])
    return tenant, Credentials(slug, login.session.token, hmac, invite_token)


async def fill(store: EventStore, pool: asyncpg.Pool, broker: Broker, tenant: UUID) -> None:
    """Give a tenant rows in the tables of the log: events, nodes, commands, keys, PII,
    publication cursor, read models and their positions, a projection failure, a notary
    key and a signed checkpoint."""
    head = 0
    for i in range(16):  # 16 more leaves close at least the first stored Merkle node
        member = uuid4()
        subject = f"member-{member}"
        result = await store.append(
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
        head = result.last_seq
    head = await record_audit_event(store, tenant)
    assert await advance_cursor(pool, tenant, 1, head)
    for projection in ALL_PROJECTIONS:
        await ProjectionRunner(pool, store, broker, projection).advance(tenant, head)
    async with tenant_transaction(pool, tenant) as conn:
        await conn.execute(
            "INSERT INTO projection_failure (tenant_id, projection, seq, event_type, error, "
            "attempts) VALUES ($1, 'members', 1, 'member.invited', 'ValueError', 1)",
            tenant,
        )
    signed = await Notary(pool, store, [Signer.generate("isolation.test")]).sign_tenant(tenant)
    assert signed.size is not None


async def record_audit_event(store: EventStore, tenant: UUID) -> int:
    """An audit event of another system, with personal data (a row of audit_events_view)."""
    stream = f"audit-{tenant}"
    data = {
        "actor": "svc",
        "action": "isolation.checked",
        "resource": "r/1",
        "outcome": "success",
        "occurred_at": "2026-11-24T10:00:00.000000Z",
        "metadata": {"n": 1},
    }
    result = await store.append(
        tenant,
        [
            NewEvent(
                stream=stream,
                type="audit.recorded",
                data=data,
                personal={"actor_email": "ext@example.com", "source_ip": "192.0.2.1"},
                subject=f"ext-isolation-{tenant}",
            )
        ],
        expected={stream: None},
        command_id=uuid4(),
        actor=Actor("api_key", str(uuid4())),
    )
    return result.last_seq


async def record_access(
    store: EventStore, pool: asyncpg.Pool, keyring: Keyring, tenant: UUID
) -> None:
    """A connector, an access request approved (signed with the tenant's new approval key)
    and executed: rows of approval_key, grant_schedule and the access read model."""
    connector = Connector.register("generic", "isolation", {})
    access = AccessService(pool, store, keyring, credentials=None)
    await access.repository.save(
        tenant, connector, command_id=uuid4(), actor=Actor("system", "isolation-test")
    )

    def principal(role: Role) -> Principal:
        return Principal(tenant, uuid4(), role, permissions_of(role), "session", uuid4())

    requester = principal(Role.REQUESTER)
    submitted = await access.submit(
        requester,
        connector_id=connector.id,
        resource="db/isolation",
        access_level="read",
        justification="the isolation test",
        duration=timedelta(hours=1),
        items=1,
    )
    request_id = submitted.values["request"].id
    await access.decide(principal(Role.APPROVER), request_id, Decision.APPROVE)
    await access.execute(requester, request_id)


async def record_vault(
    store: EventStore, pool: asyncpg.Pool, keyring: Keyring, tenant: UUID
) -> None:
    """A connector with a credential, rotated once: rows of vault_key,
    connector_credential and (after fill) the connectors read model."""
    owner = Principal(tenant, uuid4(), Role.OWNER, permissions_of(Role.OWNER), "session", uuid4())
    vault = Vault(pool, store, keyring)
    registered = await vault.register(owner, kind="generic", name="isolation", config={})
    connector_id = registered.values["connector_id"]
    await vault.set_credential(owner, connector_id, "api_key", "isolation-credential-1")
    await vault.set_credential(owner, connector_id, "api_key", "isolation-credential-2")


@pytest.fixture(scope="module")
async def tenants(
    store: EventStore, pool: asyncpg.Pool, keyring: Keyring, master_key: bytes, database: Database
) -> Tenants:
    services = IdentityServices.build(pool, store, keyring, master_key)
    broker = Broker("nats://127.0.0.1:1")  # never connected: advance() reads the store only
    credentials: dict[UUID, Credentials] = {}
    for _ in range(2):
        tenant, credentials[tenant] = await create_identity(services)
        await record_access(store, pool, keyring, tenant)
        await record_vault(store, pool, keyring, tenant)
        await fill(store, pool, broker, tenant)
    conn = await asyncpg.connect(database.app_url)
    try:
        tables = await tenant_tables(conn)
    finally:
        await conn.close()
    a, b = credentials
    return Tenants(a, b, tables, credentials)


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
        "ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "ORDER BY k.n)::text[] AS keys "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "WHERE i.indisunique AND c.oid = ANY($1::regclass[])",
        tenants.tables,
    )
    assert len({r["relname"] for r in rows}) == len(tenants.tables), "every table has a key"
    exceptions = {r["index"]: r["keys"] for r in rows if r["index"] in GLOBAL_UNIQUE_KEYS}
    assert exceptions == GLOBAL_UNIQUE_KEYS, "the documented exception is exactly that key"
    for r in rows:
        if r["index"] not in GLOBAL_UNIQUE_KEYS:
            assert r["keys"][0] == "tenant_id", (r["index"], r["keys"])


async def test_every_table_without_a_tenant_id_is_a_known_platform_table(
    superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    rows = await superuser.fetch(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname "
        "ELSE n.nspname || '.' || c.relname END AS name FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p')",
        ["public", *(p.schema for p in ALL_PROJECTIONS)],
    )
    assert {r["name"] for r in rows} - set(tenants.tables) == PLATFORM_TABLES


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


class _ForgedUuid(UUID):
    """A UUID whose text is SQL: tenant_transaction must not trust str()."""

    def __str__(self) -> str:
        return "x', true); SELECT set_config('app.tenant_id', 'y"


async def test_a_tenant_transaction_sets_the_canonical_tenant_whatever_uuid_comes_in(
    pool: asyncpg.Pool, tenants: Tenants
) -> None:
    forged = _ForgedUuid(int=tenants.a.int)
    async with tenant_transaction(pool, forged, readonly=True) as conn:
        assert await conn.fetchval("SELECT current_setting('app.tenant_id')") == str(
            UUID(int=tenants.a.int)
        )
        assert await conn.fetchval("SELECT count(*) FROM tenant_log") == 1
    with pytest.raises(TypeError):
        async with tenant_transaction(pool, str(tenants.a)):  # type: ignore[arg-type]
            pass


async def test_a_tenant_transaction_commits_on_success_and_rolls_back_on_error(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    read = "SELECT published_seq FROM relay_cursor WHERE tenant_id = $1"
    write = (
        "INSERT INTO relay_cursor (tenant_id, published_seq) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id) DO UPDATE SET published_seq = $2"
    )
    before = await superuser.fetchval(read, tenants.a)
    with pytest.raises(RuntimeError, match="after the write"):
        async with tenant_transaction(pool, tenants.a) as conn:
            await conn.execute(write, tenants.a, 987_654)
            raise RuntimeError("after the write")
    assert await superuser.fetchval(read, tenants.a) == before
    async with tenant_transaction(pool, tenants.a) as conn:
        await conn.execute(write, tenants.a, 987_654)
    assert await superuser.fetchval(read, tenants.a) == 987_654
    if before is None:  # as it was, for the other tests
        await superuser.execute("DELETE FROM relay_cursor WHERE tenant_id = $1", tenants.a)
    else:
        await superuser.execute(write, tenants.a, before)
    async with pool.acquire() as conn:  # the pool got its connection back, idle
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
    with pytest.raises(asyncpg.InterfaceError, match="manually started transaction"):
        async with tenant_transaction(pool, tenants.a) as conn, conn.transaction():
            pass  # nothing inside may commit the tenant transaction early


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
        unsigned = await conn.fetch("SELECT * FROM checkpoint_backlog(10, NULL)")
        parts = await conn.fetch("SELECT * FROM projection_partitions('members', false)")
        not_a_projection = conn.fetch("SELECT * FROM projection_partitions('event_log', false)")
        with pytest.raises(asyncpg.NoDataFoundError):
            await not_a_projection
    assert {r["tenant_id"] for r in parts} >= {tenants.a, tenants.b}
    assert all(set(r.keys()) == {"tenant_id", "size", "published_seq"} for r in backlog)
    assert all(set(r.keys()) == {"tenant_id", "size", "checkpoint_size"} for r in unsigned)
    assert set(parts[0].keys()) == {
        "tenant_id",
        "head",
        "position",
        "parked_seq",
        "parked_error",
        "parked_at",
        "updated_at",
    }


# ---- finding a credential's tenant before any tenant is set ------------------------------


async def test_the_credential_lookups_return_one_uuid_as_their_owner_with_a_pinned_path(
    superuser: asyncpg.Connection,
) -> None:
    owner = await superuser.fetchval(
        "SELECT relowner FROM pg_class WHERE oid = 'tenant_directory'::regclass"
    )
    for name in CREDENTIAL_LOOKUPS:
        [f] = await superuser.fetch(
            "SELECT prosecdef, proretset, prorettype::regtype::text AS returns, proowner, "
            "proconfig FROM pg_proc WHERE proname = $1 "
            "AND pronamespace = 'public'::regnamespace",
            name,
        )
        assert f["prosecdef"] and f["proowner"] == owner, name
        assert (f["proretset"], f["returns"]) == (False, "uuid"), name
        assert f["proconfig"] == ["search_path=public, pg_temp"], name


async def test_tenant_by_slug_gives_the_tenant_id_of_an_exact_slug_only(
    app_conn: asyncpg.Connection, tenants: Tenants
) -> None:
    for tenant in (tenants.a, tenants.b):
        slug = tenants.credentials[tenant].slug
        rows = await app_conn.fetch("SELECT * FROM tenant_by_slug($1)", slug)
        assert [list(r.items()) for r in rows] == [[("tenant_by_slug", tenant)]]
        for near in (slug.upper(), f"{slug} ", slug[:-1], f"{slug[:5]}%", "%", "_" * len(slug)):
            assert await app_conn.fetchval("SELECT tenant_by_slug($1)", near) is None, near
    assert await app_conn.fetchval("SELECT tenant_by_slug(NULL)") is None


async def test_credential_tenant_gives_the_tenant_id_of_an_exact_hash_of_its_kind_only(
    app_conn: asyncpg.Connection, tenants: Tenants
) -> None:
    sql = "SELECT credential_tenant($1, $2)"
    for tenant in (tenants.a, tenants.b):
        held = tenants.credentials[tenant]
        hashes = {
            "session": sha256(held.session_token),
            "apikey": held.api_key_hmac,
            "invite": sha256(held.invite_token),
        }
        for kind, digest in hashes.items():
            rows = await app_conn.fetch("SELECT * FROM credential_tenant($1, $2)", kind, digest)
            assert [list(r.items()) for r in rows] == [[("credential_tenant", tenant)]], kind
            flipped = digest[:-1] + bytes([digest[-1] ^ 1])
            for near in (digest[:-1], digest[:16], flipped, digest + b"\0", b""):
                assert await app_conn.fetchval(sql, kind, near) is None, (kind, near)
            for other in {"session", "apikey", "invite", "platform", "SESSION", ""} - {kind}:
                assert await app_conn.fetchval(sql, other, digest) is None, (kind, other)
        assert await app_conn.fetchval(sql, "session", None) is None
        # the clear-text token is not a key either
        assert await app_conn.fetchval(sql, "session", held.session_token.encode()) is None


async def test_no_security_definer_function_is_executable_by_public(
    superuser: asyncpg.Connection,
) -> None:
    rows = await superuser.fetch(
        "SELECT p.oid::regprocedure::text AS name, p.proacl IS NULL AS default_acl, "
        "EXISTS (SELECT 1 FROM aclexplode(p.proacl) x WHERE x.grantee = 0) AS public "
        "FROM pg_proc p WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace"
    )
    assert {r["name"].partition("(")[0] for r in rows} >= set(CREDENTIAL_LOOKUPS)
    for r in rows:
        # A NULL ACL is the default one, which lets PUBLIC execute.
        assert not r["default_acl"] and not r["public"], r["name"]


async def test_a_role_without_a_grant_cannot_call_the_credential_lookups(
    superuser: asyncpg.Connection, tenants: Tenants
) -> None:
    role = f"strongroom_probe_{uuid4().hex[:8]}"
    await superuser.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        await superuser.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        slug = tenants.credentials[tenants.a].slug
        for sql, args in (
            ("SELECT tenant_by_slug($1)", (slug,)),
            ("SELECT credential_tenant('session', $1)", (b"\0" * 32,)),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="denied for function"):
                async with superuser.transaction():
                    await superuser.execute(f"SET LOCAL ROLE {role}")
                    await superuser.fetchval(sql, *args)
    finally:
        await superuser.execute(f"REVOKE ALL ON SCHEMA public FROM {role}")
        await superuser.execute(f"DROP ROLE {role}")


# ---- the platform administrator's tokens ---------------------------------------------------


async def test_the_app_role_reads_platform_token_hashes_and_cannot_write_them(
    pool: asyncpg.Pool, superuser: asyncpg.Connection, database: Database
) -> None:
    owner = await asyncpg.connect(database.owner_url)
    try:
        token = await create_platform_token(owner, only_if_none=False)
    finally:
        await owner.close()
    assert token is not None
    before = await superuser.fetch("SELECT * FROM platform_token ORDER BY token_hash")
    async with pool.acquire() as conn:
        assert await privileges(conn, "platform_token") == {"SELECT"}
        assert await columns(conn, "platform_token") == ["token_hash", "created_at", "revoked_at"]
        hashes = [r["token_hash"] for r in await conn.fetch("SELECT * FROM platform_token")]
        assert sha256(token) in hashes
        assert all(len(h) == 32 for h in hashes) and token.encode() not in hashes
        for sql, args in (
            ("INSERT INTO platform_token (token_hash) VALUES ($1)", (sha256("srp_mine"),)),
            ("UPDATE platform_token SET revoked_at = NULL", ()),
            ("UPDATE platform_token SET token_hash = $1", (sha256("srp_mine"),)),
            ("DELETE FROM platform_token", ()),
            ("TRUNCATE platform_token", ()),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql, *args)
    assert await superuser.fetch("SELECT * FROM platform_token ORDER BY token_hash") == before
