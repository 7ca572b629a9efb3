"""Ingestion of other systems' audit events through HTTP, and the same events appended raw.

Rows (ratios against the raw row measured in the same run):

17.  ``POST /v1/audit-events/batch`` with batches of 100 events, API keys (``audit:ingest``)
     of 8 tenants round robin, 8 keep-alive connections; events/s;
17r. raw: the same checked events through ``Ingestor.record`` (one ``EventStore.append``
     per batch) in this process, 8 writers: the event store's own ceiling on this box;
18.  the same as 17 with batches of 1,000 events, target >= 20,000 events/s;
18r. raw for 18.

The events look like a busy system's: 40 actors per tenant, each with an e-mail address
(half of them) and an IP address (all), both personal data (encrypted per data subject),
and 4 to 6 metadata fields (about 300 bytes of JSON per event). The API runs as
``strongroom serve`` (see bench_http.py, whose child process and CPU accounting this
suite reuses). Each row notes the CPU per request (per batch).

Checks: every request answers 201; the tenants' logs grew by exactly the events the
rows answered for.

``python -m tests.bench.bench_ingest [--quick]`` runs this suite alone, writing
``bench-results/ingest-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson

from domain.ingest import ExternalAuditEvent, parse_batch
from infra.collector import tune_collector
from infra.db import create_pool
from infra.eventstore import Actor, EventStore
from infra.ingest import Ingestor
from infra.keyring import Keyring
from tests.bench._harness import AsyncOp, Window, run_async
from tests.bench._report import print_table, write_suite_json
from tests.bench._stack import BenchDatabase, bench_database, bench_nats, machine_info
from tests.bench.bench_append import FULL, QUICK, RowResult, RowSpec, evaluate
from tests.bench.bench_http import (
    LOG_HOST,
    PASSWORD,
    SETUP,
    ApiProcess,
    Clients,
    CpuTimes,
    api_process,
    expect,
    forwarded,
    platform_token,
)

CONNECTIONS = 8
TENANTS = 8
KEYS_PER_TENANT = 2
ACTORS = 40
SIZES = {"17": 100, "18": 1000}

SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec("17", "HTTP ingest, batches of 100, API keys, 8 conns", CONNECTIONS, "17r"),
        RowSpec("17r", "  raw: same events, EventStore.append, 8 writers", CONNECTIONS, role="raw"),
        RowSpec(
            "18",
            "HTTP ingest, batches of 1,000, API keys, 8 conns",
            CONNECTIONS,
            "18r",
            min_rate=20_000,
        ),
        RowSpec("18r", "  raw: same events, EventStore.append, 8 writers", CONNECTIONS, role="raw"),
    )
}


@dataclass(slots=True)
class Tenant:
    tenant_id: UUID
    keys: list[str] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Rig:
    """What CpuTimes and the rows need: the API, a pool (app role), the tenants."""

    api: ApiProcess
    pool: asyncpg.Pool
    store: EventStore
    ingestor: Ingestor
    tenants: list[Tenant]

    async def log_size(self) -> int:
        size = 0
        for tenant in self.tenants:
            head = await self.store.head(tenant.tenant_id)
            size += head.size if head is not None else 0
        return size


def batch_body(size: int, tenant_index: int) -> bytes:
    """``size`` events of ``ACTORS`` actors: personal data and a few metadata fields."""
    occurred = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    events: list[dict[str, Any]] = []
    for i in range(size):
        actor = i % ACTORS
        event: dict[str, Any] = {
            "actor": f"user:{tenant_index}-{actor}",
            "action": ("document.read", "document.update", "login.succeeded")[i % 3],
            "resource": f"documents/{i % 97}/revisions/{i}",
            "outcome": ("success", "success", "denied", "failure")[i % 4],
            "occurred_at": occurred,
            "source_ip": f"198.51.100.{actor + 1}",
            "metadata": {
                "request_id": f"req-{i:08d}",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
                "bytes": 1024 + i,
                "tags": ["bench", "ingest"],
                **({"amount": "12.50", "currency": "EUR"} if i % 2 else {}),
            },
        }
        if actor % 2 == 0:
            event["actor_email"] = f"person{actor}@tenant{tenant_index}.example"
        events.append(event)
    return orjson.dumps({"events": events})


async def set_up(api: ApiProcess, platform: str) -> list[Tenant]:
    """Tenants whose owners joined, logged in and issued ingestion keys."""
    run = secrets.token_hex(3)
    addresses = itertools.count(1)

    async def one(client: httpx.AsyncClient, i: int) -> Tenant:
        slug = f"ingest-{run}-{i}"
        email = f"owner@{slug}.example"
        created = expect(
            await client.post(
                "/v1/tenants",
                json={"name": f"Ingest {i}", "slug": slug, "owner_email": email},
                headers={
                    "Authorization": f"Bearer {platform}",
                    **forwarded(SETUP, next(addresses)),
                },
            ),
            201,
        )
        expect(
            await client.post(
                "/v1/invites/accept",
                json={"token": created["invite_token"], "password": PASSWORD},
                headers=forwarded(SETUP, next(addresses)),
            ),
            200,
        )
        session = expect(
            await client.post(
                "/v1/auth/login",
                json={"tenant": slug, "email": email, "password": PASSWORD},
                headers=forwarded(SETUP, next(addresses)),
            ),
            200,
        )
        tenant = Tenant(UUID(created["tenant_id"]))
        for k in range(KEYS_PER_TENANT):
            issued = expect(
                await client.post(
                    "/v1/api-keys",
                    json={"name": f"ingest {k}", "scopes": ["audit:ingest"]},
                    headers={"Authorization": f"Bearer {session['token']}"},
                ),
                201,
            )
            tenant.keys.append(issued["key"])
            tenant.key_ids.append(issued["key_id"])
        return tenant

    async with httpx.AsyncClient(base_url=api.base_url, timeout=60.0) as client:
        tenants = []
        for i in range(TENANTS):  # joining and logging in hash passwords: one at a time
            tenants.append(await one(client, i))
    return tenants


async def measure(rig: Rig, key: str, window: Window, op_for: Any) -> RowResult:
    spec = SPECS[key]
    clients = Clients(rig.api.base_url, spec.writers)
    try:
        op: AsyncOp = op_for(clients)
        before = await CpuTimes.now(rig)  # type: ignore[arg-type]
        measurement = await run_async(op, spec.writers, window)
        after = await CpuTimes.now(rig)  # type: ignore[arg-type]
    finally:
        await clients.close()
    size = SIZES[key.rstrip("r")]
    requests = measurement.total_events // size + measurement.errors
    note = before.note(after, requests).replace("per request", "per batch")
    return RowResult(spec, measurement, notes=[note])


async def http_row(rig: Rig, window: Window, key: str) -> RowResult:
    size = SIZES[key]
    bodies = [batch_body(size, i) for i in range(len(rig.tenants))]
    senders = [
        (bodies[t], {"Authorization": f"Bearer {k}", "Content-Type": "application/json"})
        for i in range(KEYS_PER_TENANT)
        for t, tenant in enumerate(rig.tenants)
        for k in tenant.keys[i : i + 1]
    ]
    counter = itertools.count()

    def op_for(clients: Clients) -> AsyncOp:
        async def op(i: int) -> int:
            body, headers = senders[next(counter) % len(senders)]
            answer = expect(
                await clients[i].post("/v1/audit-events/batch", content=body, headers=headers),
                201,
            )
            if answer["count"] != size:
                raise AssertionError(f"{answer['count']} events recorded, {size} sent")
            return size

        return op

    return await checked(rig, key, window, op_for)


async def raw_row(rig: Rig, window: Window, key: str) -> RowResult:
    size = SIZES[key.rstrip("r")]
    now = datetime.now(UTC)
    batches: list[tuple[UUID, Actor, list[ExternalAuditEvent]]] = [
        (
            tenant.tenant_id,
            Actor("api_key", tenant.key_ids[0]),
            parse_batch(batch_body(size, t), now=now),
        )
        for t, tenant in enumerate(rig.tenants)
    ]
    counter = itertools.count()

    def op_for(clients: Clients) -> AsyncOp:
        async def op(i: int) -> int:
            tenant_id, actor, events = batches[next(counter) % len(batches)]
            result = await rig.ingestor.record(tenant_id, actor, events)
            return len(result.events)

        return op

    return await checked(rig, key, window, op_for)


async def checked(rig: Rig, key: str, window: Window, op_for: Any) -> RowResult:
    before = await rig.log_size()
    row = await measure(rig, key, window, op_for)
    grown, answered = await rig.log_size() - before, row.measurement.total_events
    if grown != answered:
        row.problems.append(f"the logs grew by {grown} events, {answered} were answered")
    return row


async def _run(db: BenchDatabase, nats_url: str, window: Window) -> list[RowResult]:
    master_key = secrets.token_bytes(32)
    platform = await platform_token(db)
    pool = await create_pool(db.app_url, min_size=2, max_size=8)
    try:
        with api_process(db, nats_url, master_key) as api:
            tenants = await set_up(api, platform)
            keyring = Keyring(master_key)
            store = EventStore(pool, keyring, log_host=LOG_HOST)
            ingestor = Ingestor(pool, store, keyring, clock=lambda: datetime.now(UTC))
            rig = Rig(api, pool, store, ingestor, tenants)
            rows = [
                await http_row(rig, window, "17"),
                await raw_row(rig, window, "17r"),
                await http_row(rig, window, "18"),
                await raw_row(rig, window, "18r"),
            ]
            if api.process.poll() is not None:
                raise RuntimeError(f"the API process exited:\n{api.log_tail()}")
    finally:
        await pool.close()
    evaluate(rows, window)
    return rows


def run_suite(db: BenchDatabase, nats_url: str, *, quick: bool) -> list[RowResult]:
    return asyncio.run(_run(db, nats_url, QUICK if quick else FULL))


def settings() -> dict[str, object]:
    return {
        "connections": CONNECTIONS,
        "tenants": TENANTS,
        "api_keys_per_tenant": KEYS_PER_TENANT,
        "actors_per_tenant": ACTORS,
        "batch_sizes": sorted(SIZES.values()),
        "event_bytes": len(batch_body(1000, 0)) // 1000,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_ingest")
    parser.add_argument("--quick", action="store_true", help="about 1 s per row (smoke run)")
    args = parser.parse_args(argv)
    with bench_database() as db, bench_nats() as nats_url:
        machine = machine_info(db)
        rows = run_suite(db, nats_url, quick=args.quick)
    print_table(machine, rows, quick=args.quick)
    window = QUICK if args.quick else FULL
    path = write_suite_json(
        "ingest",
        machine,
        {
            "quick": args.quick,
            "warmup_s": window.warmup,
            "measure_s": window.measure,
            "ingest": settings(),
        },
        rows,
    )
    print(f"results: {path}")
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    tune_collector()  # as the `strongroom` entry point does: the rows run its code paths
    sys.exit(main(sys.argv[1:]))
