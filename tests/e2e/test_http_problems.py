"""Bad requests get RFC 9457 problem details with the right status, never a 500, and
every response, errors included, carries the security headers and a request id."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from litestar.types import Message

from api.middleware import SECURITY_HEADERS
from domain.roles import Role
from infra.ratelimit import Gcra, RateLimits
from tests.e2e.conftest import PASSWORD, Api, TenantWorld, create_tenant

MIB = 1024 * 1024
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


@pytest.fixture(scope="module")
async def world(api: Api) -> TenantWorld:
    """One tenant for the module: an owner (whose login is fresh enough for step-up
    routes while the module runs) and a read-only member."""
    return await create_tenant(api, with_roles=(Role.READONLY,))


def assert_security_headers(response: Any) -> None:
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name) == value, (name, response.headers.get(name))
    assert REQUEST_ID.fullmatch(response.headers.get("x-request-id", "")), response.headers


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://strongroom.dev/problems/")
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    assert_security_headers(response)
    return body


# ---- request bodies --------------------------------------------------------------------


def _routes(world: TenantWorld) -> dict[str, tuple[str, str, str | None, dict[str, Any]]]:
    """Command routes with a valid body: method, path, credential, body."""
    owner = world.owner
    readonly = world.members[Role.READONLY]
    return {
        "invite": (
            "POST",
            "/v1/members",
            owner.token,
            {"email": "someone@example.com", "role": "readonly"},
        ),
        "role": (
            "PUT",
            f"/v1/members/{readonly.member_id}/role",
            owner.token,
            {"role": "auditor"},
        ),
        "api key": (
            "POST",
            "/v1/api-keys",
            owner.token,
            {"name": "ci", "scopes": ["members:read"]},
        ),
        "login": (
            "POST",
            "/v1/auth/login",
            None,
            {"tenant": world.slug, "email": owner.email, "password": PASSWORD},
        ),
        "accept invite": (
            "POST",
            "/v1/invites/accept",
            None,
            {"token": "sri_" + "0" * 33, "password": PASSWORD},
        ),
    }


def _malformed(_: dict[str, Any]) -> bytes:
    return b'{"email": "someone@example.com", "role": '


def _wrong_type(valid: dict[str, Any]) -> bytes:
    first = next(iter(valid))
    return _json({**valid, first: 12345})


def _unknown_field(valid: dict[str, Any]) -> bytes:
    return _json({**valid, "is_admin": True})


def _missing_field(valid: dict[str, Any]) -> bytes:
    first = next(iter(valid))
    return _json({k: v for k, v in valid.items() if k != first})


def _not_an_object(_: dict[str, Any]) -> bytes:
    return b"[]"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_BODIES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "malformed JSON": _malformed,
    "a wrong type": _wrong_type,
    "an unknown field": _unknown_field,
    "a missing field": _missing_field,
    "an array for an object": _not_an_object,
}


@pytest.mark.parametrize("route", ["invite", "role", "api key", "login", "accept invite"])
@pytest.mark.parametrize("kind", list(BAD_BODIES))
async def test_a_bad_request_body_is_a_400_problem_naming_no_internals(
    api: Api, world: TenantWorld, route: str, kind: str
) -> None:
    method, path, token, valid = _routes(world)[route]
    response = await api.request(
        method,
        path,
        token,
        content=BAD_BODIES[kind](valid),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 400)
    assert PASSWORD not in response.text


async def test_a_bad_body_with_an_idempotency_key_is_a_400_problem_and_the_key_stays_usable(
    api: Api, world: TenantWorld
) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": "bad-body-then-good"}
    bad = await api.request("POST", "/v1/members", world.owner.token, content=b"{", headers=headers)
    assert_problem(bad, 400)
    again = await api.request(
        "POST", "/v1/members", world.owner.token, content=b"{", headers=headers
    )
    assert_problem(again, 400)
    assert again.content == bad.content


async def test_a_value_the_domain_refuses_is_a_422_problem(api: Api, world: TenantWorld) -> None:
    response = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        json={"email": "not-an-address", "role": "readonly"},
    )
    assert_problem(response, 422)


# ---- sizes ------------------------------------------------------------------------------


def _oversize_invite() -> bytes:
    return _json({"email": "a@example.com", "role": "readonly", "pad": "x" * (MIB + 1)})


async def test_a_body_over_one_mebibyte_is_a_413_problem(api: Api, world: TenantWorld) -> None:
    response = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        content=_oversize_invite(),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 413)


def _raw_chunked_post(
    api: Api, path: str, token: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes, int]:
    """POST ``body`` in 64 KiB chunks with no Content-Length, straight to the ASGI app
    (the test client always sends a length). Returns the status, the headers, the
    body, and how many request bytes the app pulled before it answered."""
    chunk = 64 * 1024
    incoming: list[Message] = [
        {
            "type": "http.request",
            "body": body[start : start + chunk],
            "more_body": start + chunk < len(body),
        }
        for start in range(0, len(body), chunk)
    ]
    consumed = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal consumed
        if not incoming:
            return {"type": "http.disconnect"}
        message = incoming.pop(0)
        consumed += len(message["body"])
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    raw_headers = [
        (b"host", b"testserver.local"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"transfer-encoding", b"chunked"),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver.local", 80),
        "state": {},
    }
    # The app and its runtime live on the test client's portal loop.
    api.client.blocking_portal.call(api.app, scope, receive, send)
    started = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode(): v.decode() for k, v in started["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return started["status"], response_headers, payload, consumed


@pytest.mark.parametrize("idempotency_key", [None, "chunked-oversize"])
async def test_an_oversize_body_sent_in_chunks_is_refused_before_it_is_all_read(
    api: Api, world: TenantWorld, idempotency_key: str | None
) -> None:
    """Without a Content-Length the limit holds on the bytes actually read, also when
    an Idempotency-Key makes the middleware read the body first."""
    body = _json({"email": "a@example.com", "role": "readonly", "pad": "x" * (8 * MIB)})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    status, response_headers, payload, consumed = _raw_chunked_post(
        api, "/v1/members", world.owner.token, body, headers
    )
    assert status == 413
    assert response_headers["content-type"].startswith("application/problem+json")
    for name, value in SECURITY_HEADERS:
        assert response_headers[name] == value
    assert json.loads(payload)["status"] == 413
    assert consumed <= MIB + 64 * 1024


async def test_an_oversize_body_with_an_idempotency_key_is_a_413_problem(
    api: Api, world: TenantWorld
) -> None:
    response = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        content=_oversize_invite(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "oversize"},
    )
    assert_problem(response, 413)


async def test_an_oversize_login_is_a_413_problem(api: Api, world: TenantWorld) -> None:
    body = _json({"tenant": world.slug, "email": world.owner.email, "password": "p" * (MIB + 1)})
    response = await api.request(
        "POST", "/v1/auth/login", content=body, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)


async def test_a_password_over_its_length_bound_is_a_400_problem(
    api: Api, world: TenantWorld
) -> None:
    response = await api.request(
        "POST",
        "/v1/auth/login",
        json={"tenant": world.slug, "email": world.owner.email, "password": "p" * 1025},
    )
    assert_problem(response, 400)


# ---- paths, methods, headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/members/not-a-uuid"),
        ("GET", "/v1/members/12345"),
        ("PUT", "/v1/members/0000-zzzz/role"),
        ("POST", "/v1/api-keys/not-a-uuid/rotate"),
        ("DELETE", "/v1/api-keys/%00"),
    ],
)
async def test_a_malformed_uuid_in_a_path_is_a_404_problem(
    api: Api, world: TenantWorld, method: str, path: str
) -> None:
    kwargs: dict[str, Any] = {"json": {"role": "auditor"}} if method == "PUT" else {}
    response = await api.request(method, path, world.owner.token, **kwargs)
    assert_problem(response, 404)


async def test_an_unknown_member_id_is_a_404_problem(api: Api, world: TenantWorld) -> None:
    response = await api.request(
        "GET", "/v1/members/00000000-0000-4000-8000-000000000000", world.owner.token
    )
    assert_problem(response, 404)


@pytest.mark.parametrize("token", [None, "owner"])
async def test_an_unknown_route_is_a_404_problem(
    api: Api, world: TenantWorld, token: str | None
) -> None:
    response = await api.request("GET", "/v1/no-such-thing", world.owner.token if token else None)
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/members", "GET, OPTIONS, POST"),
        ("GET", "/v1/auth/login", "OPTIONS, POST"),
        ("PATCH", "/v1/tenant/settings", "OPTIONS, PUT"),
    ],
)
async def test_a_wrong_method_is_a_405_problem_with_the_allowed_methods(
    api: Api, world: TenantWorld, method: str, path: str, allowed: str
) -> None:
    response = await api.request(method, path, world.owner.token)
    assert_problem(response, 405)
    assert sorted(m.strip() for m in response.headers["allow"].split(",")) == sorted(
        allowed.split(", ")
    )


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1" * 19, "", " 7"])
async def test_a_bad_min_position_header_is_a_400_problem(
    api: Api, world: TenantWorld, value: str
) -> None:
    response = await api.request(
        "GET", "/v1/members", world.owner.token, headers={"Strongroom-Min-Position": value}
    )
    assert_problem(response, 400)


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-token", "Bearer srs_short"]
)
async def test_a_malformed_credential_is_a_401_problem(api: Api, authorization: str) -> None:
    response = await api.client.get("/v1/members", headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


# ---- headers on every response -------------------------------------------------------------


async def test_every_response_carries_the_security_headers_and_a_request_id(
    api: Api, world: TenantWorld
) -> None:
    owner = world.owner
    readonly = world.members[Role.READONLY]
    responses = {
        200: await api.request("GET", "/v1/members", owner.token),
        201: await api.request(
            "POST", "/v1/members", owner.token, json={"email": "h@example.com", "role": "auditor"}
        ),
        204: await api.request(
            "PUT", f"/v1/members/{readonly.member_id}/role", owner.token, json={"role": "readonly"}
        ),
        400: await api.request("POST", "/v1/members", owner.token, content=b"{"),
        401: await api.request("GET", "/v1/members"),
        403: await api.request(
            "POST", "/v1/members", readonly.token, json={"email": "x@example.com", "role": "admin"}
        ),
        404: await api.request("GET", "/nothing-here"),
        405: await api.request("DELETE", "/v1/members", owner.token),
        409: await api.request(
            "POST", "/v1/members", owner.token, json={"email": "h@example.com", "role": "auditor"}
        ),
        413: await api.request("POST", "/v1/members", owner.token, content=_oversize_invite()),
        422: await api.request(
            "POST", "/v1/members", owner.token, json={"email": "nope", "role": "auditor"}
        ),
    }
    identity = api.runtime.identity
    saved = identity.limits
    identity.limits = RateLimits(
        principal=Gcra("principal", rate=1, period=3600),
        anonymous_ip=saved.anonymous_ip,
        login_ip=saved.login_ip,
    )
    try:
        await api.request("GET", "/v1/members", owner.token)
        responses[429] = await api.request("GET", "/v1/members", owner.token)
    finally:
        identity.limits = saved
    for status, response in responses.items():
        assert response.status_code == status, (status, response.text)
        assert_security_headers(response)
        if status >= 400:
            assert_problem(response, status)
    assert len({r.headers["x-request-id"] for r in responses.values()}) == len(responses)
    limited = responses[429]
    assert limited.headers["ratelimit-policy"] == '"principal";q=1;w=3600'
    assert int(limited.headers["retry-after"]) > 0
    for path in ("/schema/openapi.json", "/health/live", "/metrics"):
        response = await api.request("GET", path)
        assert response.status_code == 200, path
        assert_security_headers(response)


async def test_a_sane_request_id_is_echoed_and_anything_else_is_replaced(api: Api) -> None:
    echoed = await api.client.get("/health/live", headers={"X-Request-Id": "trace-0123456789"})
    assert echoed.headers["x-request-id"] == "trace-0123456789"
    for bad in ("short", "has spaces in it", "x" * 65, "<script>alert(1)</script>"):
        replaced = await api.client.get("/nothing-here", headers={"X-Request-Id": bad})
        assert_problem(replaced, 404)
        assert replaced.headers["x-request-id"] != bad
