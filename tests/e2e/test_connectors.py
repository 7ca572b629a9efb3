"""Connectors and their credentials over HTTP (issue #7, the vault).

The whole lifecycle through the routes, with a test validator that refuses one
value; credentials are write-only (canaries never show up in a response, a log
record, an event, a column of the tenant's log or a read model); tenant A
reaching for tenant B's connectors gets 404 and changes nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import pytest

from domain.connector import Connector
from domain.roles import Role
from infra.eventstore import Actor, RecordedEvent
from infra.vault import Secret, Validation
from tests.conftest import Database
from tests.e2e.conftest import Api, TenantWorld, create_tenant, login
from tests.e2e.test_auth_security import _every_logger_into, _record_text

pytestmark = pytest.mark.usefixtures("generous_rate_limits")
T = TypeVar("T")
KIND = "e2e-target"
REFUSED_MARK = "refuse-me"
PROBLEM_JSON = "application/problem+json"


class RefusesMarked:
    """The test validator: refuses a credential containing REFUSED_MARK, as a target
    system answering 401 would."""

    async def validate(self, connector: Connector, secret: Secret) -> Validation:
        if REFUSED_MARK in secret.reveal():
            return Validation(False, "the target system answered 401")
        return Validation(True)


@pytest.fixture(scope="module", autouse=True)
def test_validator(api: Api) -> None:
    api.runtime.vault.validators.register(KIND, RefusesMarked())


def _on_app_loop(api: Api, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` where the app's pool and event store live (the client's portal)."""
    return api.client.blocking_portal.call(work)


def _events(api: Api, tenant_id: str) -> list[RecordedEvent]:
    async def read() -> list[RecordedEvent]:
        return await api.runtime.store.read_log(UUID(tenant_id), limit=10_000)

    return _on_app_loop(api, read)


def _use(api: Api, tenant_id: str, connector_id: str) -> Secret:
    async def use() -> Secret:
        return await api.runtime.vault.use_credential(
            UUID(tenant_id), UUID(connector_id), purpose="e2e", actor=Actor("system", "e2e")
        )

    return _on_app_loop(api, use)


def assert_problem(response: Any, status: int, detail: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    if detail is not None:
        assert detail in response.json()["detail"], response.json()


async def read(api: Api, token: str, connector_id: str, position: str) -> dict[str, Any]:
    response = await api.request(
        "GET",
        f"/v1/connectors/{connector_id}",
        token,
        headers={"Strongroom-Min-Position": position},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(api: Api, world: TenantWorld, **body: Any) -> tuple[str, str]:
    payload = {"kind": KIND, "name": "Target", "config": {"org": "acme"}} | body
    response = await api.request("POST", "/v1/connectors", world.owner.token, json=payload)
    assert response.status_code == 201, response.text
    return response.json()["connector_id"], response.headers["strongroom-position"]


async def set_credential(
    api: Api, world: TenantWorld, connector_id: str, secret: str, kind: str = "api_key"
) -> Any:
    return await api.request(
        "PUT",
        f"/v1/connectors/{connector_id}/credential",
        world.owner.token,
        json={"kind": kind, "secret": secret},
    )


# ---- the lifecycle -----------------------------------------------------------------------


async def test_a_connector_lives_through_settings_pauses_and_credential_rotations(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=(Role.REQUESTER, Role.AUDITOR))
    owner = world.owner.token
    connector_id, position = await register(api, world, config={"org": "acme", "teams": 2})
    view = await read(api, world.members[Role.REQUESTER].token, connector_id, position)
    assert {k: view[k] for k in ("kind", "name", "config", "status", "rotating")} == {
        "kind": KIND,
        "name": "Target",
        "config": {"org": "acme", "teams": 2},
        "status": "active",
        "rotating": False,
    }
    assert view["credential_version"] is None and view["fingerprint"] is None

    path = f"/v1/connectors/{connector_id}"
    changed = await api.request(
        "PUT", f"{path}/config", owner, json={"config": {"org": "acme-labs"}}
    )
    assert changed.status_code == 204, changed.text
    view = await read(api, owner, connector_id, changed.headers["strongroom-position"])
    assert view["config"] == {"org": "acme-labs"}

    paused = await api.request("POST", f"{path}/pause", owner)
    assert paused.status_code == 204, paused.text
    assert_problem(await api.request("POST", f"{path}/pause", owner), 409, "already paused")
    view = await read(api, owner, connector_id, paused.headers["strongroom-position"])
    assert view["status"] == "paused"
    resumed = await api.request("POST", f"{path}/resume", owner)
    assert resumed.status_code == 204, resumed.text
    assert_problem(await api.request("POST", f"{path}/resume", owner), 409, "not paused")

    first = await set_credential(api, world, connector_id, "first-credential")
    assert first.status_code == 204 and first.content == b"", first.text
    view = await read(api, owner, connector_id, first.headers["strongroom-position"])
    assert (view["credential_kind"], view["credential_version"]) == ("api_key", 1)
    assert view["fingerprint"].startswith("hmac-sha256:") and len(view["fingerprint"]) == 28
    assert view["rotated_at"] is not None
    first_fingerprint = view["fingerprint"]

    second = await set_credential(api, world, connector_id, "second-credential", "oauth_token")
    assert second.status_code == 204, second.text
    view = await read(api, owner, connector_id, second.headers["strongroom-position"])
    assert (view["credential_kind"], view["credential_version"], view["status"]) == (
        "oauth_token",
        2,
        "active",
    )
    assert view["fingerprint"] != first_fingerprint

    refused = await set_credential(api, world, connector_id, f"{REFUSED_MARK}-third")
    assert_problem(refused, 422, "the target system answered 401")
    assert _use(api, world.tenant_id, connector_id).reveal() == "second-credential"

    await api.request("POST", f"{path}/pause", owner)
    assert_problem(await set_credential(api, world, connector_id, "while-paused"), 409, "resume it")
    last = await api.request("POST", f"{path}/resume", owner)
    view = await read(api, owner, connector_id, last.headers["strongroom-position"])
    assert (view["credential_version"], view["status"], view["rotating"]) == (2, "active", False)

    types = [
        e.type for e in _events(api, world.tenant_id) if e.stream == f"connector-{connector_id}"
    ]
    assert types == [
        "connector.registered",
        "connector.config_changed",
        "connector.paused",
        "connector.resumed",
        "connector.credential_set",
        "connector.rotation_started",
        "connector.paused",
        "connector.credential_staged",
        "connector.credential_validated",
        "connector.credential_purged",
        "connector.rotation_completed",
        "connector.resumed",
        "connector.rotation_started",
        "connector.paused",
        "connector.credential_staged",
        "connector.credential_rejected",
        "connector.resumed",
        "connector.paused",
        "connector.resumed",
    ]
    used = [e for e in _events(api, world.tenant_id) if e.type == "vault.credential_used"]
    assert [e.data["version"] for e in used] == [2]

    listed = await api.request(
        "GET",
        "/v1/connectors",
        world.members[Role.AUDITOR].token,
        params={"kind": KIND, "status": "active"},
    )
    assert listed.status_code == 200, listed.text
    assert [c["connector_id"] for c in listed.json()["items"]] == [connector_id]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"kind": KIND, "name": "x", "config": {"password": "hunter2"}}, 422, "no secrets"),
        (
            {"kind": KIND, "name": "x", "config": {"auth": {"client_secret": "s"}}},
            422,
            "no secrets",
        ),
        ({"kind": KIND, "name": "x", "config": {"ratio": 0.5}}, 422, "fraction"),
        ({"kind": "Not A Slug", "name": "x"}, 400, None),
        ({"kind": KIND, "name": ""}, 400, None),
        ({"kind": KIND, "name": "x", "secret": "no such field"}, 400, None),
    ],
)
async def test_bad_connector_input_is_a_problem_not_a_500(
    api: Api, body: dict[str, Any], status: int, detail: str | None
) -> None:
    world = await create_tenant(api, with_roles=())
    response = await api.request("POST", "/v1/connectors", world.owner.token, json=body)
    assert_problem(response, status, detail)


async def test_a_credential_is_set_only_with_a_recent_authentication(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    connector_id, _ = await register(api, world)
    api.clock.advance(timedelta(minutes=6))
    try:
        response = await set_credential(api, world, connector_id, "too-late")
        assert_problem(response, 401)
        assert "insufficient_user_authentication" in response.headers["www-authenticate"]
    finally:
        api.clock.advance(-timedelta(minutes=6))


# ---- canaries ----------------------------------------------------------------------------


async def test_canary_credentials_never_leave_the_vault(
    api: Api, caplog: pytest.LogCaptureFixture, superuser: asyncpg.Connection
) -> None:
    canaries = {
        name: f"canary-{name}-{secrets.token_hex(12)}"
        for name in ("first", "rotated", "paused", "long")
    }
    canaries["refused"] = f"canary-{REFUSED_MARK}-{secrets.token_hex(12)}"
    canaries["long"] = canaries["long"] * 400  # over 8192 characters: refused by the schema
    responses: list[tuple[str, Any]] = []
    world = await create_tenant(api, with_roles=(Role.ADMIN,))

    async def call(label: str, method: str, path: str, **kw: Any) -> Any:
        response = await api.request(method, path, world.owner.token, **kw)
        responses.append((label, response))
        return response

    with _every_logger_into(caplog):
        connector_id, _ = await register(api, world)
        path = f"/v1/connectors/{connector_id}"

        def body(name: str) -> dict[str, Any]:
            return {"json": {"kind": "password", "secret": canaries[name]}}

        assert (
            await call("first", "PUT", f"{path}/credential", **body("first"))
        ).status_code == 204
        rotated = await call("rotated", "PUT", f"{path}/credential", **body("rotated"))
        assert rotated.status_code == 204, rotated.text
        assert_problem(await call("refused", "PUT", f"{path}/credential", **body("refused")), 422)
        assert_problem(await call("long", "PUT", f"{path}/credential", **body("long")), 400)
        await call("pause", "POST", f"{path}/pause")
        assert_problem(await call("paused", "PUT", f"{path}/credential", **body("paused")), 409)
        last = await call("resume", "POST", f"{path}/resume")
        position = last.headers["strongroom-position"]
        await call("read", "GET", path, headers={"Strongroom-Min-Position": position})
        await call("list", "GET", "/v1/connectors")
        await call("events", "GET", "/v1/events", params={"limit": "1000"})
        assert _use(api, world.tenant_id, connector_id).reveal() == canaries["rotated"]

    leaks: list[str] = []
    for label, response in responses:
        headers = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        for name, secret in canaries.items():
            if secret in response.text or secret in headers:
                leaks.append(f"the {name} canary in the response to {label}")
    assert any(r.name == "httpx" for r in caplog.records), "the log capture saw nothing"
    for record in caplog.records:
        text = _record_text(record)
        for name, secret in canaries.items():
            if secret in text:
                leaks.append(f"the {name} canary in a log record of {record.name}")
    events = _events(api, world.tenant_id)
    assert any(e.type == "connector.credential_rejected" for e in events)
    for event in events:
        stored = event.leaf.decode() + json.dumps(event.data) + repr(event.personal)
        for name, secret in canaries.items():
            if secret in stored:
                leaks.append(f"the {name} canary in event {event.seq} ({event.type})")
    tenant = UUID(world.tenant_id)
    for table in ("event_log", "proj_connectors.connectors_view", "connector_credential"):
        rows = await superuser.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant)
        assert rows, table
        for row in rows:
            for column, value in row.items():
                raw = value if isinstance(value, bytes) else str(value).encode()
                for name, secret in canaries.items():
                    if secret.encode() in raw:
                        leaks.append(f"the {name} canary in {table}.{column}")
    assert leaks == []


# ---- tenant isolation --------------------------------------------------------------------


async def test_tenant_a_reaching_for_tenant_bs_connectors_gets_404_and_changes_nothing(
    api: Api, database: Database
) -> None:
    a = await create_tenant(api, with_roles=())
    b = await create_tenant(api, with_roles=())
    b_connector, _ = await register(api, b)
    assert (await set_credential(api, b, b_connector, "b-credential")).status_code == 204
    b_events = len(_events(api, b.tenant_id))
    path = f"/v1/connectors/{b_connector}"
    for method, suffix, body in (
        ("GET", "", None),
        ("PUT", "/config", {"config": {"org": "a"}}),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("PUT", "/credential", {"kind": "api_key", "secret": "from-a"}),
    ):
        response = await api.request(method, path + suffix, a.owner.token, json=body)
        assert_problem(response, 404)
    listed = await api.request("GET", "/v1/connectors", a.owner.token)
    assert b_connector not in listed.text
    assert len(_events(api, b.tenant_id)) == b_events
    assert _use(api, b.tenant_id, b_connector).reveal() == "b-credential"


# ---- tenant key rotation -----------------------------------------------------------------


async def test_a_tenant_key_rotation_rewraps_keys_and_every_credential_still_opens(
    api: Api, superuser: asyncpg.Connection
) -> None:
    world = await create_tenant(api, with_roles=(Role.ADMIN,))
    connector_id, _ = await register(api, world)
    assert (await set_credential(api, world, connector_id, "before-rotation")).status_code == 204
    tenant = UUID(world.tenant_id)
    sealed = await superuser.fetchval(
        "SELECT sealed FROM connector_credential WHERE tenant_id = $1", tenant
    )
    wrapped = await superuser.fetchval("SELECT wrapped FROM vault_key WHERE tenant_id = $1", tenant)

    rotated = await api.request("POST", "/v1/tenant/key-rotation", world.owner.token)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert (body["from_version"], body["to_version"], body["vault_keys"]) == (1, 2, 1)
    assert body["subject_keys"] >= 2, "the owner's and the admin's personal data"
    assert int(rotated.headers["strongroom-position"]) > 0
    assert _use(api, world.tenant_id, connector_id).reveal() == "before-rotation"
    assert (
        await superuser.fetchval(
            "SELECT sealed FROM connector_credential WHERE tenant_id = $1", tenant
        )
        == sealed
    )
    assert (
        await superuser.fetchval("SELECT wrapped FROM vault_key WHERE tenant_id = $1", tenant)
        != wrapped
    )
    assert await login(api, world.slug, world.owner.email), "e-mail lookup keys still match"
    again = await api.request("POST", "/v1/tenant/key-rotation", world.owner.token)
    assert again.json()["to_version"] == 3
    [first, second] = [e for e in _events(api, world.tenant_id) if e.type == "tenant.key_rotated"]
    assert first.data["to_version"] == 2 and second.data["from_version"] == 2
    assert first.actor == Actor("user", world.owner.member_id)
