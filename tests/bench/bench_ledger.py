"""The ledger: proofs from Postgres at 1M events, the notary across 1,000 tenants.

Rows (targets from PERFORMANCE.md):

13  inclusion proof from Postgres, one tenant of 1M events, random leaves against the
    full size, one connection, one proof at a time: p50/p99 (target p99 < 5 ms).
    Each proof is checked against the root the tenant's head gives.
13b consistency proof, same tenant, random old size to the full size (target p99 < 5 ms).
13r raw: one primary-key read of ``event_log`` in a tenant transaction, same connection,
    the floor of any proof read (a reference, no target).
15  receipt check with the openssl-only script (docs/auditor/verify-receipt.sh), a receipt of
    a random leaf of row 13's tenant, one run at a time (target < 100 ms; p99 is judged).
14  notary: one round over 1,000 tenants of 20 events each, first checkpoint each
    (checkpoints/s; includes the key activation event, signing, the row and the fsynced
    file per tenant). No target in PERFORMANCE.md: the issue asks for the figure.

``--quick``: 100,000 events, 100 tenants, a second of proofs.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import subprocess
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from infra.db import create_pool, tenant_transaction
from infra.eventstore import Actor, EventStore, NewEvent, origin_for
from infra.keyring import Keyring
from infra.ledger import consistency_proof, inclusion_proof, stored_root
from infra.merkle import root_from_inclusion, verify_consistency
from infra.notary import CheckpointDirectory, Notary
from infra.notes import Checkpoint, Note, Receipt, Signer, sign_note
from tests.bench._harness import Measurement, percentile
from tests.bench._stack import BenchDatabase
from tests.bench.bench_append import LOG_HOST, RowResult, RowSpec, evaluate

BATCH = 1000
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "auditor" / "verify-receipt.sh"
BUILD_WRITERS = 4
ACTOR = Actor("system", "bench-ledger")

SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec("13", "inclusion proof from PG, 1M-event tenant, 1 conn", 1, "13r", max_p99_ms=5),
        RowSpec("13b", "  consistency proof, same tenant", 1, "13r", max_p99_ms=5),
        RowSpec("13r", "  raw: one PK read of event_log, same conn", 1, role="baseline"),
        RowSpec("14", "notary round, 1,000 tenants x 20 events: ckpt/s", 4),
        RowSpec("15", "receipt check, openssl-only script, 1M-event log", 1, max_p99_ms=100),
    )
}


@dataclass(frozen=True, slots=True)
class Scale:
    events: int
    proof_seconds: float
    tenants: int


FULL = Scale(events=1_000_000, proof_seconds=10.0, tenants=1000)
QUICK = Scale(events=100_000, proof_seconds=1.0, tenants=100)


async def build_big_tenant(store: EventStore, events: int) -> UUID:
    tenant = uuid4()
    per_writer = events // BUILD_WRITERS // BATCH

    async def writer(w: int) -> None:
        for b in range(per_writer):
            batch = [
                NewEvent(stream=f"doc-w{w}", type="document.imported", data={"n": b * BATCH + i})
                for i in range(BATCH)
            ]
            await store.append(
                tenant, batch, expected={f"doc-w{w}": None}, command_id=uuid4(), actor=ACTOR
            )

    await asyncio.gather(*(writer(w) for w in range(BUILD_WRITERS)))
    return tenant


async def measure(seconds: float, one: object) -> Measurement:
    """Call ``one()`` back to back for ``seconds`` (after a 0.5 s warm-up)."""
    assert callable(one)
    latencies: array[float] = array("d")
    errors = 0
    first_error: str | None = None
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        await one()
    started = time.perf_counter()
    deadline = started + seconds
    while (t0 := time.perf_counter()) < deadline:
        try:
            await one()
        except Exception as e:  # a failed proof is a problem of the row, not a crash
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            continue
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Measurement(
        events=len(ordered),
        commands=len(ordered),
        seconds=elapsed,
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        errors=errors,
        first_error=first_error,
        total_events=len(ordered),
    )


async def proof_rows(pool: asyncpg.Pool, store: EventStore, scale: Scale) -> list[RowResult]:
    tenant = await build_big_tenant(store, scale.events)
    head = await store.head(tenant)
    assert head is not None
    size = head.size
    root = head.root
    rng = random.Random(13)

    async def one_inclusion() -> None:
        index = rng.randrange(size)
        async with tenant_transaction(pool, tenant, readonly=True) as conn:
            leaf_hash = await conn.fetchval(
                "SELECT leaf_hash FROM event_log WHERE tenant_id = $1 AND seq = $2",
                tenant,
                index + 1,
            )
            proof = await inclusion_proof(conn, tenant, index, size)
        if root_from_inclusion(index, size, leaf_hash, proof) != root:
            raise AssertionError(f"the proof of leaf {index} does not lead to the root")

    samples: list[tuple[int, list[bytes]]] = []

    async def one_consistency() -> None:
        old = rng.randrange(1, size)
        async with tenant_transaction(pool, tenant, readonly=True) as conn:
            proof = await consistency_proof(conn, tenant, old, size)
        if len(samples) < 100:
            samples.append((old, proof))

    async def one_read() -> None:
        async with tenant_transaction(pool, tenant, readonly=True) as conn:
            await conn.fetchval(
                "SELECT leaf_hash FROM event_log WHERE tenant_id = $1 AND seq = $2",
                tenant,
                rng.randrange(size) + 1,
            )

    rows = [
        RowResult(SPECS["13"], await measure(scale.proof_seconds, one_inclusion)),
        RowResult(SPECS["13b"], await measure(scale.proof_seconds, one_consistency)),
        RowResult(SPECS["13r"], await measure(scale.proof_seconds, one_read)),
    ]
    # Checked after timing: each proof must link the old size's stored root to the head's.
    async with tenant_transaction(pool, tenant, readonly=True) as conn:
        for old, proof in samples:
            verify_consistency(old, size, await stored_root(conn, tenant, old), root, proof)
    rows.append(await script_row(pool, tenant, size, root, runs=10 if size < 1_000_000 else 40))
    return rows


async def script_row(
    pool: asyncpg.Pool, tenant: UUID, size: int, root: bytes, *, runs: int
) -> RowResult:
    """Receipts as the service builds them (stored proof, signed checkpoint), checked by
    the shell script in a fresh process each time, as an auditor would run it."""
    signer = Signer.generate(LOG_HOST)
    origin = origin_for(LOG_HOST, tenant)
    body = Checkpoint(origin, size, root).body()
    note = Note(body, (sign_note(body, signer),))
    rng = random.Random(15)
    latencies: list[float] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-receipt-") as folder:
        work = Path(folder)
        (work / "key.pem").write_text(signer.verifier.pem)
        for _ in range(runs):
            index = rng.randrange(size)
            async with tenant_transaction(pool, tenant, readonly=True) as conn:
                leaf = await conn.fetchval(
                    "SELECT leaf FROM event_log WHERE tenant_id = $1 AND seq = $2",
                    tenant,
                    index + 1,
                )
                proof = await inclusion_proof(conn, tenant, index, size)
            (work / "leaf.bin").write_bytes(leaf)
            (work / "receipt").write_text(Receipt(index, tuple(proof), note).text())
            argv = ["bash", str(SCRIPT), "leaf.bin", "receipt", "key.pem", LOG_HOST, origin]
            started = time.perf_counter()
            done = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=False)
            latencies.append(time.perf_counter() - started)
            if done.returncode != 0:
                errors.append(done.stderr.strip())
    ordered = sorted(latencies)
    measurement = Measurement(
        len(ordered) - len(errors),
        len(ordered),
        sum(latencies),
        percentile(ordered, 0.50) * 1000,
        percentile(ordered, 0.99) * 1000,
        len(errors),
        errors[0] if errors else None,
        len(ordered),
    )
    row = RowResult(SPECS["15"], measurement)
    row.notes.append(f"{runs} runs; rate = receipts checked per second, one at a time")
    return row


async def notary_row(pool: asyncpg.Pool, store: EventStore, scale: Scale) -> RowResult:
    tenants = [uuid4() for _ in range(scale.tenants)]
    gate = asyncio.Semaphore(16)

    async def fill(tenant: UUID) -> None:
        async with gate:
            await store.append(
                tenant,
                [
                    NewEvent(stream="doc-1", type="document.imported", data={"n": i})
                    for i in range(20)
                ],
                expected={"doc-1": None},
                command_id=uuid4(),
                actor=ACTOR,
            )

    await asyncio.gather(*(fill(t) for t in tenants))
    with tempfile.TemporaryDirectory(prefix="strongroom-bench-checkpoints-") as folder:
        notary = Notary(
            pool,
            store,
            [Signer.generate(LOG_HOST)],
            directory=CheckpointDirectory(Path(folder)),
        )
        started = time.perf_counter()
        outcomes = await notary.sign_due()
        seconds = time.perf_counter() - started
    signed = [o for o in outcomes if o.size is not None and o.tenant_id in set(tenants)]
    refused = [o for o in outcomes if o.refused]
    measurement = Measurement(len(signed), 0, seconds, 0.0, 0.0, len(refused), None, len(signed))
    row = RowResult(SPECS["14"], measurement)
    if len(signed) != len(tenants):
        row.problems.append(f"signed {len(signed)} of {len(tenants)} tenants")
    row.notes.append(f"{seconds:.2f} s for the round; rate = checkpoints/s")
    return row


async def _run(db: BenchDatabase, scale: Scale) -> list[RowResult]:
    pool = await create_pool(db.app_url, min_size=4, max_size=16)
    store = EventStore(pool, Keyring(secrets.token_bytes(32)), log_host=LOG_HOST)
    try:
        rows = await proof_rows(pool, store, scale)
        rows.append(await notary_row(pool, store, scale))
    finally:
        await pool.close()
    evaluate(rows, None)
    return rows


def run_suite(db: BenchDatabase, *, quick: bool) -> list[RowResult]:
    return asyncio.run(_run(db, QUICK if quick else FULL))
