"""Audit events from other systems, through HTTP: recording (one, or a batch that is
written whole or not at all), validation, the query with filters and pages, exports
(CSV and JSON Lines, step-up, recorded as ``audit.exported``) and tenant isolation."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from api.positions import MIN_POSITION
from domain.roles import Role
from infra.eventstore import EventStore
from tests.e2e.conftest import Api, TenantWorld, create_tenant, issue_api_key, login

pytestmark = pytest.mark.usefixtures("generous_rate_limits")
PROBLEM_JSON = "application/problem+json"


def stamp(minutes_ago: float = 1.0) -> str:
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "actor": "svc:billing",
        "action": "invoice.approved",
        "resource": "invoice/1",
        "outcome": "success",
        "occurred_at": stamp(),
    }
    body.update(changes)
    return body


async def log_size(store: EventStore, tenant: TenantWorld) -> int:
    head = await store.head(UUID(tenant.tenant_id))
    assert head is not None
    return head.size


def assert_problem(response: Any, status: int, detail_starts: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["detail"].startswith(detail_starts), body
    return body


async def ingest(api: Api, key: str, events: list[dict[str, Any]]) -> Any:
    response = await api.request("POST", "/v1/audit-events/batch", key, json={"events": events})
    assert response.status_code == 201, response.text
    return response


async def query(api: Api, token: str, position: str, **params: Any) -> Any:
    response = await api.request(
        "GET", "/v1/audit-events", token, params=params, headers={MIN_POSITION: position}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
async def tenant(api: Api, generous_rate_limits: None) -> TenantWorld:
    return await create_tenant(api, with_roles=(Role.AUDITOR, Role.ADMIN))


@pytest.fixture(scope="module")
async def key(api: Api, tenant: TenantWorld) -> str:
    """An API key that may only record audit events."""
    issued = await issue_api_key(api, tenant.owner, ["audit:ingest"])
    return str(issued["key"])


async def fresh_auditor_session(api: Api, tenant: TenantWorld) -> str:
    return await login(api, tenant.slug, tenant.members[Role.AUDITOR].email)


# ---- recording ------------------------------------------------------------------------------


async def test_one_event_is_recorded_with_its_personal_fields_outside_the_leaf(
    api: Api, store: EventStore, tenant: TenantWorld, key: str
) -> None:
    body = event(
        actor="user:ada",
        actor_email="Ada.Lovelace@Example.com",
        source_ip="2001:DB8::0:1",
        metadata={"amount": "12.50", "count": 3},
    )
    response = await api.request("POST", "/v1/audit-events", key, json=body)
    assert response.status_code == 201, response.text
    seq = response.json()["seq"]
    assert response.headers["strongroom-position"] == str(seq)
    recorded = await store.read_event(UUID(tenant.tenant_id), seq)
    assert recorded.type == "audit.recorded"
    assert recorded.stream == f"audit-{tenant.tenant_id}"
    assert recorded.actor.kind == "api_key"
    assert recorded.data["metadata"] == {"amount": "12.50", "count": 3}
    assert b"Lovelace" not in recorded.leaf and b"2001:db8" not in recorded.leaf.lower()
    assert set(orjson_loads(recorded.leaf)["pii"]) == {"actor_email", "source_ip"}
    page = await query(api, tenant.owner.token, str(seq), actor="user:ada")
    [item] = page["items"]
    assert item["seq"] == seq
    assert item["actor_email"] == "Ada.Lovelace@Example.com"
    assert item["source_ip"] == "2001:db8::1"
    assert item["metadata"] == {"amount": "12.50", "count": 3}
    assert item["api_key_id"] == recorded.actor.id
    assert item["outcome"] == "success"


def orjson_loads(raw: bytes) -> Any:
    return json.loads(raw)


async def test_a_batch_is_written_whole_in_one_append(
    api: Api, store: EventStore, tenant: TenantWorld, key: str
) -> None:
    before = await log_size(store, tenant)
    events = [event(resource=f"invoice/batch-{i}") for i in range(50)]
    response = await ingest(api, key, events)
    body = response.json()
    assert body == {"first_seq": before + 1, "last_seq": before + 50, "count": 50}
    assert await log_size(store, tenant) == before + 50


async def test_a_batch_with_one_bad_event_is_refused_whole_naming_its_index(
    api: Api, store: EventStore, tenant: TenantWorld, key: str
) -> None:
    before = await log_size(store, tenant)
    events = [event() for _ in range(20)]
    events[17]["action"] = "Not An Action"
    response = await api.request("POST", "/v1/audit-events/batch", key, json={"events": events})
    assert_problem(response, 422, "events[17].action: must match")
    events[17] = event(metadata={"price": 9.99})
    response = await api.request("POST", "/v1/audit-events/batch", key, json={"events": events})
    body = assert_problem(response, 422, "events[17].metadata.price:")
    assert "send decimals as strings" in body["detail"]
    too_many = {"events": [event()] * 1001}
    response = await api.request("POST", "/v1/audit-events/batch", key, json=too_many)
    assert_problem(response, 422, "events: a batch holds 1 to 1000 events, not 1001")
    assert await log_size(store, tenant) == before


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (event(outcome="maybe"), 422, "outcome: must be one of"),
        (event(occurred_at="2026-11-24 10:00"), 422, "occurred_at: an RFC 3339 date-time"),
        (event(occurred_at=stamp(-10)), 422, "occurred_at: must not be more than 5 minutes"),
        (event(occurred_at="1999-01-01T00:00:00Z"), 422, "occurred_at: must not be before"),
        (event(source_ip="999.1.1.1"), 422, "source_ip: not an IPv4 or IPv6 address"),
        (event(actor_email="no-at-sign"), 422, "actor_email: not an e-mail address"),
        (event(metadata={"n": 2**60}), 422, "metadata.n: integers must be within"),
        (event(metadata={"x": "y" * 17_000}), 422, "metadata: over 16384 bytes"),
        (event(actor=""), 422, "actor: 1 to 256 printable characters"),
        (event(unknown=1), 422, "unknown: is not a field"),
        ([event()], 422, "body: expected `object`"),
        (b"{not json", 400, "the body is not valid JSON"),
    ],
)
async def test_every_invalid_event_is_a_problem_and_writes_nothing(
    api: Api, store: EventStore, tenant: TenantWorld, key: str, body: Any, status: int, detail: str
) -> None:
    before = await log_size(store, tenant)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = await api.request("POST", "/v1/audit-events", key, **kwargs)
    assert_problem(response, status, detail)
    assert await log_size(store, tenant) == before


async def test_an_idempotency_key_records_a_batch_once(
    api: Api, store: EventStore, tenant: TenantWorld, key: str
) -> None:
    before = await log_size(store, tenant)
    body = {"events": [event(resource="idempotent")] * 3}
    headers = {"Idempotency-Key": "batch-once"}
    first = await api.request("POST", "/v1/audit-events/batch", key, json=body, headers=headers)
    again = await api.request("POST", "/v1/audit-events/batch", key, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await log_size(store, tenant) == before + 3


async def test_a_key_that_may_only_ingest_cannot_read_or_export(
    api: Api, tenant: TenantWorld, key: str
) -> None:
    for path in ("/v1/audit-events", "/v1/audit-events/export"):
        response = await api.request("GET", path, key)
        assert_problem(response, 403, "this needs the audit:read permission")
    reader = await issue_api_key(api, tenant.members[Role.AUDITOR], ["audit:read"])
    response = await api.request("POST", "/v1/audit-events", reader["key"], json=event())
    assert_problem(response, 403, "this needs the audit:ingest permission")


# ---- querying -------------------------------------------------------------------------------


async def test_filters_select_by_actor_action_resource_and_time(
    api: Api, generous_rate_limits: None
) -> None:
    world = await create_tenant(api, with_roles=())
    key = str((await issue_api_key(api, world.owner, ["audit:ingest"]))["key"])
    events = [
        event(actor="alice", action="doc.read", resource="doc/1", occurred_at=stamp(30)),
        event(actor="alice", action="doc.write", resource="doc/2", occurred_at=stamp(20)),
        event(actor="bob", action="doc.read", resource="doc/2", occurred_at=stamp(10)),
        event(actor="bob", action="doc.delete", resource="doc/3", occurred_at=stamp(1)),
    ]
    position = (await ingest(api, key, events)).headers["strongroom-position"]
    token = world.owner.token

    async def resources(**params: Any) -> list[str]:
        page = await query(api, token, position, **params)
        return [item["resource"] for item in page["items"]]

    assert await resources() == ["doc/1", "doc/2", "doc/2", "doc/3"]
    assert await resources(actor="alice") == ["doc/1", "doc/2"]
    assert await resources(action="doc.read") == ["doc/1", "doc/2"]
    assert await resources(resource="doc/2") == ["doc/2", "doc/2"]
    assert await resources(actor="bob", action="doc.read") == ["doc/2"]
    assert await resources(since=stamp(15)) == ["doc/2", "doc/3"]
    assert await resources(until=stamp(15)) == ["doc/1", "doc/2"]
    assert await resources(since=stamp(25), until=stamp(5)) == ["doc/2", "doc/2"]
    assert await resources(actor="nobody") == []
    naive = await api.request(
        "GET", "/v1/audit-events", token, params={"since": "2026-01-01T00:00:00"}
    )
    assert_problem(naive, 400, "since and until need an offset")


async def test_pages_cover_every_event_exactly_once_while_events_keep_arriving(
    api: Api, generous_rate_limits: None
) -> None:
    world = await create_tenant(api, with_roles=())
    key = str((await issue_api_key(api, world.owner, ["audit:ingest"]))["key"])
    first = [event(resource=f"r/{i}") for i in range(23)]
    position = (await ingest(api, key, first)).headers["strongroom-position"]
    seen: list[str] = []
    after = 0
    arrived = 0
    while True:
        page = await query(api, world.owner.token, position, limit=5, after=after)
        seen += [item["resource"] for item in page["items"]]
        if arrived < 2:  # more events land between the pages
            more = [event(resource=f"late/{arrived}/{i}") for i in range(4)]
            position = (await ingest(api, key, more)).headers["strongroom-position"]
            arrived += 1
        if page["next_after"] is None:
            break
        after = page["next_after"]
    expected = [f"r/{i}" for i in range(23)] + [f"late/{n}/{i}" for n in range(2) for i in range(4)]
    assert seen == expected
    assert len(set(seen)) == len(seen)
    too_big = await api.request("GET", "/v1/audit-events", world.owner.token, params={"limit": 501})
    assert_problem(too_big, 400)


# ---- exports --------------------------------------------------------------------------------


async def test_a_csv_export_streams_every_match_defuses_formulas_and_is_itself_recorded(
    api: Api, store: EventStore, generous_rate_limits: None
) -> None:
    world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    key = str((await issue_api_key(api, world.owner, ["audit:ingest"]))["key"])
    events = [
        event(actor='=HYPERLINK("http://evil")', resource="+1", actor_email="-x@example.com"),
        event(actor="@SUM(A1)", resource="-2+3", source_ip="192.0.2.7"),
        *[event(actor="plain", resource=f"r/{i}") for i in range(1500)],
    ]
    position = (await ingest(api, key, events[:1000])).headers["strongroom-position"]
    position = (await ingest(api, key, events[1000:])).headers["strongroom-position"]
    session = await fresh_auditor_session(api, world)
    response = await api.request(
        "GET", "/v1/audit-events/export", session, headers={MIN_POSITION: position}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1502
    assert [r["actor"] for r in rows[:2]] == ['\'=HYPERLINK("http://evil")', "'@SUM(A1)"]
    assert [r["resource"] for r in rows[:2]] == ["'+1", "'-2+3"]
    assert rows[0]["actor_email"] == "'-x@example.com"
    assert rows[1]["source_ip"] == "192.0.2.7"
    assert json.loads(rows[2]["metadata"]) == {}
    assert len({r["seq"] for r in rows}) == 1502
    exported = [
        e
        for e in await store.read_log(UUID(world.tenant_id), after=int(position))
        if e.type == "audit.exported"
    ]
    assert len(exported) == 1
    data = exported[0].data
    assert (data["format"], data["filters"]) == ("csv", {})
    # as far as the read model had read: every event ingested, not the export itself
    assert int(position) <= data["up_to_seq"] < exported[0].seq
    assert exported[0].actor.id == world.members[Role.AUDITOR].member_id


async def test_a_jsonl_export_honours_the_filters_and_records_them(
    api: Api, store: EventStore, tenant: TenantWorld, key: str
) -> None:
    events = [event(actor="jsonl-a", resource=f"j/{i}") for i in range(3)]
    events.append(event(actor="jsonl-b"))
    position = (await ingest(api, key, events)).headers["strongroom-position"]
    session = await fresh_auditor_session(api, tenant)
    response = await api.request(
        "GET",
        "/v1/audit-events/export",
        session,
        params={"format": "jsonl", "actor": "jsonl-a"},
        headers={MIN_POSITION: position},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["resource"] for line in lines] == ["j/0", "j/1", "j/2"]
    log = await store.read_log(UUID(tenant.tenant_id), after=int(position))
    [exported] = [e for e in log if e.type == "audit.exported"]
    assert exported.data["filters"] == {"actor": "jsonl-a"}
    assert exported.data["format"] == "jsonl"


async def test_an_export_needs_a_recent_authentication_and_a_session(
    api: Api, store: EventStore, tenant: TenantWorld
) -> None:
    session = await fresh_auditor_session(api, tenant)
    auditor_key = await issue_api_key(api, tenant.members[Role.AUDITOR], ["audit:read"])
    response = await api.request("GET", "/v1/audit-events/export", auditor_key["key"])
    assert_problem(response, 403, "this needs an interactive session, not an API key")
    before = await log_size(store, tenant)
    api.clock.advance(timedelta(minutes=6))
    try:
        response = await api.request("GET", "/v1/audit-events/export", session)
        assert_problem(response, 401)
        assert "insufficient_user_authentication" in response.headers["www-authenticate"]
    finally:
        api.clock.advance(timedelta(minutes=-6))
    assert await log_size(store, tenant) == before, "a refused export is not recorded"
    readonly = await api.request("GET", "/v1/audit-events", tenant.members[Role.ADMIN].token)
    assert readonly.status_code == 200, "admins read audit events"


# ---- tenants --------------------------------------------------------------------------------


async def test_tenant_a_never_sees_tenant_bs_audit_events(
    api: Api, generous_rate_limits: None
) -> None:
    a = await create_tenant(api, with_roles=())
    b = await create_tenant(api, with_roles=())
    a_key = str((await issue_api_key(api, a.owner, ["audit:ingest", "audit:read"]))["key"])
    b_key = str((await issue_api_key(api, b.owner, ["audit:ingest"]))["key"])
    marker = "tenant-b-secret-marker"
    b_events = [
        event(actor=marker, resource=marker, actor_email=f"{marker}@example.com") for _ in range(5)
    ]
    b_position = (await ingest(api, b_key, b_events)).headers["strongroom-position"]
    a_position = (await ingest(api, a_key, [event(actor="a-only")])).headers["strongroom-position"]
    for token in (a.owner.token, a_key):
        listed = await query(api, token, a_position)
        assert [i["actor"] for i in listed["items"]] == ["a-only"]
        by_actor = await query(api, token, a_position, actor=marker)
        assert by_actor["items"] == []
    session = await login(api, a.slug, a.owner.email)
    for fmt in ("csv", "jsonl"):
        exported = await api.request(
            "GET", "/v1/audit-events/export", session, params={"format": fmt}
        )
        assert exported.status_code == 200, exported.text
        assert "a-only" in exported.text
        assert marker not in exported.text and b.tenant_id not in exported.text
    b_view = await query(api, b.owner.token, b_position, actor=marker)
    assert len(b_view["items"]) == 5
