"""Access requests over HTTP, on the real stack: submit, signed decisions, execution into a
grant, expiry by the worker; the rules that stop each shortcut; exactly one grant from 20
concurrent executions; signatures checked with openssl alone."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from api.positions import MIN_POSITION
from domain.connector import Connector
from domain.roles import Role
from infra.access import (
    AccessService,
    GrantExpiry,
    approval_key_stream,
    verify_decision,
)
from infra.eventstore import Actor, EventStore
from infra.keyring import Keyring
from infra.repository import EventRegistry, Repository
from infra.vault import Vault
from tests.conftest import Database
from tests.e2e.conftest import Api, Member, TenantWorld, create_tenant, invite_and_join, login

pytestmark = pytest.mark.usefixtures("generous_rate_limits", "remember_store")
STORE: list[EventStore] = []


@pytest.fixture(scope="module")
def remember_store(store: EventStore) -> None:
    STORE[:] = [store]


PROBLEM_JSON = "application/problem+json"


# ---- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(api: Api, pool: asyncpg.Pool, store: EventStore, keyring: Keyring) -> AccessService:
    """The access service on this test's event loop (the app's runs on the client's), on
    the app's clock: what a grant-expiry worker process would run."""
    return AccessService(pool, store, keyring, credentials=None, clock=api.clock)


async def connector(api: Api, world: TenantWorld, kind: str = "generic") -> str:
    """A connector of the tenant, registered over HTTP."""
    created = await api.request(
        "POST",
        "/v1/connectors",
        world.owner.token,
        json={"kind": kind, "name": f"{kind} {uuid4().hex[:6]}", "config": {"region": "eu"}},
    )
    if created.status_code == 404:  # the connectors API is not there: register directly
        registered = Connector.register(kind, f"{kind} {uuid4().hex[:6]}", {"region": "eu"})
        repository = Repository(STORE[0], EventRegistry([Connector]))
        await repository.save(
            UUID(world.tenant_id), registered, command_id=uuid4(), actor=Actor("system", "test")
        )
        return str(registered.id)
    assert created.status_code == 201, created.text
    return str(created.json()["connector_id"])


async def submit(api: Api, member: Member, connector_id: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "connector_id": connector_id,
        "resource": "db/prod/orders",
        "access_level": "read",
        "justification": "incident INC-1042: reading the orders table",
        "duration_seconds": 3600,
        **overrides,
    }
    response = await api.request("POST", "/v1/access-requests", member.token, json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    result["position"] = response.headers["strongroom-position"]
    return result


async def decide(api: Api, member: Member, request_id: str, decision: str = "approve") -> Any:
    return await api.request(
        "POST",
        f"/v1/access-requests/{request_id}/decisions",
        member.token,
        json={"decision": decision},
    )


async def execute(api: Api, member: Member, request_id: str) -> Any:
    return await api.request("POST", f"/v1/access-requests/{request_id}/execution", member.token)


def assert_problem(response: Any, status: int, detail: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    if detail is not None:
        assert detail in response.json()["detail"], response.json()


async def history(api: Api, token: str, request_id: str, position: str) -> dict[str, Any]:
    response = await api.request(
        "GET", f"/v1/access-requests/{request_id}", token, headers={MIN_POSITION: position}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def openssl_verifies(tmp: Path, pem: str, manifest_b64: str, signature_b64: str) -> bool:
    """An independent check: openssl with the published PEM key, nothing of ours."""
    (tmp / "key.pem").write_text(pem)
    (tmp / "manifest").write_bytes(base64.b64decode(manifest_b64))
    (tmp / "sig").write_bytes(base64.b64decode(signature_b64))
    done = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "key.pem",
            "-rawin",
            "-in",
            "manifest",
            "-sigfile",
            "sig",
        ],
        cwd=tmp,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


async def log_events(database: Database, tenant_id: str, stream: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database.app_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            return await conn.fetch(
                "SELECT seq, event_type, leaf FROM event_log WHERE tenant_id = $1 "
                "AND stream_id = $2 ORDER BY seq",
                UUID(tenant_id),
                stream,
            )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def world(api: Api, generous_rate_limits: None) -> TenantWorld:
    world = await create_tenant(
        api, with_roles=(Role.ADMIN, Role.APPROVER, Role.REQUESTER, Role.AUDITOR)
    )
    world.members[Role.READONLY] = await invite_and_join(api, world, Role.APPROVER)
    return world


def second_approver(world: TenantWorld) -> Member:
    """The second approver (kept under the READONLY key of the world's members)."""
    return world.members[Role.READONLY]


# ---- the whole flow -----------------------------------------------------------------------


async def test_request_two_signed_approvals_execution_grant_and_expiry(
    api: Api, world: TenantWorld, database: Database, tmp_path: Path, service: AccessService
) -> None:
    requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
    other, auditor = second_approver(world), world.members[Role.AUDITOR]
    connector_id = await connector(api, world)
    # admin access is rated high by default: two distinct approvers
    request = await submit(api, requester, connector_id, access_level="admin", duration_seconds=120)
    request_id = request["request_id"]
    assert (request["risk"], request["approvals_needed"]) == ("high", 2)
    assert request["justification"] == "incident INC-1042: reading the orders table"

    waiting = await api.request(
        "GET",
        "/v1/access-requests/waiting",
        approver.token,
        headers={MIN_POSITION: request["position"]},
    )
    assert request_id in [r["request_id"] for r in waiting.json()["items"]]

    first = await decide(api, approver, request_id)
    assert first.status_code == 201, first.text
    assert_problem(await execute(api, requester, request_id), 409, "needs 2 approvals and has 1")
    waiting = await api.request(
        "GET",
        "/v1/access-requests/waiting",
        approver.token,
        headers={MIN_POSITION: first.headers["strongroom-position"]},
    )
    assert request_id not in [r["request_id"] for r in waiting.json()["items"]]

    second = await decide(api, other, request_id)
    assert second.status_code == 201, second.text
    executed = await execute(api, requester, request_id)
    assert executed.status_code == 201, executed.text
    grant = executed.json()
    assert grant["status"] == "active" and grant["member_id"] == requester.member_id
    assert grant["access_level"] == "admin"

    # every decision verifies under the published key, with openssl alone
    keys = await api.request("GET", "/v1/access/approval-keys", auditor.token)
    assert keys.status_code == 200, keys.text
    [key] = keys.json()
    if shutil.which("openssl"):
        for decision in (first.json(), second.json()):
            assert decision["key_id"] == key["key_id"]
            assert openssl_verifies(
                tmp_path, key["public_key_pem"], decision["manifest"], decision["signature"]
            )
        forged = base64.b64encode(b"{}").decode()
        assert not openssl_verifies(
            tmp_path, key["public_key_pem"], forged, first.json()["signature"]
        )

    # the history rebuilds each signed manifest from what was recorded
    seen = await history(api, auditor.token, request_id, executed.headers["strongroom-position"])
    assert seen["request"]["status"] == "executed"
    assert seen["request"]["grant_id"] == grant["grant_id"]
    steps = [(h["type"], h["actor_id"]) for h in seen["history"]]
    assert steps == [
        ("submitted", requester.member_id),
        ("approved", approver.member_id),
        ("approved", other.member_id),
        ("executed", requester.member_id),
    ]
    decisions = [h for h in seen["history"] if h["type"] == "approved"]
    assert [d["manifest"] for d in decisions] == [
        first.json()["manifest"],
        second.json()["manifest"],
    ]
    assert all(d["signature_valid"] for d in decisions)

    active = await api.request(
        "GET",
        "/v1/grants",
        auditor.token,
        params={"active": "true", "member_id": requester.member_id},
    )
    assert [g["grant_id"] for g in active.json()["items"]] == [grant["grant_id"]]

    # the worker ends the grant when it runs out, and records it
    worker = GrantExpiry(service)
    api.clock.advance(timedelta(seconds=121))
    try:
        assert await worker.run_once() >= 1
    finally:
        api.clock.advance(timedelta(seconds=-121))
    grant_stream = f"grant-{grant['grant_id']}"
    events = await log_events(database, world.tenant_id, grant_stream)
    assert [e["event_type"] for e in events] == ["grant.issued", "grant.expired"]
    ended = await api.request(
        "GET",
        f"/v1/grants/{grant['grant_id']}",
        auditor.token,
        headers={MIN_POSITION: str(events[-1]["seq"])},
    )
    assert ended.json()["status"] == "expired"
    assert ended.json()["ended_at"] is not None
    assert await worker.run_once() == 0, "an ended grant is not expired twice"

    # the request's events in the log carry the signatures; the leaf has no justification
    request_events = await log_events(database, world.tenant_id, f"access_request-{request_id}")
    assert [e["event_type"] for e in request_events] == [
        "access_request.submitted",
        "access_request.approved",
        "access_request.approved",
        "access_request.executed",
    ]
    assert b"INC-1042" not in b"".join(bytes(e["leaf"]) for e in request_events)


async def test_twenty_concurrent_executions_issue_exactly_one_grant(
    api: Api, world: TenantWorld, database: Database
) -> None:
    requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
    request = await submit(api, requester, await connector(api, world))
    assert (await decide(api, approver, request["request_id"])).status_code == 201
    responses = await asyncio.gather(
        *(execute(api, requester, request["request_id"]) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code != 409]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.headers["content-type"].startswith(PROBLEM_JSON)
    events = await log_events(database, world.tenant_id, f"access_request-{request['request_id']}")
    assert [e["event_type"] for e in events].count("access_request.executed") == 1
    [winner] = [r for r in responses if r.status_code == 201]
    grants = await api.request(
        "GET",
        "/v1/grants",
        world.owner.token,
        params={"member_id": requester.member_id},
        headers={MIN_POSITION: winner.headers["strongroom-position"]},
    )
    ours = [g for g in grants.json()["items"] if g["request_id"] == request["request_id"]]
    assert len(ours) == 1


# ---- the rules, over HTTP -----------------------------------------------------------------


async def test_nobody_decides_on_their_own_request_or_twice(api: Api, world: TenantWorld) -> None:
    owner, approver = world.owner, world.members[Role.APPROVER]
    request = await submit(api, owner, await connector(api, world))
    assert_problem(
        await decide(api, owner, request["request_id"]),
        403,
        "a requester cannot decide on their own request",
    )
    assert (await decide(api, approver, request["request_id"])).status_code == 201
    assert_problem(await decide(api, approver, request["request_id"], "reject"), 409, "already")


async def test_only_the_requester_executes_edits_or_withdraws(api: Api, world: TenantWorld) -> None:
    requester, approver, admin = (
        world.members[Role.REQUESTER],
        world.members[Role.APPROVER],
        world.members[Role.ADMIN],
    )
    request = await submit(api, requester, await connector(api, world))
    rid = request["request_id"]
    assert (await decide(api, approver, rid)).status_code == 201
    assert_problem(await execute(api, admin, rid), 403, "only the requester")
    body = {
        "connector_id": request["connector_id"],
        "resource": "db/prod/other",
        "access_level": "read",
        "justification": "x",
        "duration_seconds": 60,
    }
    edited = await api.request("PUT", f"/v1/access-requests/{rid}", admin.token, json=body)
    assert_problem(edited, 403, "only the requester")
    withdrawn = await api.request("POST", f"/v1/access-requests/{rid}/withdraw", admin.token)
    assert_problem(withdrawn, 403, "only the requester")


async def test_an_edit_voids_earlier_approvals(api: Api, world: TenantWorld) -> None:
    requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
    request = await submit(api, requester, await connector(api, world))
    rid = request["request_id"]
    assert (await decide(api, approver, rid)).status_code == 201
    body = {
        "connector_id": request["connector_id"],
        "resource": "db/prod/orders",
        "access_level": "write",
        "justification": "needs to fix one row",
        "duration_seconds": 600,
    }
    edited = await api.request("PUT", f"/v1/access-requests/{rid}", requester.token, json=body)
    assert edited.status_code == 200, edited.text
    assert edited.json()["content_version"] == 2
    assert edited.json()["content_hash"] != request["content_hash"]
    assert_problem(await execute(api, requester, rid), 409, "edited since it was approved")
    again = await decide(api, approver, rid)
    assert again.status_code == 201, "a new version may be decided on again"
    assert (await execute(api, requester, rid)).status_code == 201


async def test_approvals_run_out_after_the_policys_ttl(api: Api, world: TenantWorld) -> None:
    world2 = await create_tenant(api, with_roles=(Role.APPROVER, Role.REQUESTER))
    policy = await api.request(
        "PUT", "/v1/access/policy", world2.owner.token, json={"approval_ttl_seconds": 300}
    )
    assert policy.status_code == 200, policy.text
    assert policy.json()["version"] == 1
    requester, approver = world2.members[Role.REQUESTER], world2.members[Role.APPROVER]
    request = await submit(api, requester, await connector(api, world2))
    assert request["approval_ttl_seconds"] == 300
    assert (await decide(api, approver, request["request_id"])).status_code == 201
    api.clock.advance(timedelta(seconds=301))
    try:
        requester.token = await login(api, world2.slug, requester.email)
        assert_problem(await execute(api, requester, request["request_id"]), 409, "expired")
    finally:
        api.clock.advance(timedelta(seconds=-301))


async def test_the_tenant_policy_rates_risk_and_sets_the_approvers_needed(
    api: Api, world: TenantWorld
) -> None:
    world2 = await create_tenant(api, with_roles=(Role.REQUESTER, Role.AUDITOR))
    body = {
        "sensitivity": [["payroll/*", "critical"], ["db/*", "medium"]],
        "access_floors": [["write", "medium"]],
        "two_approvers_at": "critical",
        "two_approvers_above_items": 100,
    }
    set_ = await api.request("PUT", "/v1/access/policy", world2.owner.token, json=body)
    assert set_.status_code == 200, set_.text
    read = await api.request("GET", "/v1/access/policy", world2.members[Role.AUDITOR].token)
    assert read.json()["sensitivity"] == body["sensitivity"]
    requester = world2.members[Role.REQUESTER]
    cid = await connector(api, world2)
    cases = [
        ({"resource": "payroll/2026"}, ("critical", 2)),
        ({"resource": "db/orders"}, ("medium", 1)),
        ({"resource": "wiki/page", "access_level": "write"}, ("medium", 1)),
        ({"resource": "wiki/page"}, ("low", 1)),
        ({"resource": "wiki/page", "items": 101}, ("critical", 2)),
    ]
    for overrides, expected in cases:
        made = await submit(api, requester, cid, **overrides)
        assert (made["risk"], made["approvals_needed"]) == expected, overrides
    bad = await api.request(
        "PUT", "/v1/access/policy", world2.owner.token, json={"default_risk": "extreme"}
    )
    assert bad.status_code == 400 and bad.headers["content-type"].startswith(PROBLEM_JSON)
    unchanged = await api.request("PUT", "/v1/access/policy", world2.owner.token, json=body)
    assert_problem(unchanged, 422, "unchanged")


async def test_a_rejection_ends_the_request(api: Api, world: TenantWorld) -> None:
    requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
    request = await submit(api, requester, await connector(api, world))
    rejected = await decide(api, approver, request["request_id"], "reject")
    assert rejected.status_code == 201 and rejected.json()["approval_id"] is None
    assert_problem(await execute(api, requester, request["request_id"]), 409, "rejected")
    seen = await history(
        api, world.owner.token, request["request_id"], rejected.headers["strongroom-position"]
    )
    assert seen["request"]["status"] == "rejected"
    assert seen["history"][-1]["type"] == "rejected" and seen["history"][-1]["signature_valid"]


async def test_a_revoked_grant_is_no_longer_active_and_expiry_leaves_it_alone(
    api: Api, world: TenantWorld, database: Database, service: AccessService
) -> None:
    requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
    request = await submit(api, requester, await connector(api, world), duration_seconds=60)
    assert (await decide(api, approver, request["request_id"])).status_code == 201
    grant = (await execute(api, requester, request["request_id"])).json()
    revoked = await api.request(
        "POST",
        f"/v1/grants/{grant['grant_id']}/revoke",
        approver.token,
        json={"reason": "incident closed"},
    )
    assert revoked.status_code == 204, revoked.text
    again = await api.request("POST", f"/v1/grants/{grant['grant_id']}/revoke", approver.token)
    assert_problem(again, 409, "revoked")
    api.clock.advance(timedelta(seconds=61))
    try:
        await GrantExpiry(service).run_once()
    finally:
        api.clock.advance(timedelta(seconds=-61))
    events = await log_events(database, world.tenant_id, f"grant-{grant['grant_id']}")
    assert [e["event_type"] for e in events] == ["grant.issued", "grant.revoked"]
    assert b"incident closed" not in bytes(events[-1]["leaf"]), "the reason is personal data"
    seen = await api.request(
        "GET",
        f"/v1/grants/{grant['grant_id']}",
        world.owner.token,
        headers={MIN_POSITION: revoked.headers["strongroom-position"]},
    )
    assert (seen.json()["status"], seen.json()["revoked_by"]) == ("revoked", approver.member_id)


async def test_bad_input_is_a_problem_and_writes_nothing(
    api: Api, world: TenantWorld, database: Database
) -> None:
    requester = world.members[Role.REQUESTER]
    cid = await connector(api, world)
    good = {
        "connector_id": cid,
        "resource": "db/x",
        "access_level": "read",
        "justification": "why",
        "duration_seconds": 60,
    }
    size_before = await log_size(database, world.tenant_id)
    cases = [
        ({**good, "connector_id": str(uuid4())}, 422, "no connector"),
        ({**good, "duration_seconds": 8 * 24 * 3600}, 422, "the duration is at most"),
        ({**good, "access_level": "Read Write"}, 422, "an access level is"),
        ({**good, "justification": "a\x00b"}, 422, "no control characters"),
        ({**good, "extra": 1}, 400, None),
        ({**good, "duration_seconds": 0}, 400, None),
        ({k: v for k, v in good.items() if k != "resource"}, 400, None),
    ]
    for body, status, detail in cases:
        response = await api.request("POST", "/v1/access-requests", requester.token, json=body)
        assert_problem(response, status, detail)
    for path in (f"/v1/access-requests/{uuid4()}", f"/v1/grants/{uuid4()}"):
        assert_problem(await api.request("GET", path, world.owner.token), 404)
    assert_problem(await execute(api, requester, str(uuid4())), 404)
    bad_decision = await api.request(
        "POST",
        f"/v1/access-requests/{uuid4()}/decisions",
        world.members[Role.APPROVER].token,
        json={"decision": "maybe"},
    )
    assert_problem(bad_decision, 400)
    assert await log_size(database, world.tenant_id) == size_before


async def log_size(database: Database, tenant_id: str) -> int:
    conn = await asyncpg.connect(database.app_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            size = await conn.fetchval(
                "SELECT size FROM tenant_log WHERE tenant_id = $1", UUID(tenant_id)
            )
    finally:
        await conn.close()
    return int(size)


async def test_tenant_b_objects_are_not_found_from_tenant_a(
    api: Api, world: TenantWorld, database: Database
) -> None:
    b = await create_tenant(api, with_roles=(Role.APPROVER, Role.REQUESTER))
    b_request = await submit(api, b.members[Role.REQUESTER], await connector(api, b))
    assert (await decide(api, b.members[Role.APPROVER], b_request["request_id"])).status_code == 201
    b_grant = (await execute(api, b.members[Role.REQUESTER], b_request["request_id"])).json()
    size = await log_size(database, b.tenant_id)
    owner = world.owner
    rid, gid = b_request["request_id"], b_grant["grant_id"]
    body = {
        "connector_id": b_request["connector_id"],
        "resource": "db/x",
        "access_level": "read",
        "justification": "why",
        "duration_seconds": 60,
    }
    calls = [
        ("GET", f"/v1/access-requests/{rid}", None),
        ("PUT", f"/v1/access-requests/{rid}", body),
        ("POST", f"/v1/access-requests/{rid}/withdraw", None),
        ("POST", f"/v1/access-requests/{rid}/execution", None),
        ("GET", f"/v1/grants/{gid}", None),
        ("POST", f"/v1/grants/{gid}/revoke", None),
    ]
    for method, path, json in calls:
        assert_problem(await api.request(method, path, owner.token, json=json), 404)
    decided = await decide(api, world.members[Role.APPROVER], rid)
    assert_problem(decided, 404)
    submitted = await api.request(
        "POST", "/v1/access-requests", world.members[Role.REQUESTER].token, json=body
    )
    assert_problem(submitted, 422, "no connector")
    lists = ["/v1/access-requests", "/v1/grants", "/v1/access-requests/waiting"]
    for path in lists:
        text = (await api.request("GET", path, owner.token)).text
        assert rid not in text and gid not in text and b.tenant_id not in text
    keys = (await api.request("GET", "/v1/access/approval-keys", owner.token)).json()
    b_keys = (await api.request("GET", "/v1/access/approval-keys", b.owner.token)).json()
    assert {k["key_id"] for k in keys}.isdisjoint({k["key_id"] for k in b_keys})
    assert await log_size(database, b.tenant_id) == size


# ---- provisioning with the connector's credential ------------------------------------------


class RecordingProvisioner:
    """A target system: remembers the credential it was handed; fails when told to, with a
    message that quotes the credential (as a careless client library might)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = False

    async def grant(self, connector: Any, grant: Any, credential: Any) -> str | None:
        return self._act("grant", grant, credential)

    async def revoke(self, connector: Any, grant: Any, credential: Any) -> str | None:
        return self._act("revoke", grant, credential)

    def _act(self, step: str, grant: Any, credential: Any) -> str:
        self.calls.append((step, str(grant.id), credential.reveal()))
        if self.fail:
            raise PermissionError(f"401 from target: token {credential.reveal()} refused")
        return f"{step} done for {grant.member_id}"


async def test_execution_and_expiry_provision_with_the_audited_credential(
    api: Api,
    world: TenantWorld,
    database: Database,
    pool: asyncpg.Pool,
    store: EventStore,
    keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = f"canary-credential-{uuid4().hex}"
    target = RecordingProvisioner()
    api.runtime.access.provisioners["provisioned"] = target
    worker_side = AccessService(
        pool,
        store,
        keyring,
        credentials=Vault(pool, store, keyring, clock=api.clock),
        clock=api.clock,
        provisioners={"provisioned": target},
    )
    try:
        cid = await connector(api, world, kind="provisioned")
        owner = await login(api, world.slug, world.owner.email)
        stored = await api.request(
            "PUT",
            f"/v1/connectors/{cid}/credential",
            owner,
            json={"kind": "api_key", "secret": canary},
        )
        assert stored.status_code == 204, stored.text
        requester, approver = world.members[Role.REQUESTER], world.members[Role.APPROVER]
        request = await submit(api, requester, cid, duration_seconds=60)
        assert (await decide(api, approver, request["request_id"])).status_code == 201
        executed = await execute(api, requester, request["request_id"])
        assert executed.status_code == 201, executed.text
        grant_id = executed.json()["grant_id"]
        assert target.calls == [("grant", grant_id, canary)]

        api.clock.advance(timedelta(seconds=61))
        try:
            assert await GrantExpiry(worker_side).run_once() >= 1
        finally:
            api.clock.advance(timedelta(seconds=-61))
        assert target.calls[-1] == ("revoke", grant_id, canary)
        ended = await wait_for_grant(api, world, grant_id, database)
        assert (ended["status"], ended["provisioned"], ended["deprovisioned"]) == (
            "expired",
            True,
            True,
        )

        # a failing target system: recorded on the grant, the message (and credential) not
        target.fail = True
        failing = await submit(api, requester, cid)
        assert (await decide(api, approver, failing["request_id"])).status_code == 201
        failed = await execute(api, requester, failing["request_id"])
        assert failed.status_code == 201, "the grant stands; the log says provisioning failed"
        assert failed.json()["provisioned"] is False
    finally:
        del api.runtime.access.provisioners["provisioned"]

    grant_events = await log_events(database, world.tenant_id, f"grant-{grant_id}")
    types = [e["event_type"] for e in grant_events]
    assert types == [
        "grant.issued",
        "grant.provisioned",
        "grant.expired",
        "grant.provisioned",
    ]
    uses = await log_events(database, world.tenant_id, f"vault-{world.tenant_id}")
    used = [e for e in uses if e["event_type"] == "vault.credential_used"]
    assert len(used) == 3, "every read of the credential is an audit event"
    grant_seqs = [e["seq"] for e in grant_events]
    assert used[0]["seq"] < grant_seqs[1] and used[1]["seq"] < grant_seqs[3], "used before"
    failed_events = await log_events(
        database, world.tenant_id, f"grant-{failed.json()['grant_id']}"
    )
    assert b"failed: PermissionError" in bytes(failed_events[-1]["leaf"])
    every_leaf = b"".join(bytes(e["leaf"]) for e in await log_events_all(database, world.tenant_id))
    assert canary.encode() not in every_leaf
    assert all(canary not in r.getMessage() for r in caplog.records)


async def wait_for_grant(
    api: Api, world: TenantWorld, grant_id: str, database: Database
) -> dict[str, Any]:
    """The grant as the read model shows it once it has every event of the grant."""
    events = await log_events(database, world.tenant_id, f"grant-{grant_id}")
    response = await api.request(
        "GET",
        f"/v1/grants/{grant_id}",
        world.owner.token,
        headers={MIN_POSITION: str(events[-1]["seq"])},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def log_events_all(database: Database, tenant_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database.app_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            return await conn.fetch(
                "SELECT leaf FROM event_log WHERE tenant_id = $1", UUID(tenant_id)
            )
    finally:
        await conn.close()


async def test_two_approvers_deciding_at_once_both_count(
    api: Api, world: TenantWorld, database: Database
) -> None:
    """Decisions race on the request's stream version; the loser is redone on the fresh
    request (each decision stands on its own), so neither approver sees a 409."""
    requester = world.members[Role.REQUESTER]
    request = await submit(api, requester, await connector(api, world), access_level="admin")
    first, second = await asyncio.gather(
        decide(api, world.members[Role.APPROVER], request["request_id"]),
        decide(api, second_approver(world), request["request_id"]),
    )
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert (await execute(api, requester, request["request_id"])).status_code == 201
    events = await log_events(database, world.tenant_id, f"access_request-{request['request_id']}")
    assert [e["event_type"] for e in events].count("access_request.approved") == 2


# ---- rotating the approval key ------------------------------------------------------------

ROTATION = "/v1/access/approval-keys/rotation"


async def test_a_rotated_approval_key_signs_from_then_on_and_what_it_signed_still_verifies(
    api: Api, tmp_path: Path, service: AccessService, store: EventStore
) -> None:
    a = await create_tenant(api, with_roles=(Role.APPROVER, Role.REQUESTER, Role.AUDITOR))
    b = await create_tenant(api, with_roles=(Role.APPROVER,))
    owner, approver = a.owner, a.members[Role.APPROVER]
    requester, auditor = a.members[Role.REQUESTER], a.members[Role.AUDITOR]
    tenant = UUID(a.tenant_id)
    connector_id = await connector(api, a)
    b_first = await api.request("POST", ROTATION, b.owner.token)
    assert b_first.status_code == 200, b_first.text
    b_keys = (await api.request("GET", "/v1/access/approval-keys", b.owner.token)).json()

    assert_problem(await api.request("POST", ROTATION, approver.token), 403)
    first = await api.request("POST", ROTATION, owner.token)  # no key yet: the first one
    assert first.status_code == 200, first.text
    assert first.json()["retired_key_id"] is None
    k1 = first.json()["key"]["key_id"]
    r1 = await submit(api, requester, connector_id)
    d1 = await decide(api, approver, r1["request_id"])
    assert d1.status_code == 201 and d1.json()["key_id"] == k1, d1.text

    # Another process rotates (``service``: its own pool and key cache, on this event
    # loop): the app still holds k1 unsealed, and must not sign with it.
    rotated = await service.keys.rotate(tenant, Actor("user", owner.member_id))
    k2 = rotated.key.key_id
    assert rotated.retired == k1 and k2 != k1
    r2 = await submit(api, requester, connector_id)
    d2 = await decide(api, approver, r2["request_id"])
    assert d2.status_code == 201 and d2.json()["key_id"] == k2, d2.text

    third = await api.request("POST", ROTATION, owner.token)
    assert third.status_code == 200 and third.json()["retired_key_id"] == k2, third.text
    k3 = third.json()["key"]["key_id"]
    keys = (await api.request("GET", "/v1/access/approval-keys", auditor.token)).json()
    assert [k["key_id"] for k in keys] == [k1, k2, k3]
    assert [k["retired_at"] is not None for k in keys] == [True, True, False]
    assert keys[2] == third.json()["key"]
    published = {k["key_id"]: k for k in keys}
    for decision, request in ((d1, r1), (d2, r2)):
        body = decision.json()
        key = published[body["key_id"]]
        assert verify_decision(
            base64.b64decode(key["public_key"]),
            base64.b64decode(body["manifest"]),
            base64.b64decode(body["signature"]),
        )
        if shutil.which("openssl"):
            assert openssl_verifies(
                tmp_path, key["public_key_pem"], body["manifest"], body["signature"]
            )
        seen = await history(
            api, auditor.token, request["request_id"], decision.headers["strongroom-position"]
        )
        [approved] = [h for h in seen["history"] if h["type"] == "approved"]
        assert approved["key_id"] == body["key_id"] and approved["signature_valid"] is True

    log = await store.read_stream(tenant, approval_key_stream(tenant))
    assert [(e.type, e.data["key_id"]) for e in log] == [
        ("approval_key.created", k1),
        ("approval_key.retired", k1),
        ("approval_key.created", k2),
        ("approval_key.retired", k2),
        ("approval_key.created", k3),
    ]
    assert log[3].data["successor"] == k3 and log[3].actor.id == owner.member_id
    # Tenant B's key did not move.
    assert (await api.request("GET", "/v1/access/approval-keys", b.owner.token)).json() == b_keys
