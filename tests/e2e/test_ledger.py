"""Checkpoints, keys, receipts and proofs over HTTP, checked as an auditor would.

Every proof the service hands out is checked with infra.merkle's verifiers AND
against hashes recomputed here from the leaves' bytes, so a proof cannot pass
by agreeing with a wrong tree.
"""

from __future__ import annotations

import base64
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

from domain.member import Member
from domain.permissions import Permission
from domain.roles import Role
from infra.eventstore import EventStore
from infra.merkle import (
    leaf_hash,
    reference_consistency,
    reference_inclusion,
    reference_root,
    verify_consistency,
    verify_inclusion,
)
from infra.notes import Checkpoint, Receipt, Signer, Verifier, parse_note, verified_signers
from tests.auditor_scripts import (
    accepted,
    fail_reason,
    run_verify_consistency,
    run_verify_receipt,
)
from tests.conftest import LOG_HOST
from tests.e2e.conftest import (
    NOTARY_KEY,
    Api,
    TenantWorld,
    create_tenant,
    invite_and_join,
    issue_api_key,
    sign_checkpoint,
)

pytestmark = pytest.mark.usefixtures("generous_rate_limits")
PROBLEM_JSON = "application/problem+json"


async def auditor_key(api: Api, world: TenantWorld) -> str:
    issued = await issue_api_key(api, world.members[Role.AUDITOR], [Permission.LEDGER_READ.value])
    return str(issued["key"])


async def leaf_bytes(api: Api, token: str, size: int) -> list[bytes]:
    leaves = []
    for seq in range(1, size + 1):
        response = await api.request("GET", f"/v1/events/{seq}/leaf", token)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        leaves.append(response.content)
    return leaves


@pytest.fixture(scope="module")
async def ledger(api: Api, pool: asyncpg.Pool, store: EventStore) -> tuple[TenantWorld, str, int]:
    """A tenant with an auditor, its log signed once."""
    world = await create_tenant(api, with_roles=(Role.AUDITOR, Role.READONLY))
    size = await sign_checkpoint(pool, store, world.tenant_id)
    return world, await auditor_key(api, world), size


async def test_the_notary_key_is_published_with_its_validity_and_pem(
    api: Api, ledger: tuple[TenantWorld, str, int]
) -> None:
    _world, token, _size = ledger
    response = await api.request("GET", "/v1/ledger/keys", token)
    assert response.status_code == 200, response.text
    (key,) = response.json()["keys"]
    verifier = Verifier.parse(key["vkey"])
    assert verifier == NOTARY_KEY.verifier
    assert key["key_id"] == NOTARY_KEY.verifier.key_id.hex()
    assert key["valid_until"] is None and key["activated_seq"] >= 1
    der = base64.b64decode("".join(key["public_key_pem"].splitlines()[1:-1]))
    assert der[-32:] == verifier.public_key


async def test_every_receipt_proves_its_leaf_under_the_signed_checkpoint(
    api: Api, ledger: tuple[TenantWorld, str, int]
) -> None:
    world, token, size = ledger
    note_text = (await api.request("GET", "/v1/ledger/checkpoint", token)).text
    note = parse_note(note_text)
    assert verified_signers(note, [NOTARY_KEY.verifier]) == [NOTARY_KEY.verifier]
    checkpoint = Checkpoint.parse_body(note.body)
    assert checkpoint.origin == f"{LOG_HOST}/t/{world.tenant_id}"
    assert checkpoint.size == size

    leaves = await leaf_bytes(api, token, size)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    assert reference_root(hashes) == checkpoint.root, "the checkpoint signs these leaves"
    for seq in range(1, size + 1):
        response = await api.request("GET", f"/v1/events/{seq}/receipt", token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert base64.b64decode(body["leaf"]) == leaves[seq - 1]
        receipt = Receipt.parse(body["receipt"])
        assert receipt.index == seq - 1 == body["index"]
        assert list(receipt.proof) == reference_inclusion(seq - 1, hashes)
        assert receipt.checkpoint.text() == note_text
        verify_inclusion(seq - 1, size, hashes[seq - 1], receipt.proof, checkpoint.root)
        text = await api.request("GET", f"/v1/events/{seq}/receipt.tlog-proof", token)
        assert text.status_code == 200 and text.text == body["receipt"]


async def test_consistency_between_checkpoints_and_the_list_of_checkpoints(
    api: Api, pool: asyncpg.Pool, store: EventStore
) -> None:
    world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    token = await auditor_key(api, world)
    first = await sign_checkpoint(pool, store, world.tenant_id)
    await invite_and_join(api, world, Role.READONLY)
    second = await sign_checkpoint(pool, store, world.tenant_id)
    assert second > first

    listed = await api.request("GET", "/v1/ledger/checkpoints", token)
    assert listed.status_code == 200, listed.text
    sizes = [c["size"] for c in listed.json()["items"]]
    assert sizes == [first, second]
    paged = await api.request("GET", "/v1/ledger/checkpoints", token, params={"after": first})
    assert [c["size"] for c in paged.json()["items"]] == [second]
    one = await api.request("GET", f"/v1/ledger/checkpoints/{first}", token)
    assert one.text == listed.json()["items"][0]["note"]

    hashes = [leaf_hash(leaf) for leaf in await leaf_bytes(api, token, second)]
    response = await api.request(
        "GET", "/v1/ledger/consistency", token, params={"from": first, "to": second}
    )
    assert response.status_code == 200, response.text
    proof = [base64.b64decode(line) for line in response.text.splitlines()]
    assert proof == reference_consistency(first, hashes)
    old = Checkpoint.parse_body(parse_note(one.text).body)
    new = Checkpoint.parse_body(parse_note(listed.json()["items"][1]["note"]).body)
    verify_consistency(first, second, old.root, new.root, proof)


async def test_a_receipt_for_an_event_beyond_the_checkpoint_says_so(
    api: Api, pool: asyncpg.Pool, store: EventStore
) -> None:
    world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    token = await auditor_key(api, world)
    unsigned = await api.request("GET", "/v1/events/1/receipt", token)
    assert unsigned.status_code == 404
    assert "no checkpoint" in unsigned.json()["detail"]
    size = await sign_checkpoint(pool, store, world.tenant_id)
    await invite_and_join(api, world, Role.READONLY)
    beyond = await api.request("GET", f"/v1/events/{size + 1}/receipt", token)
    assert beyond.status_code == 404
    assert "not covered by a checkpoint yet" in beyond.json()["detail"]
    nowhere = await api.request("GET", "/v1/events/999999/receipt", token)
    assert nowhere.status_code == 404
    assert "no event at seq 999999" in nowhere.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/events/0/receipt", {}, 400),
        ("/v1/events/-1/leaf", {}, 400),
        ("/v1/events/x/receipt", {}, 404),
        ("/v1/ledger/consistency", {"from": "5", "to": "2"}, 400),
        ("/v1/ledger/consistency", {"from": "0", "to": "2"}, 400),
        ("/v1/ledger/consistency", {"from": "1"}, 400),
        ("/v1/ledger/consistency", {"from": "1", "to": "99999999"}, 404),
        ("/v1/ledger/checkpoints", {"after": "-1"}, 400),
        ("/v1/ledger/checkpoints", {"limit": "0"}, 400),
        ("/v1/ledger/checkpoints/3", {}, 404),
        ("/v1/ledger/checkpoints/0", {}, 400),
        ("/v1/events/9223372036854775808/receipt", {}, 400),
        ("/v1/events/9223372036854775808/leaf", {}, 400),
        ("/v1/ledger/consistency", {"from": "1", "to": "9223372036854775808"}, 400),
    ],
)
async def test_bad_ledger_requests_get_a_problem(
    api: Api, ledger: tuple[TenantWorld, str, int], path: str, params: dict[str, str], status: int
) -> None:
    _world, token, _size = ledger
    response = await api.request("GET", path, token, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


async def test_a_log_position_never_reaches_another_tenants_log(
    api: Api, pool: asyncpg.Pool, store: EventStore, ledger: tuple[TenantWorld, str, int]
) -> None:
    """Positions are per tenant: A's seq 1 is A's event under A's origin; a position A's log
    does not have is 404 even when B's log has it, and A's checkpoints are A's alone."""
    b_world, b_token, b_size = ledger
    a_world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    a_token = await auditor_key(api, a_world)
    a_size = await sign_checkpoint(pool, store, a_world.tenant_id)
    assert a_size < b_size, "B's log is longer, so B has positions A lacks"

    a_receipt = (await api.request("GET", "/v1/events/1/receipt", a_token)).json()
    origin = Checkpoint.parse_body(Receipt.parse(a_receipt["receipt"]).checkpoint.body).origin
    assert origin == f"{LOG_HOST}/t/{a_world.tenant_id}"
    assert b_world.tenant_id not in a_receipt["receipt"]
    for path in (f"/v1/events/{b_size}/receipt", f"/v1/events/{b_size}/leaf"):
        response = await api.request("GET", path, a_token)
        assert response.status_code == 404, (path, response.text)
    consistency = await api.request(
        "GET", "/v1/ledger/consistency", a_token, params={"from": 1, "to": b_size}
    )
    assert consistency.status_code == 404
    missing = await api.request("GET", f"/v1/ledger/checkpoints/{b_size}", a_token)
    assert missing.status_code == 404
    listed = await api.request("GET", "/v1/ledger/checkpoints", a_token)
    assert [c["size"] for c in listed.json()["items"]] == [a_size]
    assert b_token != a_token


async def test_receipts_still_verify_after_a_data_subject_is_shredded(
    api: Api, pool: asyncpg.Pool, store: EventStore
) -> None:
    world = await create_tenant(api, with_roles=(Role.AUDITOR, Role.READONLY))
    token = await auditor_key(api, world)
    size = await sign_checkpoint(pool, store, world.tenant_id)
    before = [
        (await api.request("GET", f"/v1/events/{seq}/receipt", token)).json()
        for seq in range(1, size + 1)
    ]
    subject = Member.stream_for(UUID(world.members[Role.READONLY].member_id))
    assert await store.shred_subject(UUID(world.tenant_id), subject) >= 1

    checkpoint = Checkpoint.parse_body(parse_note(before[0]["receipt"].split("\n\n", 1)[1]).body)
    for old in before:
        seq = old["seq"]
        response = await api.request("GET", f"/v1/events/{seq}/receipt", token)
        assert response.json() == old, "leaves hold ciphertext hashes: nothing changed"
        receipt = Receipt.parse(response.json()["receipt"])
        leaf = base64.b64decode(response.json()["leaf"])
        verify_inclusion(seq - 1, size, leaf_hash(leaf), receipt.proof, checkpoint.root)


# ---- the auditor's openssl-only scripts on what the service serves ------------------------


async def test_the_openssl_scripts_accept_the_services_receipts_and_reject_tampered_copies(
    api: Api, pool: asyncpg.Pool, store: EventStore, tmp_path: Path
) -> None:
    world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    token = await auditor_key(api, world)
    first = await sign_checkpoint(pool, store, world.tenant_id)
    await invite_and_join(api, world, Role.READONLY)
    second = await sign_checkpoint(pool, store, world.tenant_id)
    (key,) = (await api.request("GET", "/v1/ledger/keys", token)).json()["keys"]
    pem, name = key["public_key_pem"], key["name"]
    origin = f"{LOG_HOST}/t/{world.tenant_id}"

    for seq in (1, first, second):
        leaf = (await api.request("GET", f"/v1/events/{seq}/leaf", token)).content
        receipt = (await api.request("GET", f"/v1/events/{seq}/receipt.tlog-proof", token)).text
        assert accepted(run_verify_receipt(tmp_path, leaf, receipt, pem, name, origin))
    tampered_leaf = leaf[:-2] + bytes([leaf[-2] ^ 1]) + leaf[-1:]
    assert fail_reason(run_verify_receipt(tmp_path, tampered_leaf, receipt, pem, name, origin))
    other_pem = Signer.generate(name).verifier.pem
    assert fail_reason(run_verify_receipt(tmp_path, leaf, receipt, other_pem, name, origin))
    other_origin = f"{LOG_HOST}/t/{uuid4()}"
    assert fail_reason(run_verify_receipt(tmp_path, leaf, receipt, pem, name, other_origin))

    old = (await api.request("GET", f"/v1/ledger/checkpoints/{first}", token)).text
    new = (await api.request("GET", "/v1/ledger/checkpoint", token)).text
    proof = (
        await api.request(
            "GET", "/v1/ledger/consistency", token, params={"from": first, "to": second}
        )
    ).text
    assert accepted(run_verify_consistency(tmp_path, old, new, proof, pem, name, origin))
    assert fail_reason(run_verify_consistency(tmp_path, new, old, proof, pem, name, origin))
