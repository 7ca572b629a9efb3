"""The tenant log over HTTP: pages with filters and a cursor, and the live SSE stream.

The litestar test client buffers a response until it ends, and a stream never ends,
so this module serves the app with a real uvicorn server on the test's event loop
and talks to it with httpx. The app's NATS is a nats-server of this module's own,
so stopping and restarting it disturbs no other test. Waits are bounded by
``GUARD_SECONDS`` (per stream) only so that a broken stream fails a test instead of
hanging it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
import uvicorn

from api import events as events_api
from api.app import create_app
from domain.roles import Role
from infra.embedded import LOOPBACK, EmbeddedNats, free_port
from infra.eventstore import Actor, NewEvent
from infra.ratelimit import Gcra, RateLimits
from infra.runtime import Endpoints, Runtime, Workers
from infra.services import create_platform_token
from infra.settings import Settings
from tests.conftest import LOG_HOST, Database
from tests.e2e.conftest import (
    PASSWORD,
    Api,
    Clock,
    Member,
    TenantWorld,
    create_tenant,
    invite_and_join,
    issue_api_key,
    login,
)

GUARD_SECONDS = 60.0
PROBLEM_JSON = "application/problem+json"


# ---- a real server, with a NATS of its own ----------------------------------------------


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("events-nats")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def api(database: Database, own_nats: EmbeddedNats, master_key: bytes) -> AsyncIterator[Api]:
    """The app (with the relay, as ``strongroom up`` runs it) served over TCP."""
    settings = Settings.from_env({}, log_host=LOG_HOST)
    endpoints = Endpoints(database.app_url, own_nats.url, master_key)
    clock = Clock()

    async def open_runtime() -> Runtime:
        runtime = await Runtime.open(settings, endpoints, Workers(relay=True))
        runtime.identity.ctx.clock = clock
        # Every request comes from 127.0.0.1: the per-address limits are not under test.
        runtime.identity.limits = RateLimits(
            principal=Gcra("principal", rate=100_000, period=60),
            anonymous_ip=Gcra("ip", rate=100_000, period=60),
            login_ip=Gcra("login-ip", rate=100_000, period=60),
        )
        return runtime

    conn = await asyncpg.connect(database.owner_url)
    try:
        token = await create_platform_token(conn, only_if_none=False)
    finally:
        await conn.close()
    assert token is not None
    app = create_app(open_runtime)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=LOOPBACK, port=port, log_level="warning", timeout_graceful_shutdown=5
        )
    )
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(GUARD_SECONDS):
        while not server.started:
            assert not serving.done(), "uvicorn stopped while starting"
            await asyncio.sleep(0.02)
    timeout = httpx.Timeout(GUARD_SECONDS)
    async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=timeout) as client:
        yield Api(client, app, token, clock)  # type: ignore[arg-type]  # httpx, not litestar's
    server.should_exit = True
    await serving


# ---- helpers ----------------------------------------------------------------------------


@dataclass
class Frame:
    """One SSE message: an event (id, event, data) or only comments."""

    id: int | None = None
    event: str | None = None
    data: dict[str, Any] | None = None
    comments: list[str] = field(default_factory=list)
    text: str = ""


class EventSource:
    """Reads SSE frames off a streaming response, as a browser's EventSource would."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self._deadline = asyncio.get_running_loop().time() + GUARD_SECONDS
        """Heartbeats never let a read wait long: the guard is for the whole stream."""

    async def frame(self) -> Frame | None:
        """The next frame, or None when the server ended the stream."""
        frame = Frame()
        async with asyncio.timeout_at(self._deadline):
            async for line in self._lines:
                if line == "":
                    if frame.id is not None or frame.comments:
                        return frame
                    continue
                frame.text += line + "\n"
                if line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    frame.id = int(value)
                elif name == "event":
                    frame.event = value
                elif name == "data":
                    frame.data = json.loads(value)
        return None

    async def event(self) -> Frame:
        """The next event, skipping comments."""
        while True:
            frame = await self.frame()
            assert frame is not None, "the stream ended"
            if frame.id is not None:
                return frame

    async def events_through(self, seq: int) -> list[Frame]:
        """Events until one with id ``seq`` or beyond."""
        got: list[Frame] = []
        while not got or got[-1].id is None or got[-1].id < seq:
            got.append(await self.event())
        return got

    async def to_the_end(self) -> list[Frame]:
        frames = []
        while (frame := await self.frame()) is not None:
            frames.append(frame)
        return frames


@asynccontextmanager
async def open_stream(
    api: Api, token: str, params: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[EventSource]:
    request_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with api.client.stream(  # type: ignore[attr-defined]
        "GET", "/v1/events/stream", params=params, headers=request_headers
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventSource(response)


async def all_events(api: Api, token: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = params.pop("after", 0)
    while True:
        response = await api.request(
            "GET", "/v1/events", token, params={**params, "after": after, "limit": 1000}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next"] is None:
            return items
        after = page["next"]


async def head(api: Api, tenant_id: str) -> int:
    found = await api.runtime.store.head(UUID(tenant_id))
    assert found is not None
    return found.size


async def append_marks(api: Api, tenant_id: str, count: int, label: str = "mark") -> int:
    """``count`` events in one command, straight into the app's store (so its publisher
    announces them); returns the last seq."""
    stream = f"mark-{uuid4()}"
    result = await api.runtime.store.append(
        UUID(tenant_id),
        [
            NewEvent(stream=stream, type="mark.made", data={"n": i, "label": label})
            for i in range(count)
        ],
        expected={stream: 0},
        command_id=uuid4(),
        actor=Actor("system", "test"),
    )
    return result.last_seq


async def owner_key(api: Api, world: TenantWorld, scopes: list[str]) -> str:
    return str((await issue_api_key(api, world.owner, scopes))["key"])


def assert_problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    assert response.json()["status"] == status


# ---- pages ------------------------------------------------------------------------------


async def test_pages_cover_the_log_in_seq_order_and_the_cursor_ends_with_null(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    last = await append_marks(api, world.tenant_id, 7)
    token = world.owner.token
    seen: list[int] = []
    after, pages = 0, 0
    while True:
        response = await api.request(
            "GET", "/v1/events", token, params={"after": after, "limit": 3}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [e["seq"] for e in page["items"]]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["seq"]
        after = page["next"]
    assert seen == list(range(1, last + 1))
    assert pages > 1
    default = (await api.request("GET", "/v1/events", token)).json()
    assert [e["seq"] for e in default["items"]] == seen and default["next"] is None
    exact = await api.request("GET", "/v1/events", token, params={"after": last - 3, "limit": 3})
    assert [e["seq"] for e in exact.json()["items"]] == [last - 2, last - 1, last]
    assert exact.json()["next"] is None, "a page that reaches the end says so"
    beyond = await api.request("GET", "/v1/events", token, params={"after": last})
    assert beyond.json() == {"items": [], "next": None}


async def test_an_event_carries_its_envelope_and_its_data(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    events = await all_events(api, world.owner.token)
    invited = next(e for e in events if e["type"] == "member.invited")
    assert invited["stream"] == f"member-{world.owner.member_id}"
    assert invited["version"] == 1
    assert invited["actor"] == {"kind": "platform", "id": "admin"}
    assert invited["data"]["role"] == "owner"
    assert invited["data"]["email"] == world.owner.email
    assert invited["erased"] == []
    recorded = await api.runtime.store.read_event(UUID(world.tenant_id), invited["seq"])
    assert UUID(invited["id"]) == recorded.event_id
    assert datetime.fromisoformat(invited["recorded_at"]) == recorded.ts


async def test_filters_match_exactly_and_the_cursor_passes_over_what_they_leave_out(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=(Role.READONLY,))
    await append_marks(api, world.tenant_id, 3)
    token = world.owner.token
    every = await all_events(api, token)
    types = ["member.invited", "member.joined"]
    wanted = [e for e in every if e["type"] in types]
    assert len(wanted) >= 4 and len(wanted) < len(every)
    response = await api.request(
        "GET", "/v1/events", token, params=[("type", types[0]), ("type", types[1])]
    )
    assert response.json()["items"] == wanted
    first = await api.request(
        "GET", "/v1/events", token, params=[("type", types[0]), ("type", types[1]), ("limit", 1)]
    )
    assert first.json()["next"] == wanted[0]["seq"]
    rest = await all_events(api, token, after=first.json()["next"], type=types)
    assert rest == wanted[1:]
    stream = f"member-{world.members[Role.READONLY].member_id}"
    by_stream = await all_events(api, token, stream=stream)
    assert by_stream == [e for e in every if e["stream"] == stream]
    assert [e["version"] for e in by_stream] == list(range(1, len(by_stream) + 1))
    both = await all_events(api, token, stream=stream, type="member.joined")
    assert [e["type"] for e in both] == ["member.joined"]
    assert await all_events(api, token, type="member.nothing_like_this") == []


async def test_personal_fields_read_decrypted_until_the_subject_is_erased(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    member = await invite_and_join(api, world, Role.AUDITOR, email="ada@erasure.example")
    subject = f"member-{member.member_id}"

    async def invited() -> dict[str, Any]:
        (event,) = await all_events(api, world.owner.token, stream=subject, type="member.invited")
        return event

    before = await invited()
    assert before["data"]["email"] == "ada@erasure.example" and before["erased"] == []
    assert await api.runtime.store.shred_subject(UUID(world.tenant_id), subject) >= 1
    after = await invited()
    assert after["data"]["email"] is None and after["erased"] == ["email"]
    assert {k: v for k, v in after.items() if k not in {"data", "erased"}} == {
        k: v for k, v in before.items() if k not in {"data", "erased"}
    }
    async with open_stream(api, world.owner.token, {"stream": subject}) as source:
        streamed = await source.event()
    assert streamed.data == after and streamed.id == after["seq"]
    assert "ada@erasure.example" not in streamed.text


async def test_no_credential_or_password_is_ever_in_the_log(api: Api) -> None:
    """A secret must never reach a leaf: the log is public to every auditor, forever."""
    world = await create_tenant(api, with_roles=())
    invited = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        json={"email": f"secret@{world.slug}.example", "role": "auditor"},
    )
    invite_token = invited.json()["invite_token"]
    await api.request(
        "POST", "/v1/invites/accept", json={"token": invite_token, "password": PASSWORD}
    )
    session = await login(api, world.slug, f"secret@{world.slug}.example")
    key = await owner_key(api, world, ["events:read"])
    secrets = [world.owner.token, session, invite_token, key, PASSWORD, api.platform_token]
    leaves = [
        e.leaf.decode() for e in await api.runtime.store.read_log(UUID(world.tenant_id), limit=1000)
    ]
    served = json.dumps(await all_events(api, key))
    for secret in secrets:
        for text in (*leaves, served):
            assert secret not in text
            assert hashlib.sha256(secret.encode()).hexdigest() not in text


# ---- who may read -----------------------------------------------------------------------


async def test_readonly_is_refused_and_the_auditor_and_scoped_keys_may_read(api: Api) -> None:
    world = await create_tenant(api, with_roles=(Role.READONLY, Role.AUDITOR))
    readonly = world.members[Role.READONLY]
    auditor = world.members[Role.AUDITOR]
    scoped = await owner_key(api, world, ["events:read"])
    unscoped = await owner_key(api, world, ["members:read", "ledger:read"])
    for path in ("/v1/events", "/v1/events/stream"):
        assert_problem(await api.request("GET", path, readonly.token), 403)
        assert_problem(await api.request("GET", path, unscoped), 403)
        assert_problem(await api.request("GET", path), 401)
    expected = await all_events(api, world.owner.token)
    assert await all_events(api, auditor.token) == expected
    assert await all_events(api, scoped) == expected
    for token in (auditor.token, scoped):
        async with open_stream(api, token) as source:
            frames = await source.events_through(expected[-1]["seq"])
        assert [f.data for f in frames] == expected


async def test_tenant_a_never_sees_tenant_b_on_either_route(api: Api) -> None:
    a = await create_tenant(api, with_roles=())
    b = await create_tenant(api, with_roles=(Role.ADMIN,))
    await append_marks(api, b.tenant_id, 3, label=f"b-{b.tenant_id}")
    markers = [b.tenant_id, b.slug, *(m.member_id for m in b.members.values())]
    markers += [m.email for m in b.members.values()]
    a_key = await owner_key(api, a, ["events:read"])
    for token in (a.owner.token, a_key):
        listed = await all_events(api, token, after=0)
        assert [e["seq"] for e in listed] == list(range(1, await head(api, a.tenant_id) + 1))
        text = json.dumps(listed)
        assert [m for m in markers if m in text] == []
        for stream in (f"member-{b.owner.member_id}", f"tenant-{b.tenant_id}"):
            assert await all_events(api, token, stream=stream) == []
    async with open_stream(api, a.owner.token, {"after": 0}) as source:
        frames = await source.events_through(await head(api, a.tenant_id))
        await append_marks(api, b.tenant_id, 2, label=f"b-{b.tenant_id}")
        a_last = await append_marks(api, a.tenant_id, 1, label="a")
        frames += await source.events_through(a_last)
    assert [f.id for f in frames] == list(range(1, a_last + 1))
    streamed = "".join(f.text for f in frames)
    assert [m for m in markers if m in streamed] == []


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        ("/v1/events", {"after": "-1"}, {}),
        ("/v1/events", {"after": "ten"}, {}),
        ("/v1/events", {"after": str(2**63)}, {}),
        ("/v1/events", {"limit": "0"}, {}),
        ("/v1/events", {"limit": "1001"}, {}),
        ("/v1/events", {"stream": ""}, {}),
        ("/v1/events", {"stream": "x" * 257}, {}),
        ("/v1/events", [("type", f"t.{i}") for i in range(21)], {}),
        ("/v1/events", {"type": "x" * 257}, {}),
        ("/v1/events", {"type": "member\x00.invited"}, {}),
        ("/v1/events", {"stream": "member-\x00"}, {}),
        ("/v1/events/stream", {"after": "-5"}, {}),
        ("/v1/events/stream", {"stream": ""}, {}),
        ("/v1/events/stream", {"type": "\x00"}, {}),
        ("/v1/events/stream", {}, {"Last-Event-ID": "abc"}),
        ("/v1/events/stream", {}, {"Last-Event-ID": "-1"}),
        ("/v1/events/stream", {}, {"Last-Event-ID": b"\xb2"}),  # a digit, to str.isdigit
        ("/v1/events/stream", {}, {"Last-Event-ID": str(2**63)}),
        ("/v1/events/stream", {}, {"Last-Event-ID": "9" * 5000}),
    ],
    ids=lambda v: str(v)[:40],
)
async def test_bad_parameters_answer_400_problem_json(
    api: Api, reader: TenantWorld, path: str, params: Any, headers: dict[str, Any]
) -> None:
    response = await api.request("GET", path, reader.owner.token, params=params, headers=headers)
    assert_problem(response, 400)


@pytest.fixture(scope="module")
async def reader(api: Api) -> TenantWorld:
    return await create_tenant(api, with_roles=())


# ---- the stream -------------------------------------------------------------------------


async def test_the_stream_catches_up_then_follows_live_with_ids_types_and_data(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    before = await all_events(api, world.owner.token)
    async with open_stream(api, world.owner.token) as source:
        caught_up = await source.events_through(before[-1]["seq"])
        assert [f.data for f in caught_up] == before
        assert [f.event for f in caught_up] == [e["type"] for e in before]
        invited = await api.request(
            "POST",
            "/v1/members",
            world.owner.token,
            json={"email": f"live@{world.slug}.example", "role": "readonly"},
        )
        position = int(invited.headers["strongroom-position"])
        live = await source.events_through(position)
    assert [f.id for f in live] == list(range(before[-1]["seq"] + 1, position + 1))
    assert live[-1].event == "member.invited"
    assert live[-1].data is not None
    assert live[-1].data["data"]["email"] == f"live@{world.slug}.example"


async def test_resuming_with_last_event_id_gets_exactly_the_rest(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    last = await append_marks(api, world.tenant_id, 5)
    every = await all_events(api, world.owner.token)
    resume_at = last - 3
    async with open_stream(
        api, world.owner.token, {"after": 1}, headers={"Last-Event-ID": str(resume_at)}
    ) as source:
        rest = await source.events_through(last)
        newer = await append_marks(api, world.tenant_id, 1)
        rest += await source.events_through(newer)
    assert [f.id for f in rest] == list(range(resume_at + 1, newer + 1))
    assert [f.data for f in rest[:3]] == every[resume_at:]


async def test_stream_filters_apply_after_ordering_and_ids_stay_log_positions(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=())
    await append_marks(api, world.tenant_id, 2)
    params = [("type", "mark.made"), ("type", "member.role_changed")]
    async with open_stream(api, world.owner.token, params) as source:
        first = await source.events_through(await head(api, world.tenant_id))
        await append_marks(api, world.tenant_id, 1, label="live")
        invited = await api.request(
            "POST",
            "/v1/members",
            world.owner.token,
            json={"email": f"f@{world.slug}.example", "role": "readonly"},
        )
        assert invited.status_code == 201
        last = await append_marks(api, world.tenant_id, 1, label="last")
        second = await source.events_through(last)
    frames = first + second
    assert {f.event for f in frames} == {"mark.made"}
    expected = await all_events(api, world.owner.token, type="mark.made")
    assert [f.id for f in frames] == [e["seq"] for e in expected]
    assert frames[-1].id == last and frames[-2].id == last - 2, "the invite was skipped"


async def test_no_gap_and_no_duplicate_while_appends_run_concurrently(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    start = await head(api, world.tenant_id)
    sizes = {n: [1 + (i + n) % 3 for i in range(15)] for n in range(4)}

    async def writer(n: int) -> None:
        for size in sizes[n]:
            await append_marks(api, world.tenant_id, size, label=f"w{n}")

    async with open_stream(api, world.owner.token) as source:
        first = await source.events_through(start)
        writers = asyncio.gather(*(writer(n) for n in sizes))
        frames = await source.events_through(start + sum(map(sum, sizes.values())))
        await writers
    ids = [f.id for f in first + frames]
    assert ids == list(range(1, await head(api, world.tenant_id) + 1))


async def test_a_client_that_stops_reading_still_gets_every_event_in_order(api: Api) -> None:
    """Catch-up runs over several pages, and events appended while the client reads
    nothing wait in the store, not in the server's memory."""
    world = await create_tenant(api, with_roles=())
    for _ in range(3):
        await append_marks(api, world.tenant_id, 150)
    first = await head(api, world.tenant_id)
    assert first > 2 * events_api.STREAM_PAGE
    async with open_stream(api, world.owner.token) as source:
        frames = [await source.event()]
        for _ in range(4):
            last = await append_marks(api, world.tenant_id, 500)
        frames += await source.events_through(last)
    assert [f.id for f in frames] == list(range(1, last + 1))


async def test_heartbeats_keep_coming_while_the_log_is_quiet(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_api, "HEARTBEAT_SECONDS", 0.1)
    world = await create_tenant(api, with_roles=())
    async with open_stream(api, world.owner.token) as source:
        await source.events_through(await head(api, world.tenant_id))
        beats = 0
        while beats < 3:
            frame = await source.frame()
            assert frame is not None and frame.id is None
            beats += frame.comments.count("keepalive")


async def _log_out(api: Api, world: TenantWorld, member: Member, token: str) -> None:
    response = await api.request("POST", "/v1/auth/logout", token)
    assert response.status_code == 204, response.text


async def _deactivate(api: Api, world: TenantWorld, member: Member, token: str) -> None:
    response = await api.request(
        "POST", f"/v1/members/{member.member_id}/deactivate", world.owner.token
    )
    assert response.status_code == 204, response.text


async def _demote(api: Api, world: TenantWorld, member: Member, token: str) -> None:
    response = await api.request(
        "PUT", f"/v1/members/{member.member_id}/role", world.owner.token, json={"role": "readonly"}
    )
    assert response.status_code == 204, response.text


async def _revoke_key(api: Api, world: TenantWorld, member: Member, token: str) -> None:
    keys = await api.request("GET", "/v1/api-keys", member.token)
    (key,) = [k for k in keys.json() if token.startswith(k["prefix"])]
    response = await api.request("DELETE", f"/v1/api-keys/{key['key_id']}", member.token)
    assert response.status_code == 204, response.text


@pytest.mark.parametrize(
    ("credential", "ending"),
    [
        ("session", _log_out),
        ("session", _deactivate),
        ("session", _demote),
        ("api key", _revoke_key),
        ("api key", _deactivate),
    ],
    ids=[
        "logout",
        "session of a deactivated member",
        "demoted to readonly",
        "key revoked",
        "key of a deactivated member",
    ],
)
async def test_the_stream_closes_when_its_credential_stops_granting_events_read(
    api: Api, monkeypatch: pytest.MonkeyPatch, credential: str, ending: Any
) -> None:
    monkeypatch.setattr(events_api, "HEARTBEAT_SECONDS", 0.1)
    world = await create_tenant(api, with_roles=(Role.AUDITOR,))
    auditor = world.members[Role.AUDITOR]
    token = auditor.token
    if credential == "api key":
        token = str((await issue_api_key(api, auditor, ["events:read"]))["key"])
    async with open_stream(api, token) as source:
        await source.events_through(await head(api, world.tenant_id))
        while "keepalive" not in source.comments:  # the credential passed a heartbeat check
            assert await source.frame() is not None
        await ending(api, world, auditor, token)
        await source.to_the_end()
    assert source.comments[-1] == "closed: the credential no longer grants events:read"
    assert_problem(
        await api.request("GET", "/v1/events", token), 401 if ending is not _demote else 403
    )


async def test_the_stream_survives_a_nats_restart_without_losing_or_repeating_events(
    api: Api, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats and polls are turned off while NATS is up, so only live announcements
    can deliver there; while it is down, the store is polled."""
    broker = api.runtime.broker
    monkeypatch.setattr(events_api, "HEARTBEAT_SECONDS", 3600.0)
    monkeypatch.setattr(events_api, "POLL_SECONDS", 3600.0)
    world = await create_tenant(api, with_roles=())
    async with open_stream(api, world.owner.token) as source:
        frames = await source.events_through(await head(api, world.tenant_id))
        frames += await source.events_through(await append_marks(api, world.tenant_id, 2))
        # Polling on again before NATS goes: this live event wakes the stream, whose
        # next wait then ends within a poll, when it sees NATS gone.
        monkeypatch.setattr(events_api, "POLL_SECONDS", 0.1)
        frames += await source.events_through(await append_marks(api, world.tenant_id, 1))

        await asyncio.to_thread(own_nats.stop)
        async with asyncio.timeout(GUARD_SECONDS):
            while broker.connected:
                await asyncio.sleep(0.05)
        frames += await source.events_through(await append_marks(api, world.tenant_id, 3))
        frames += await source.events_through(await append_marks(api, world.tenant_id, 1))

        await asyncio.to_thread(own_nats.start)
        async with asyncio.timeout(GUARD_SECONDS):
            while not broker.connected:
                await asyncio.sleep(0.05)
        # Live again: with polling off, only an announcement can bring these.
        monkeypatch.setattr(events_api, "POLL_SECONDS", 3600.0)
        frames += await source.events_through(await append_marks(api, world.tenant_id, 2))
        frames += await source.events_through(await append_marks(api, world.tenant_id, 1))
    assert [f.id for f in frames] == list(range(1, await head(api, world.tenant_id) + 1))
