"""The connector vault against the real PostgreSQL: sealing bound to its place, keysets,
rotation of credentials and of the tenant key, purging, and the one audited read."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import pytest

from domain.connector import Connector, ConnectorStatus
from domain.errors import ConflictError, NotFoundError
from domain.permissions import ROLE_PERMISSIONS
from domain.roles import Role
from infra.db import tenant_transaction
from infra.eventstore import Actor, EventStore, RecordedEvent
from infra.identity import Principal
from infra.keyring import DecryptionError, Keyring, open_sealed
from infra.services import IdentityServices
from infra.vault import (
    CREDENTIAL_USED,
    CredentialRejectedError,
    Secret,
    Validation,
    Vault,
    credential_aad,
    vault_stream,
)

EXECUTOR = Actor("system", "grant-executor")


class RefusesWrong:
    """A test validator: says no to any credential containing "wrong"."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def validate(self, connector: Connector, secret: Secret) -> Validation:
        self.seen.append(secret.reveal())
        if "wrong" in secret.reveal():
            return Validation(False, "the target answered 401")
        return Validation(True)


@dataclass
class World:
    vault: Vault
    services: IdentityServices
    owner: Principal
    validator: RefusesWrong

    @property
    def tenant_id(self) -> UUID:
        return self.owner.tenant_id


async def make_world(
    pool: asyncpg.Pool, store: EventStore, keyring: Keyring, master_key: bytes
) -> World:
    services = IdentityServices.build(pool, store, keyring, master_key)
    slug = f"vault-{uuid4().hex[:12]}"
    created = await services.tenants.create("Vault", slug, f"owner@{slug}.example")
    owner = Principal(
        tenant_id=created.values["tenant_id"],
        member_id=created.values["owner_member_id"],
        role=Role.OWNER,
        permissions=ROLE_PERMISSIONS[Role.OWNER],
        kind="session",
        credential_id=uuid4(),
    )
    vault = Vault(pool, store, keyring)
    validator = RefusesWrong()
    vault.validators.register("github", validator)
    return World(vault, services, owner, validator)


@pytest.fixture
async def world(
    pool: asyncpg.Pool, store: EventStore, keyring: Keyring, master_key: bytes
) -> World:
    return await make_world(pool, store, keyring, master_key)


async def connector_with(world: World, secret: str | None, kind: str = "github") -> UUID:
    written = await world.vault.register(world.owner, kind=kind, name="Acme", config={"org": "a"})
    connector_id: UUID = written.values["connector_id"]
    if secret is not None:
        await world.vault.set_credential(world.owner, connector_id, "api_key", secret)
    return connector_id


async def rows(superuser: asyncpg.Connection, connector_id: UUID) -> list[dict[str, object]]:
    found = await superuser.fetch(
        "SELECT version, state, vault_key_version, sealed FROM connector_credential "
        "WHERE connector_id = $1 ORDER BY version",
        connector_id,
    )
    return [dict(r) for r in found]


async def log(store: EventStore, tenant_id: UUID) -> list[RecordedEvent]:
    return await store.read_log(tenant_id, limit=10_000)


async def use(world: World, connector_id: UUID, tenant_id: UUID | None = None) -> Secret:
    return await world.vault.use_credential(
        tenant_id or world.tenant_id, connector_id, purpose="grant 1", actor=EXECUTOR
    )


# ---- sealing -----------------------------------------------------------------------------


async def test_a_credential_is_sealed_bound_to_tenant_connector_version_and_key_version(
    world: World, superuser: asyncpg.Connection, keyring: Keyring
) -> None:
    secret = f"ghp_{uuid4().hex}"
    connector_id = await connector_with(world, secret)
    [row] = await rows(superuser, connector_id)
    assert (row["version"], row["state"], row["vault_key_version"]) == (1, "active", 1)
    sealed = row["sealed"]
    assert isinstance(sealed, bytes) and secret.encode() not in sealed
    async with tenant_transaction(world.vault.pool, world.tenant_id) as conn:
        _, key = await world.vault._data_key(conn, world.tenant_id, 1)
    tenant = world.tenant_id
    assert open_sealed(key, sealed, credential_aad(tenant, connector_id, 1, 1)) == secret.encode()
    for aad in (
        credential_aad(uuid4(), connector_id, 1, 1),
        credential_aad(tenant, uuid4(), 1, 1),
        credential_aad(tenant, connector_id, 2, 1),
        credential_aad(tenant, connector_id, 1, 2),
    ):
        with pytest.raises(DecryptionError):
            open_sealed(key, sealed, aad)


async def test_a_ciphertext_pasted_onto_another_connectors_row_does_not_open(
    world: World, superuser: asyncpg.Connection
) -> None:
    a = await connector_with(world, "secret-of-a")
    b = await connector_with(world, "secret-of-b")
    [row_a] = await rows(superuser, a)
    await superuser.execute(
        "UPDATE connector_credential SET sealed = $2 WHERE connector_id = $1", b, row_a["sealed"]
    )
    with pytest.raises(DecryptionError):
        await use(world, b)
    assert (await use(world, a)).reveal() == "secret-of-a"


async def test_a_ciphertext_pasted_into_another_tenant_does_not_open(
    world: World,
    superuser: asyncpg.Connection,
    pool: asyncpg.Pool,
    store: EventStore,
    keyring: Keyring,
    master_key: bytes,
) -> None:
    other = await make_world(pool, store, keyring, master_key)
    a = await connector_with(world, "secret-of-a")
    b = await connector_with(other, "secret-of-b")
    [row_a] = await rows(superuser, a)
    await superuser.execute(
        "UPDATE connector_credential SET sealed = $2 WHERE connector_id = $1", b, row_a["sealed"]
    )
    with pytest.raises(DecryptionError):
        await use(other, b)
    with pytest.raises(NotFoundError):
        await use(other, a), "tenant B does not reach tenant A's connector"
    with pytest.raises(NotFoundError):
        await other.vault.set_credential(other.owner, a, "api_key", "overwrite")
    assert (await use(world, a)).reveal() == "secret-of-a"


# ---- the one audited read ----------------------------------------------------------------


async def test_use_credential_records_the_use_before_the_value_is_returned(
    world: World, store: EventStore
) -> None:
    secret = f"canary-{uuid4().hex}"
    connector_id = await connector_with(world, secret)
    before = len(await log(store, world.tenant_id))
    correlation = uuid4()
    value = await world.vault.use_credential(
        world.tenant_id,
        connector_id,
        purpose="grant access for grant 7",
        actor=EXECUTOR,
        correlation=correlation,
    )
    assert value.reveal() == secret
    assert secret not in repr(value) and secret not in str(value) and secret not in f"{value}"
    events = (await log(store, world.tenant_id))[before:]
    [used] = events
    connector = await world.vault.get(world.tenant_id, connector_id)
    assert used.stream == vault_stream(world.tenant_id)
    assert used.type == CREDENTIAL_USED
    assert dict(used.data) == {
        "connector_id": str(connector_id),
        "version": 1,
        "purpose": "grant access for grant 7",
        "fingerprint": connector.fingerprint,
    }
    assert (used.actor, used.correlation) == (EXECUTOR, correlation)
    assert secret.encode() not in used.leaf


async def test_a_read_that_fails_returns_nothing_and_records_nothing(
    world: World, store: EventStore, superuser: asyncpg.Connection
) -> None:
    connector_id = await connector_with(world, "value")
    await superuser.execute(
        "UPDATE connector_credential SET sealed = $2 WHERE connector_id = $1",
        connector_id,
        b"\x00" * 40,
    )
    before = len(await log(store, world.tenant_id))
    with pytest.raises(DecryptionError):
        await use(world, connector_id)
    assert len(await log(store, world.tenant_id)) == before


async def test_use_is_refused_without_a_credential_when_paused_and_during_a_rotation(
    world: World, store: EventStore
) -> None:
    bare = await connector_with(world, None)
    with pytest.raises(ConflictError, match="no credential"):
        await use(world, bare)
    paused = await connector_with(world, "value")
    await world.vault.pause(world.owner, paused)
    with pytest.raises(ConflictError, match="paused"):
        await use(world, paused)
    await world.vault.resume(world.owner, paused)
    assert (await use(world, paused)).reveal() == "value"
    rotating = await connector_with(world, "value")
    connector = await world.vault.get(world.tenant_id, rotating)
    connector.start_rotation()
    await world.vault._save(world.owner, connector)
    with pytest.raises(ConflictError, match="rotated"):
        await use(world, rotating)
    with pytest.raises(NotFoundError):
        await use(world, uuid4())
    uses = [e for e in await log(store, world.tenant_id) if e.type == CREDENTIAL_USED]
    assert len(uses) == 1, "only the one read that returned a value"


# ---- rotation ----------------------------------------------------------------------------


def connector_types(events: list[RecordedEvent], connector_id: UUID) -> list[str]:
    return [e.type for e in events if e.stream == f"connector-{connector_id}"]


async def test_a_rotation_validates_the_new_credential_and_purges_the_old_row(
    world: World, store: EventStore, superuser: asyncpg.Connection
) -> None:
    connector_id = await connector_with(world, "first-credential")
    first = await world.vault.get(world.tenant_id, connector_id)
    written = await world.vault.set_credential(world.owner, connector_id, "api_key", "second")
    assert written.position > 0
    assert world.validator.seen == ["second"], "the validator sees the new credential only"
    assert connector_types(await log(store, world.tenant_id), connector_id) == [
        "connector.registered",
        "connector.credential_set",
        "connector.rotation_started",
        "connector.paused",
        "connector.credential_staged",
        "connector.credential_validated",
        "connector.credential_purged",
        "connector.rotation_completed",
        "connector.resumed",
    ]
    [row] = await rows(superuser, connector_id)
    assert (row["version"], row["state"]) == (2, "active"), "version 1's row is deleted"
    connector = await world.vault.get(world.tenant_id, connector_id)
    assert connector.status is ConnectorStatus.ACTIVE and connector.credential_version == 2
    assert connector.fingerprint != first.fingerprint
    assert (await use(world, connector_id)).reveal() == "second"


async def test_a_rejected_credential_is_deleted_and_the_old_one_stays_in_use(
    world: World, store: EventStore, superuser: asyncpg.Connection
) -> None:
    connector_id = await connector_with(world, "good-one")
    with pytest.raises(CredentialRejectedError, match="the target answered 401"):
        await world.vault.set_credential(world.owner, connector_id, "api_key", "wrong-one")
    assert connector_types(await log(store, world.tenant_id), connector_id)[2:] == [
        "connector.rotation_started",
        "connector.paused",
        "connector.credential_staged",
        "connector.credential_rejected",
        "connector.resumed",
    ]
    [row] = await rows(superuser, connector_id)
    assert (row["version"], row["state"]) == (1, "active")
    assert (await use(world, connector_id)).reveal() == "good-one"
    await world.vault.set_credential(world.owner, connector_id, "api_key", "good-two")
    [row] = await rows(superuser, connector_id)
    assert row["version"] == 3, "the rejected version 2 is never reused"


async def test_a_validator_that_fails_or_repeats_the_secret_is_a_refusal_without_the_secret(
    world: World, store: EventStore
) -> None:
    class Broken:
        async def validate(self, connector: Connector, secret: Secret) -> Validation:
            raise RuntimeError(f"boom {secret.reveal()}")

    class Echoes:
        async def validate(self, connector: Connector, secret: Secret) -> Validation:
            return Validation(False, f"bad credential {secret.reveal()}")

    for kind, validator in (("broken", Broken()), ("echoes", Echoes())):
        world.vault.validators.register(kind, validator)
        connector_id = await connector_with(world, "old-value", kind=kind)
        secret = f"canary-{uuid4().hex}"
        with pytest.raises(CredentialRejectedError) as refused:
            await world.vault.set_credential(world.owner, connector_id, "api_key", secret)
        assert secret not in str(refused.value)
        for event in await log(store, world.tenant_id):
            assert secret.encode() not in event.leaf
        assert (await use(world, connector_id)).reveal() == "old-value"


async def test_an_interrupted_rotation_is_finished_by_the_next_call(
    world: World, store: EventStore, superuser: asyncpg.Connection
) -> None:
    connector_id = await connector_with(world, "v1")
    # A crash after staging: rotation started, version 2 staged, no verdict.
    vault = world.vault
    connector = await vault.get(world.tenant_id, connector_id)
    connector.start_rotation()
    await vault._save(world.owner, connector)
    version = connector.stage("api_key", await vault.fingerprint(world.tenant_id, "v2"))
    staged = vault._insert_credential(world.tenant_id, connector_id, version, "v2", "staged")
    await vault._save(world.owner, connector, staged)
    assert [r["state"] for r in await rows(superuser, connector_id)] == ["active", "staged"]
    await vault.set_credential(world.owner, connector_id, "api_key", "v3")
    [row] = await rows(superuser, connector_id)
    assert (row["version"], row["state"]) == (3, "active")
    types = connector_types(await log(store, world.tenant_id), connector_id)
    assert types[4:] == [
        "connector.credential_staged",
        "connector.credential_rejected",
        "connector.credential_staged",
        "connector.credential_validated",
        "connector.credential_purged",
        "connector.rotation_completed",
        "connector.resumed",
    ]
    assert (await use(world, connector_id)).reveal() == "v3"


async def test_concurrent_rotations_leave_one_credential_in_use(
    world: World, superuser: asyncpg.Connection
) -> None:
    connector_id = await connector_with(world, "v1")
    results = await asyncio.gather(
        *(
            world.vault.set_credential(world.owner, connector_id, "api_key", f"value-{i}")
            for i in range(4)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    active = [r for r in await rows(superuser, connector_id) if r["state"] == "active"]
    assert len(active) == 1
    connector = await world.vault.get(world.tenant_id, connector_id)
    if connector.rotating:  # every caller lost a race: the next call finishes the rotation
        await world.vault.set_credential(world.owner, connector_id, "api_key", "value-x")
    value = (await use(world, connector_id)).reveal()
    assert value in {"v1", "value-x", *(f"value-{i}" for i in range(4))}
    assert [r["state"] for r in await rows(superuser, connector_id)] == ["active"]


# ---- keysets and the tenant key ---------------------------------------------------------


async def test_a_new_vault_data_key_seals_new_credentials_and_old_ones_still_open(
    world: World, superuser: asyncpg.Connection, store: EventStore
) -> None:
    old = await connector_with(world, "under-key-1")
    written = await world.vault.rotate_data_key(world.owner, world.tenant_id)
    assert written.values == {"version": 2}
    new = await connector_with(world, "under-key-2")
    assert [r["vault_key_version"] for r in await rows(superuser, old)] == [1]
    assert [r["vault_key_version"] for r in await rows(superuser, new)] == [2]
    keys = await superuser.fetch(
        "SELECT version, is_primary FROM vault_key WHERE tenant_id = $1 ORDER BY version",
        world.tenant_id,
    )
    assert [(k["version"], k["is_primary"]) for k in keys] == [(1, False), (2, True)]
    assert (await use(world, old)).reveal() == "under-key-1"
    assert (await use(world, new)).reveal() == "under-key-2"
    rotated = [e for e in await log(store, world.tenant_id) if e.type == "vault.data_key_rotated"]
    assert [dict(e.data) for e in rotated] == [{"version": 2}]


async def test_tenant_key_rotation_rewraps_data_keys_and_leaves_every_ciphertext_alone(
    world: World, superuser: asyncpg.Connection, store: EventStore, master_key: bytes
) -> None:
    connector_id = await connector_with(world, "survives-rotation")
    await world.vault.rotate_data_key(world.owner, world.tenant_id)
    second = await connector_with(world, "under-vault-key-2")
    tenant = world.tenant_id
    first_events = await store.read_log(tenant, limit=10)
    emails = [e.personal.get("email") for e in first_events if e.type == "member.invited"]
    assert emails and emails[0], "the owner's invitation carries a personal value"
    async with tenant_transaction(world.vault.pool, tenant) as conn:
        email_key = await world.services.ctx.email_key(conn, tenant, str(emails[0]))

    def wrapped_query(table: str, column: str) -> str:
        return (
            f"SELECT {column}::text AS id, tenant_key_version, wrapped FROM {table} "
            "WHERE tenant_id = $1 ORDER BY 1"
        )

    subjects_before = await superuser.fetch(wrapped_query("subject_key", "subject_id"), tenant)
    vault_before = await superuser.fetch(wrapped_query("vault_key", "version"), tenant)
    sealed_before = await superuser.fetch(
        "SELECT connector_id, version, sealed FROM connector_credential WHERE tenant_id = $1 "
        "ORDER BY 1, 2",
        tenant,
    )
    pii_before = await superuser.fetch(
        "SELECT * FROM pii_value WHERE tenant_id = $1 ORDER BY 1, 2, 3", tenant
    )
    assert subjects_before and len(vault_before) == 2 and len(sealed_before) == 2

    written = await world.vault.rotate_tenant_key(world.owner)

    assert written.values == {
        "from_version": 1,
        "to_version": 2,
        "subject_keys": len(subjects_before),
        "vault_keys": 2,
    }
    subjects_after = await superuser.fetch(wrapped_query("subject_key", "subject_id"), tenant)
    vault_after = await superuser.fetch(wrapped_query("vault_key", "version"), tenant)
    for before, after in ((subjects_before, subjects_after), (vault_before, vault_after)):
        assert [r["id"] for r in before] == [r["id"] for r in after]
        for b, a in zip(before, after, strict=True):
            assert (b["tenant_key_version"], a["tenant_key_version"]) == (1, 2)
            assert a["wrapped"] != b["wrapped"], "re-wrapped under the new tenant key"
    sealed_after = await superuser.fetch(
        "SELECT connector_id, version, sealed FROM connector_credential WHERE tenant_id = $1 "
        "ORDER BY 1, 2",
        tenant,
    )
    assert sealed_after == sealed_before, "no credential ciphertext changed"
    pii_after = await superuser.fetch(
        "SELECT * FROM pii_value WHERE tenant_id = $1 ORDER BY 1, 2, 3", tenant
    )
    assert pii_after == pii_before, "no personal value ciphertext changed"
    keys = await superuser.fetch(
        "SELECT version, is_primary FROM tenant_key WHERE tenant_id = $1 ORDER BY 1", tenant
    )
    assert [(k["version"], k["is_primary"]) for k in keys] == [(1, False), (2, True)]

    # A process that starts after the rotation (no tenant key cached) opens everything.
    fresh = Keyring(master_key)
    pool = world.vault.pool
    after = World(Vault(pool, store, fresh), world.services, world.owner, world.validator)
    assert (await use(after, connector_id)).reveal() == "survives-rotation"
    assert (await use(after, second)).reveal() == "under-vault-key-2"
    reread = await EventStore(pool, fresh, log_host="t").read_log(tenant, limit=10)
    invited = [e.personal.get("email") for e in reread if e.type == "member.invited"]
    assert invited[0] == emails[0], "personal values open after the rotation"
    async with tenant_transaction(world.vault.pool, tenant) as conn:
        assert await world.services.ctx.email_key(conn, tenant, str(emails[0])) == email_key
    third = await connector_with(world, "after-rotation")
    assert (await use(world, third)).reveal() == "after-rotation"
    [event] = [e for e in await log(store, tenant) if e.type == "tenant.key_rotated"]
    assert dict(event.data) == {
        "from_version": 1,
        "to_version": 2,
        "subject_keys": len(subjects_before),
        "vault_keys": 2,
    }
    again = await world.vault.rotate_tenant_key(world.owner)
    assert (again.values["from_version"], again.values["to_version"]) == (2, 3)
    assert (await use(world, connector_id)).reveal() == "survives-rotation"
