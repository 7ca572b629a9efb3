"""The HTTP app against the real embedded PostgreSQL and NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.middleware import SECURITY_HEADERS
from api.positions import MIN_POSITION
from infra.runtime import Endpoints, Runtime
from infra.settings import Settings
from tests.conftest import LOG_HOST, Database


@pytest.fixture
async def client(
    database: Database, nats_url: str, master_key: bytes
) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    settings = Settings.from_env({}, log_host=LOG_HOST)
    endpoints = Endpoints(database.app_url, nats_url, master_key)
    app = create_app(lambda: Runtime.open(settings, endpoints))
    async with AsyncTestClient(app=app) as client:
        yield client


def assert_security_headers(headers: object) -> None:
    for name, value in SECURITY_HEADERS:
        assert headers[name] == value, name  # type: ignore[index]


async def test_liveness_reports_the_version(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["version"]
    assert_security_headers(response.headers)


async def test_readiness_checks_postgres_and_nats(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    for _ in range(50):
        response = await client.get("/health/ready")
        if response.status_code == 200:
            break
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"postgres": True, "nats": True}


async def test_readiness_is_a_503_problem_when_nats_is_unreachable(
    database: Database, master_key: bytes
) -> None:
    settings = Settings.from_env({})
    endpoints = Endpoints(database.app_url, "nats://127.0.0.1:1", master_key)
    app = create_app(lambda: Runtime.open(settings, endpoints))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 503 and body["checks"] == {"postgres": True, "nats": False}
    assert "nats" in body["detail"]
    assert_security_headers(response.headers)


async def test_unknown_routes_are_problem_json_with_security_headers(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    response = await client.get("/no/such/route")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404
    assert_security_headers(response.headers)
    response = await client.post("/health/live")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")
    assert_security_headers(response.headers)


async def test_a_sane_request_id_is_echoed_and_a_bad_one_replaced(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    good = await client.get("/health/live", headers={"x-request-id": "req-12345678"})
    assert good.headers["x-request-id"] == "req-12345678"
    bad = await client.get("/health/live", headers={"x-request-id": "<script>"})
    assert bad.headers["x-request-id"] != "<script>" and len(bad.headers["x-request-id"]) == 32


async def test_openapi_schema_is_served(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    operations = {
        op["operationId"] for path in response.json()["paths"].values() for op in path.values()
    }
    assert {"getLiveness", "getReadiness"} <= operations


def _parameters(operation: dict[str, Any]) -> set[str]:
    return {p["name"] for p in operation.get("parameters", [])}


async def test_the_document_declares_the_headers_no_signature_shows(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """Idempotency-Key and Strongroom-Position on every command a principal sends,
    Strongroom-Min-Position on every read-model query, and none where they do nothing."""
    document = (await client.get("/schema/openapi.json")).json()
    operations = {
        op["operationId"]: (method.upper(), op)
        for item in document["paths"].values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }
    for name, (method, op) in operations.items():
        public = op.get("security") == []
        command = method in {"POST", "PUT", "PATCH", "DELETE"} and not public
        assert ("Idempotency-Key" in _parameters(op)) is command, name
        success = [r for status, r in op["responses"].items() if status.startswith("2")]
        assert all(("Strongroom-Position" in r.get("headers", {})) is command for r in success)
    readers = {name for name, (_, op) in operations.items() if MIN_POSITION in _parameters(op)}
    assert {"getMember", "listMembers", "listAuditEvents", "getGrant"} <= readers
    assert all(operations[name][0] == "GET" for name in readers)
    assert not {"getLiveness", "getEventLeaf", "getCheckpoint", "listApiKeys"} & readers
    assert operations["createTenant"][1]["security"] == [{"platform": []}]
    assert operations["login"][1]["security"] == []
    assert "Idempotency-Key" not in _parameters(operations["login"][1])  # public: ignored


async def test_the_document_says_how_a_rate_limited_request_is_answered(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    by_id = {
        op["operationId"]: op
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    for name in ("login", "getMember", "createTenant", "recordAuditEvents"):
        refused = by_id[name]["responses"]["429"]
        assert set(refused["headers"]) == {"Retry-After", "RateLimit-Policy", "RateLimit"}, name
        assert "application/problem+json" in refused["content"], name
    for probe in ("getLiveness", "getReadiness", "getMetrics"):  # never rate limited
        assert "429" not in by_id[probe]["responses"], probe
