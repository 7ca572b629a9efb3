"""The notary signs what the log holds, extends only its own past, and refuses a rewrite.

The rogue DBA is the superuser with triggers switched off for one transaction
(``SET LOCAL session_replication_role = replica``); each scenario has its own tenant.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from infra.db import tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent
from infra.ledger import consistency_proof, latest_checkpoint, ledger_keys
from infra.merkle import leaf_hash, reference_root, verify_consistency
from infra.notary import CheckpointDirectory, LedgerEvent, Notary
from infra.notes import Checkpoint, Signer, parse_note, verified_signers
from tests.conftest import LOG_HOST

ACTOR = Actor("system", "notary-test")


async def grow(store: EventStore, tenant: UUID, count: int) -> None:
    for i in range(count):
        await store.append(
            tenant,
            [NewEvent(stream=f"thing-{i % 3}", type="thing.noted", data={"n": i})],
            expected={f"thing-{i % 3}": None},
            command_id=uuid4(),
            actor=ACTOR,
        )


async def leaf_hashes(pool: asyncpg.Pool, tenant: UUID) -> list[bytes]:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT leaf FROM event_log WHERE tenant_id = $1 ORDER BY seq", tenant
        )
    return [leaf_hash(r["leaf"]) for r in rows]


async def log_types(pool: asyncpg.Pool, tenant: UUID) -> list[str]:
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT event_type FROM event_log WHERE tenant_id = $1 ORDER BY seq", tenant
        )
    return [r["event_type"] for r in rows]


@pytest.fixture
def key() -> Signer:
    return Signer.generate("notary.test")


@pytest.fixture
def directory(tmp_path: Path) -> CheckpointDirectory:
    return CheckpointDirectory(tmp_path / "checkpoints")


def notary(
    pool: asyncpg.Pool, store: EventStore, directory: CheckpointDirectory, *keys: Signer
) -> Notary:
    return Notary(pool, store, keys, directory=directory)


async def test_signs_the_log_as_it_is_and_extends_it_consistently(
    pool: asyncpg.Pool, store: EventStore, key: Signer, directory: CheckpointDirectory
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 5)
    first = await notary(pool, store, directory, key).sign_tenant(tenant)
    # The key's activation is the first thing the notary writes, and it is covered.
    assert (await log_types(pool, tenant))[-1] == LedgerEvent.KEY_ACTIVATED
    assert first.size == 6 and first.refused is None
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        stored = await latest_checkpoint(conn, tenant)
    assert stored is not None and stored.size == 6
    note = parse_note(stored.note)
    assert verified_signers(note, [key.verifier]) == [key.verifier]
    checkpoint = Checkpoint.parse_body(note.body)
    assert checkpoint.origin == f"{LOG_HOST}/t/{tenant}"
    assert checkpoint.root == reference_root(await leaf_hashes(pool, tenant))
    assert directory.read(tenant, 6) == stored.note
    assert not directory.path(tenant, 6).stat().st_mode & 0o222, "files are read-only"

    again = await notary(pool, store, directory, key).sign_tenant(tenant)
    assert again.size is None, "nothing new, nothing signed"

    await grow(store, tenant, 11)
    second = await notary(pool, store, directory, key).sign_tenant(tenant)
    assert second.size == 17
    hashes = await leaf_hashes(pool, tenant)
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        latest = await latest_checkpoint(conn, tenant)
        proof = await consistency_proof(conn, tenant, 6, 17)
    assert latest is not None and latest.root == reference_root(hashes)
    verify_consistency(6, 17, reference_root(hashes[:6]), latest.root, proof)


async def test_a_round_signs_every_tenant_that_grew(
    pool: asyncpg.Pool, store: EventStore, key: Signer, directory: CheckpointDirectory
) -> None:
    tenants = [uuid4() for _ in range(3)]
    for i, tenant in enumerate(tenants):
        await grow(store, tenant, i + 1)
    outcomes = await notary(pool, store, directory, key).sign_due()
    signed = {o.tenant_id: o.size for o in outcomes}
    assert [signed[t] for t in tenants] == [2, 3, 4]


async def rewrite_leaf(superuser: asyncpg.Connection, tenant: UUID, seq: int) -> None:
    """The DBA edits one event's bytes (and, to hide it, its stored leaf hash)."""
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        leaf = await superuser.fetchval(
            "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = $2", tenant, seq
        )
        forged = leaf.replace(b'"n":', b'"N":')
        assert forged != leaf
        await superuser.execute(
            "UPDATE event_log SET leaf = $3, leaf_hash = $4 WHERE tenant_id = $1 AND seq = $2",
            tenant,
            seq,
            forged,
            leaf_hash(forged),
        )


async def test_refuses_when_a_signed_event_was_rewritten(
    pool: asyncpg.Pool,
    store: EventStore,
    key: Signer,
    directory: CheckpointDirectory,
    superuser: asyncpg.Connection,
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 4)
    the_notary = notary(pool, store, directory, key)
    assert (await the_notary.sign_tenant(tenant)).size == 5
    await rewrite_leaf(superuser, tenant, 2)
    await grow(store, tenant, 2)

    outcome = await the_notary.sign_tenant(tenant)

    assert outcome.size is None and outcome.refused == "nodes"
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        latest = await latest_checkpoint(conn, tenant)
    assert latest is not None and latest.size == 5, "nothing signed"
    types = await log_types(pool, tenant)
    assert types[-1] == LedgerEvent.CHECKPOINT_REFUSED, "the alert is in the tenant's log"
    assert the_notary.refused == {tenant: "nodes"}
    assert (await the_notary.sign_tenant(tenant)).refused == "nodes"
    assert await log_types(pool, tenant) == types, "the alert is raised once"


async def test_refuses_a_new_event_whose_bytes_do_not_match_its_hash(
    pool: asyncpg.Pool,
    store: EventStore,
    key: Signer,
    directory: CheckpointDirectory,
    superuser: asyncpg.Connection,
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 3)
    assert (await notary(pool, store, directory, key).sign_tenant(tenant)).size == 4
    await grow(store, tenant, 3)
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        leaf = await superuser.fetchval(
            "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = 6", tenant
        )
        await superuser.execute(
            "UPDATE event_log SET leaf = $2 WHERE tenant_id = $1 AND seq = 6",
            tenant,
            leaf.replace(b'"n":', b'"N":'),
        )
    outcome = await notary(pool, store, directory, key).sign_tenant(tenant)
    assert outcome.refused == "leaf"


async def test_a_deleted_checkpoint_row_is_found_in_the_directory(
    pool: asyncpg.Pool,
    store: EventStore,
    key: Signer,
    directory: CheckpointDirectory,
    superuser: asyncpg.Connection,
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 2)
    assert (await notary(pool, store, directory, key).sign_tenant(tenant)).size == 3
    await grow(store, tenant, 2)
    assert (await notary(pool, store, directory, key).sign_tenant(tenant)).size == 5
    async with superuser.transaction():
        await superuser.execute("SET LOCAL session_replication_role = replica")
        await superuser.execute("DELETE FROM checkpoint WHERE tenant_id = $1 AND size = 5", tenant)
    await grow(store, tenant, 1)
    outcome = await notary(pool, store, directory, key).sign_tenant(tenant)
    assert outcome.refused == "missing"


async def test_key_rotation_overlaps_and_every_change_is_an_event(
    pool: asyncpg.Pool, store: EventStore, key: Signer, directory: CheckpointDirectory
) -> None:
    tenant = uuid4()
    new_key = Signer.generate("notary.test")
    await grow(store, tenant, 2)
    assert (await notary(pool, store, directory, key).sign_tenant(tenant)).size == 3

    # Overlap: both keys sign; the new key's activation is an event in the log.
    await grow(store, tenant, 1)
    assert (await notary(pool, store, directory, key, new_key).sign_tenant(tenant)).size == 5
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        overlap = await latest_checkpoint(conn, tenant)
    assert overlap is not None
    both = verified_signers(parse_note(overlap.note), [key.verifier, new_key.verifier])
    assert len(both) == 2

    # The old key goes: its retirement is an event, and its validity ends.
    await grow(store, tenant, 1)
    assert (await notary(pool, store, directory, new_key).sign_tenant(tenant)).size == 7
    types = await log_types(pool, tenant)
    assert types.count(LedgerEvent.KEY_ACTIVATED) == 2
    assert types.count(LedgerEvent.KEY_RETIRED) == 1
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        keys = {k.verifier.vkey: k for k in await ledger_keys(conn, tenant)}
        latest = await latest_checkpoint(conn, tenant)
    assert keys[key.verifier.vkey].valid_until is not None
    assert keys[new_key.verifier.vkey].valid_until is None
    assert latest is not None
    assert verified_signers(parse_note(latest.note), [key.verifier, new_key.verifier]) == [
        new_key.verifier
    ]


async def test_a_key_swap_without_overlap_is_refused(
    pool: asyncpg.Pool, store: EventStore, key: Signer, directory: CheckpointDirectory
) -> None:
    tenant = uuid4()
    await grow(store, tenant, 2)
    assert (await notary(pool, store, directory, key).sign_tenant(tenant)).size == 3
    await grow(store, tenant, 1)
    stranger = Signer.generate("notary.test")
    outcome = await notary(pool, store, directory, stranger).sign_tenant(tenant)
    assert outcome.refused == "last-checkpoint"
