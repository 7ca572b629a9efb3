"""The HTTP API end to end: a real ``strongroom serve`` process, a lean load generator.

Rows (targets from docs PERFORMANCE.md; ratios against row 10r, measured in this run):

9.   ``POST /v1/members`` (an invite: ONE event, ``member.invited``, its e-mail encrypted as
     personal data, plus the invite and e-mail-lookup rows in the same transaction) with an
     API key, 16 keep-alive connections, keys of 16 tenants round robin;
9b.  the same with an ``Idempotency-Key`` on every request (its claim and stored response);
10.  ``GET /v1/members/{id}`` with an API key (the members read model), ids from row 9;
10b. ``GET /v1/members?limit=20``: one page of 20 members;
10r. raw: ``GET /health/live`` with the same client: no authentication, no database (the
     ceiling of uvicorn + litestar + this client on this box);
11.  the API process's resident memory: the largest ``VmRSS`` sampled every 50 ms while
     rows 9 to 10r ran (run first to last: 10r, 9, 9b, 10, 10b), target < 300 MiB; the
     MiB stand in the rate column;
12.  ``POST /v1/auth/login`` with a password (Argon2id, ``PasswordPolicy``'s parameters, in
     the row's name), 4 connections, the tenants' owners round robin. No target.
19.  the access flow, one operation = three requests in a row: ``POST /v1/access-requests``
     (an admin's session), ``POST .../decisions`` approve (the owner's session; the manifest
     signed with the tenant's Ed25519 approval key), ``POST .../execution`` (the request and
     its grant in one append), 4 connections, the tenants round robin. Latency is the whole
     flow's. No target in PERFORMANCE.md; the issue asks for the figure.

The API runs as ``strongroom serve`` does (uvicorn, its defaults, no relay or projection
worker in the process) in a child process, against the embedded PostgreSQL and NATS of
this suite; the load generator is this process, on the same machine, on uvloop. Its
measured requests go through ``tests/bench/_loadgen.py``: one HTTP/1.1 keep-alive
connection per writer on asyncio streams, JSON by msgspec. httpx cost this process 1.3 to
2.5 ms of CPU per request, more than the API spent answering a GET, so the rows measured
the client more than the server; httpx now only sets up, outside the measuring windows
(and still drives the ingestion suite, bench_ingest.py). Everything is set up through the
HTTP API: a platform token, tenants (``POST /v1/tenants``), their owners join (invite
accepted) and log in, and issue API keys (``POST /v1/api-keys``, 4 per tenant). Many keys,
because the API limits each principal to 100 requests/s (burst 600): one client could not
offer these rates. Public routes (login, health) are limited per client address: their requests say
``X-Forwarded-For: <a loopback address>``, which uvicorn takes from a client on 127.0.0.1
(its default ``forwarded_allow_ips``), as from a reverse proxy on the same host.

Each timed row notes the CPU it cost per request (warm-up included), from /proc: the API
process, PostgreSQL's server processes, this process (the load generator, with its share
of the machine's CPUs over the row), and the rest of the machine (NATS, and whatever else
runs on it). On a machine that is not shared, they show where the time goes when the
rates miss their targets.

Checks: every request answers its expected status (any other is an error: the run exits
1); after rows 9 and 9b the tenants' logs grew by exactly one event per invite answered
201; the members read model (caught up by a sweep in this process, as the projection
worker would) then holds every invited member.

``STRONGROOM_BENCH_PROFILE=<file>`` runs the API under cProfile and writes its statistics
there when it stops (``python -m pstats <file>``). ``python -m tests.bench.bench_http``
runs this suite alone (``--quick`` too), writing ``bench-results/http-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
import uvloop

from infra.broker import Broker
from infra.collector import tune_collector
from infra.credentials import PasswordPolicy
from infra.db import create_pool
from infra.eventstore import EventStore
from infra.keyring import Keyring
from infra.projector import ProjectionRunner
from infra.services import create_platform_token
from projections.members import MembersProjection
from tests.bench._harness import AsyncOp, Measurement, Window, run_async
from tests.bench._loadgen import Connection
from tests.bench._report import print_table, write_suite_json
from tests.bench._stack import BenchDatabase, bench_database, bench_nats, machine_info
from tests.bench.bench_append import FULL, QUICK, RowResult, RowSpec, evaluate
from tests.bench.bench_projections import member_stats

CONNECTIONS = 16
LOGIN_CONNECTIONS = 4
FLOW_CONNECTIONS = 4
TENANTS = 16
KEYS_PER_TENANT = 4
PAGE = 20
MEMBER_IDS_PER_TENANT = 256
RSS_LIMIT_MIB = 300.0
RSS_SAMPLE_S = 0.05
PASSWORD = "correct horse battery staple"
LOG_HOST = "bench.strongroom.localhost"
SCOPES = ["members:invite", "members:read"]
START_TIMEOUT_S = 60.0
ANONYMOUS_PER_ADDRESS = 50
"""Requests per forwarded address on public routes (the per-IP limit's burst is 60)."""
LOGINS_PER_ADDRESS = 8
"""Logins per forwarded address (the login limit's burst is 10)."""
MEMBERS = MembersProjection()
POLICY = PasswordPolicy()
JSON_ENCODER = msgspec.json.Encoder()
JSON_DECODER = msgspec.json.Decoder()

SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec(
            "9",
            "HTTP invite (1 event), API key, 16 conns",
            CONNECTIONS,
            "10r",
            min_rate=2_000,
            max_p99_ms=50.0,
        ),
        RowSpec("9b", "  same, + Idempotency-Key", CONNECTIONS, "10r"),
        RowSpec(
            "10",
            "HTTP GET member by id, API key, 16 conns",
            CONNECTIONS,
            "10r",
            min_rate=5_000,
            max_p99_ms=20.0,
        ),
        RowSpec(
            "10b",
            f"HTTP GET members page of {PAGE}, API key",
            CONNECTIONS,
            "10r",
            min_rate=5_000,
            max_p99_ms=20.0,
        ),
        RowSpec("10r", "  raw: GET /health/live, same client", CONNECTIONS, role="baseline"),
        RowSpec("11", "API peak RSS in rows 9-10r: MiB, < 300", CONNECTIONS),
        RowSpec(
            "12",
            f"HTTP login, Argon2id m={POLICY.memory_kib // 1024} MiB "
            f"t={POLICY.iterations} p={POLICY.lanes}",
            LOGIN_CONNECTIONS,
        ),
        RowSpec(
            "19",
            "HTTP access flow: submit, signed approval, execute",
            FLOW_CONNECTIONS,
        ),
    )
}


class HttpError(Exception):
    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {text[:200]}")


def expect(response: httpx.Response, status: int) -> Any:
    """An httpx answer's JSON (set-up), or ``HttpError`` on any status but ``status``."""
    if response.status_code != status:
        request = response.request
        raise HttpError(request.method, request.url.path, response.status_code, response.text)
    return response.json() if response.content else None


SETUP, READY, LOGINS, HEALTH = 1, 2, 3, 16
"""Blocks of loopback addresses (127.<block>.0.0/16) for ``forwarded``; HEALTH + writer."""


def forwarded(block: int, n: int) -> dict[str, str]:
    """Public routes are limited per client address: the ``n``-th address of ``block``."""
    address = ipaddress.IPv4Address(f"127.{block}.0.0") + n % 65_536
    return {"X-Forwarded-For": str(address)}


# ---- the API process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class ApiProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def memory_kib(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (the peak) from /proc, in KiB."""
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
        return values

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@contextmanager
def api_process(db: BenchDatabase, nats_url: str, master_key: bytes) -> Iterator[ApiProcess]:
    """``strongroom serve`` on a free port; stopped (SIGINT, gracefully) afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(
        STRONGROOM_DATABASE_URL=db.app_url,
        STRONGROOM_NATS_URL=nats_url,
        STRONGROOM_MASTER_KEY=base64.b64encode(master_key).decode(),
        STRONGROOM_LOG_HOST=LOG_HOST,
        STRONGROOM_LOG_LEVEL="WARNING",
    )
    command = ["-c", "from replay.cli import main; main()"]
    profile = os.environ.get("STRONGROOM_BENCH_PROFILE")
    temp_dir = Path(tempfile.mkdtemp(prefix="strongroom-bench-api-"))
    if profile:
        script = temp_dir / "serve.py"
        script.write_text("from replay.cli import main\nmain()\n")
        command = ["-m", "cProfile", "-o", str(Path(profile).resolve()), str(script)]
    log = temp_dir / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    api = ApiProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_ready(api)
        yield api
    finally:
        process.send_signal(signal.SIGINT)  # like Ctrl-C; the profiler writes on it
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for path in temp_dir.iterdir():
            path.unlink()
        temp_dir.rmdir()


def _wait_until_ready(api: ApiProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=api.base_url, timeout=2.0) as client:
        for n in itertools.count():
            if api.process.poll() is not None:
                raise RuntimeError(f"the API process exited:\n{api.log_tail()}")
            try:
                if client.get("/health/ready", headers=forwarded(READY, n)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not become ready:\n{api.log_tail()}")
            time.sleep(0.1)


# ---- set-up through the API ------------------------------------------------------------------


@dataclass(slots=True)
class Tenant:
    tenant_id: UUID
    slug: str
    owner_email: str
    keys: list[str] = field(default_factory=list)
    member_ids: list[str] = field(default_factory=list)
    """Members invited in rows 9 and 9b (up to 256) and by ``top_up``, for row 10."""


@dataclass(slots=True)
class World:
    tenants: list[Tenant]
    addresses: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    topped_up: int = 0
    """Members invited outside the rows, so that every tenant has a full page."""

    @property
    def keys(self) -> list[tuple[Tenant, dict[str, str]]]:
        """Every API key with its tenant, interleaved across tenants."""
        return [
            (t, {"Authorization": f"Bearer {t.keys[k]}"})
            for k in range(KEYS_PER_TENANT)
            for t in self.tenants
        ]


async def platform_token(db: BenchDatabase) -> str:
    conn = await asyncpg.connect(db.owner_url)
    try:
        token = await create_platform_token(conn, only_if_none=False)
    finally:
        await conn.close()
    assert token is not None
    return token


async def set_up(api: ApiProcess, platform: str, tenants: int) -> World:
    """Tenants whose owners joined, logged in and issued ``KEYS_PER_TENANT`` keys each."""
    world = World([])
    run = secrets.token_hex(3)
    slots = asyncio.Semaphore(4)  # joining and logging in hash passwords (Argon2id)

    async def one(client: httpx.AsyncClient, i: int) -> Tenant:
        slug = f"bench-{run}-{i}"
        email = f"owner@{slug}.example"
        async with slots:
            created = expect(
                await client.post(
                    "/v1/tenants",
                    json={"name": f"Bench {i}", "slug": slug, "owner_email": email},
                    headers={
                        "Authorization": f"Bearer {platform}",
                        **forwarded(SETUP, next(world.addresses)),
                    },
                ),
                201,
            )
            expect(
                await client.post(
                    "/v1/invites/accept",
                    json={"token": created["invite_token"], "password": PASSWORD},
                    headers=forwarded(SETUP, next(world.addresses)),
                ),
                200,
            )
            session = expect(
                await client.post(
                    "/v1/auth/login",
                    json={"tenant": slug, "email": email, "password": PASSWORD},
                    headers=forwarded(SETUP, next(world.addresses)),
                ),
                200,
            )
        tenant = Tenant(UUID(created["tenant_id"]), slug, email)
        for k in range(KEYS_PER_TENANT):
            issued = expect(
                await client.post(
                    "/v1/api-keys",
                    json={"name": f"bench {k}", "scopes": SCOPES},
                    headers={"Authorization": f"Bearer {session['token']}"},
                ),
                201,
            )
            tenant.keys.append(issued["key"])
        return tenant

    async with httpx.AsyncClient(base_url=api.base_url, timeout=60.0) as client:
        world.tenants = list(await asyncio.gather(*(one(client, i) for i in range(tenants))))
    return world


# ---- the load generator ------------------------------------------------------------------------


class Connections:
    """One lean keep-alive connection (``_loadgen.Connection``) per writer: every measured
    request of this suite goes through ``call``."""

    def __init__(self, base_url: str, count: int) -> None:
        self.connections = [Connection(base_url) for _ in range(count)]

    async def call(
        self,
        i: int,
        method: str,
        path: str,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        payload: object = None,
    ) -> Any:
        """Writer ``i``'s request (``payload`` sent as JSON): the JSON it answers, or
        ``HttpError`` on any status but ``status``."""
        body = None
        if payload is not None:
            body = JSON_ENCODER.encode(payload)
            headers = {**(headers or {}), "Content-Type": "application/json"}
        response = await self.connections[i].request(method, path, headers=headers, body=body)
        if response.status != status:
            raise HttpError(method, path, response.status, response.body.decode(errors="replace"))
        return JSON_DECODER.decode(response.body) if response.body else None

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


class Clients:
    """One ``httpx.AsyncClient`` (one keep-alive connection) per writer: for set-up
    (``top_up``) and the ingestion suite, not for this suite's measured requests."""

    def __init__(self, base_url: str, count: int) -> None:
        self.clients = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=30.0,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            for _ in range(count)
        ]

    def __getitem__(self, index: int) -> httpx.AsyncClient:
        return self.clients[index]

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def top_up(api: ApiProcess, world: World, members: int) -> None:
    """Invite (unmeasured) until every tenant has ``members`` members besides its owner."""

    async def fill(client: httpx.AsyncClient, tenant: Tenant) -> None:
        headers = {"Authorization": f"Bearer {tenant.keys[0]}"}
        for n in range(len(tenant.member_ids), members):
            body = expect(
                await client.post(
                    "/v1/members",
                    json={"email": f"top-up-{n}@{tenant.slug}.example", "role": "auditor"},
                    headers=headers,
                ),
                201,
            )
            tenant.member_ids.append(body["member_id"])
            world.topped_up += 1

    clients = Clients(api.base_url, len(world.tenants))
    try:
        await asyncio.gather(*(fill(clients[i], t) for i, t in enumerate(world.tenants)))
    finally:
        await clients.close()


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds used so far by the API process, PostgreSQL's processes (by pid), this
    process (the load generator) and the whole machine (all but idle and I/O wait), and
    when (``time.monotonic``), for the load generator's share of the machine."""

    api: float
    postgres: dict[int, float]
    generator: float
    machine: float
    at: float

    @classmethod
    async def now(cls, rig: Rig) -> CpuTimes:
        pids = [r["pid"] for r in await rig.pool.fetch("SELECT pid FROM pg_stat_activity")]
        postgres = {pid: t for pid in pids if (t := _cpu_s(pid)) is not None}
        ticks = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(t) for t in ticks[:3] + ticks[5:8]) / os.sysconf("SC_CLK_TCK")
        api = _cpu_s(rig.api.process.pid) or 0.0
        return cls(api, postgres, time.process_time(), busy, time.monotonic())

    def note(self, later: CpuTimes, requests: int) -> str:
        per = 1000 / max(requests, 1)
        api = (later.api - self.api) * per
        postgres = sum(t - self.postgres.get(pid, 0.0) for pid, t in later.postgres.items()) * per
        generator = (later.generator - self.generator) * per
        rest = (later.machine - self.machine) * per - api - postgres - generator
        cpus = os.cpu_count() or 1
        share = (later.generator - self.generator) / max((later.at - self.at) * cpus, 1e-9)
        return (
            f"CPU ms per request: API {api:.2f}, PostgreSQL {postgres:.2f}, load generator "
            f"{generator:.2f} ({share:.0%} of {cpus} CPUs), rest (NATS, other work) "
            f"{max(rest, 0):.2f}"
        )


@dataclass(slots=True)
class Rig:
    """What the rows use: the API, its tenants, and a pool for checks (app role)."""

    api: ApiProcess
    world: World
    pool: asyncpg.Pool
    store: EventStore

    async def measure(self, key: str, window: Window, make: Any) -> RowResult:
        """Row ``key``: ``make(connections)`` gives the operation of its closed loop."""
        spec = SPECS[key]
        connections = Connections(self.api.base_url, spec.writers)
        try:
            op: AsyncOp = make(connections)
            before = await CpuTimes.now(self)
            measurement = await run_async(op, spec.writers, window)
            after = await CpuTimes.now(self)
        finally:
            await connections.close()
        requests = measurement.total_events + measurement.errors
        return RowResult(spec, measurement, notes=[before.note(after, requests)])

    async def log_size(self) -> int:
        size = 0
        for tenant in self.world.tenants:
            head = await self.store.head(tenant.tenant_id)
            size += head.size if head is not None else 0
        return size

    async def catch_up(self, nats_url: str) -> None:
        """What the members projection worker would do: apply every tenant's new events."""
        runner = ProjectionRunner(self.pool, self.store, Broker(nats_url), MEMBERS)
        await runner.sweep(patient=False)


async def health(rig: Rig, window: Window) -> RowResult:
    sent = [0] * SPECS["10r"].writers

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            n = sent[i]
            sent[i] += 1
            address = forwarded(HEALTH + i, n // ANONYMOUS_PER_ADDRESS)
            await connections.call(i, "GET", "/health/live", 200, headers=address)
            return 1

        return op

    return await rig.measure("10r", window, make)


async def invites(rig: Rig, window: Window, key: str) -> RowResult:
    keys = rig.world.keys
    counter = itertools.count()
    idempotent = key == "9b"

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            n = next(counter)
            tenant, headers = keys[n % len(keys)]
            if idempotent:
                headers = {**headers, "Idempotency-Key": f"bench-{key}-{n}"}
            body = await connections.call(
                i,
                "POST",
                "/v1/members",
                201,
                headers=headers,
                payload={"email": f"m{key}-{n}@{tenant.slug}.example", "role": "requester"},
            )
            if len(tenant.member_ids) < MEMBER_IDS_PER_TENANT:
                tenant.member_ids.append(body["member_id"])
            return 1

        return op

    before = await rig.log_size()
    row = await rig.measure(key, window, make)
    grown, invited = await rig.log_size() - before, row.measurement.total_events
    if grown != invited:
        row.problems.append(f"the logs grew by {grown} events, {invited} invites answered 201")
    return row


async def member_by_id(rig: Rig, window: Window) -> RowResult:
    keys = rig.world.keys
    counter = itertools.count()

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            n = next(counter)
            tenant, headers = keys[n % len(keys)]
            member = tenant.member_ids[(n // len(keys)) % len(tenant.member_ids)]
            body = await connections.call(i, "GET", f"/v1/members/{member}", 200, headers=headers)
            if body["member_id"] != member:
                raise AssertionError(f"asked for member {member}, got {body['member_id']}")
            return 1

        return op

    return await rig.measure("10", window, make)


async def member_pages(rig: Rig, window: Window) -> RowResult:
    keys = rig.world.keys
    counter = itertools.count()

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            _, headers = keys[next(counter) % len(keys)]
            body = await connections.call(
                i, "GET", f"/v1/members?limit={PAGE}", 200, headers=headers
            )
            if len(body["items"]) != PAGE:
                raise AssertionError(f"a page of {len(body['items'])} members, not {PAGE}")
            return 1

        return op

    return await rig.measure("10b", window, make)


async def logins(rig: Rig, window: Window) -> RowResult:
    tenants = rig.world.tenants
    counter = itertools.count()

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            n = next(counter)
            tenant = tenants[n % len(tenants)]
            body = await connections.call(
                i,
                "POST",
                "/v1/auth/login",
                200,
                headers=forwarded(LOGINS, n // LOGINS_PER_ADDRESS),
                payload={"tenant": tenant.slug, "email": tenant.owner_email, "password": PASSWORD},
            )
            if body["status"] != "authenticated":
                raise AssertionError(f"login answered {body['status']}")
            return 1

        return op

    return await rig.measure("12", window, make)


@dataclass(slots=True)
class Flow:
    """A tenant's approver (its owner's session), requester (an admin's) and connector."""

    approver: dict[str, str]
    requester: dict[str, str]
    connector_id: str


async def flow_set_up(api: ApiProcess, world: World) -> list[Flow]:
    """Per tenant: the owner logs in, invites an admin who joins and logs in, and
    registers a connector (all through the HTTP API)."""

    async def one(client: httpx.AsyncClient, tenant: Tenant) -> Flow:
        async def login(email: str) -> dict[str, str]:
            body = expect(
                await client.post(
                    "/v1/auth/login",
                    json={"tenant": tenant.slug, "email": email, "password": PASSWORD},
                    headers=forwarded(SETUP, next(world.addresses)),
                ),
                200,
            )
            return {"Authorization": f"Bearer {body['token']}"}

        owner = await login(tenant.owner_email)
        email = f"requester@{tenant.slug}.example"
        invited = expect(
            await client.post("/v1/members", json={"email": email, "role": "admin"}, headers=owner),
            201,
        )
        expect(
            await client.post(
                "/v1/invites/accept",
                json={"token": invited["invite_token"], "password": PASSWORD},
                headers=forwarded(SETUP, next(world.addresses)),
            ),
            200,
        )
        connector = expect(
            await client.post(
                "/v1/connectors",
                json={"kind": "generic", "name": "bench", "config": {}},
                headers=owner,
            ),
            201,
        )
        return Flow(owner, await login(email), str(connector["connector_id"]))

    async with httpx.AsyncClient(base_url=api.base_url, timeout=60.0) as client:
        return [await one(client, t) for t in world.tenants]


async def access_flows(rig: Rig, window: Window, flows: list[Flow]) -> RowResult:
    """Row 19: one operation is a whole flow, three requests in a row: submit a request,
    approve it (signed with the tenant's Ed25519 key), execute it into a grant."""
    counter = itertools.count()

    def make(connections: Connections) -> AsyncOp:
        async def op(i: int) -> int:
            n = next(counter)
            flow = flows[n % len(flows)]
            made = await connections.call(
                i,
                "POST",
                "/v1/access-requests",
                201,
                headers=flow.requester,
                payload={
                    "connector_id": flow.connector_id,
                    "resource": f"db/bench/{n}",
                    "access_level": "read",
                    "justification": "benchmark",
                    "duration_seconds": 3600,
                },
            )
            request_id = made["request_id"]
            await connections.call(
                i,
                "POST",
                f"/v1/access-requests/{request_id}/decisions",
                201,
                headers=flow.approver,
                payload={"decision": "approve"},
            )
            grant = await connections.call(
                i,
                "POST",
                f"/v1/access-requests/{request_id}/execution",
                201,
                headers=flow.requester,
            )
            if grant["request_id"] != request_id:
                raise AssertionError(f"executed {request_id}, got a grant of {grant['request_id']}")
            return 1

        return op

    return await rig.measure("19", window, make)


# ---- memory --------------------------------------------------------------------------------------


class RssSampler:
    """The API process's largest ``VmRSS`` while running (an asyncio task)."""

    def __init__(self, api: ApiProcess) -> None:
        self.api = api
        self.peak_kib = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, self.api.memory_kib()["VmRSS"])
            self.samples += 1
            await asyncio.sleep(RSS_SAMPLE_S)

    def start(self) -> None:
        self.peak_kib = self.api.memory_kib()["VmRSS"]
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak_kib = max(self.peak_kib, self.api.memory_kib()["VmRSS"])


def rss_row(sampler: RssSampler, at_start_kib: int, lifetime_peak_kib: int) -> RowResult:
    peak_mib = sampler.peak_kib / 1024
    measurement = Measurement(round(peak_mib), 0, 1.0, 0.0, 0.0, 0, None, 0)
    row = RowResult(SPECS["11"], measurement)
    row.notes.append(
        f"API RSS {at_start_kib / 1024:.0f} MiB after set-up, peak {peak_mib:.1f} MiB in "
        f"{sampler.samples} samples, VmHWM {lifetime_peak_kib / 1024:.1f} MiB at the end"
    )
    row.passed = peak_mib < RSS_LIMIT_MIB
    return row


# ---- the suite ----------------------------------------------------------------------------------


async def _run(db: BenchDatabase, nats_url: str, window: Window) -> list[RowResult]:
    master_key = secrets.token_bytes(32)
    platform = await platform_token(db)
    pool = await create_pool(db.app_url, min_size=1, max_size=4)
    try:
        with api_process(db, nats_url, master_key) as api:
            world = await set_up(api, platform, TENANTS)
            store = EventStore(pool, Keyring(master_key), log_host=LOG_HOST)
            rig = Rig(api, world, pool, store)
            at_start = api.memory_kib()["VmRSS"]
            sampler = RssSampler(api)
            sampler.start()
            row10r = await health(rig, window)
            row9 = await invites(rig, window, "9")
            row9b = await invites(rig, window, "9b")
            await top_up(api, world, PAGE)
            await rig.catch_up(nats_url)
            held = await member_stats(pool, [t.tenant_id for t in world.tenants])
            invited = row9.measurement.total_events + row9b.measurement.total_events
            if held.members != TENANTS + invited + world.topped_up:
                row9b.problems.append(
                    f"the members read model holds {held.members} members, "
                    f"{TENANTS + invited + world.topped_up} joined or were invited"
                )
            row10 = await member_by_id(rig, window)
            row10b = await member_pages(rig, window)
            await sampler.stop()
            row11 = rss_row(sampler, at_start, api.memory_kib()["VmHWM"])
            row12 = await logins(rig, window)
            row19 = await access_flows(rig, window, await flow_set_up(api, world))
            if api.process.poll() is not None:
                raise RuntimeError(f"the API process exited:\n{api.log_tail()}")
    finally:
        await pool.close()
    rows = [row9, row9b, row10, row10b, row10r, row12, row19]
    evaluate(rows, window)
    return [row9, row9b, row10, row10b, row10r, row11, row12, row19]


def run_suite(db: BenchDatabase, nats_url: str, *, quick: bool) -> list[RowResult]:
    return uvloop.run(_run(db, nats_url, QUICK if quick else FULL))


def main(argv: list[str]) -> int:
    """This suite alone: its table, and its JSON as ``bench-results/http-<UTC time>.json``
    (``latest.json`` is left to ``make bench``)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_http")
    parser.add_argument("--quick", action="store_true", help="about 1 s per row (smoke run)")
    args = parser.parse_args(argv)
    with bench_database() as db, bench_nats() as nats_url:
        machine = machine_info(db)
        rows = run_suite(db, nats_url, quick=args.quick)
    print_table(machine, rows, quick=args.quick)
    window = QUICK if args.quick else FULL
    path = write_suite_json(
        "http",
        machine,
        {
            "quick": args.quick,
            "warmup_s": window.warmup,
            "measure_s": window.measure,
            "http": settings(),
        },
        rows,
    )
    print(f"results: {path}")
    return 1 if any(r.problems for r in rows) else 0


def settings() -> dict[str, object]:
    """This suite's settings, for the JSON."""
    return {
        "connections": CONNECTIONS,
        "login_connections": LOGIN_CONNECTIONS,
        "tenants": TENANTS,
        "api_keys_per_tenant": KEYS_PER_TENANT,
        "page": PAGE,
        "argon2id": {
            "memory_kib": POLICY.memory_kib,
            "iterations": POLICY.iterations,
            "lanes": POLICY.lanes,
        },
        "httpx": httpx.__version__,
    }


if __name__ == "__main__":
    tune_collector()  # as the `strongroom` entry point does: the rows run its code paths
    sys.exit(main(sys.argv[1:]))
