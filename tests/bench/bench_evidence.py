"""Offline verification of an evidence bundle (``strongroom verify BUNDLE``): events/s.

Rows (the issue's target: >= 200,000 events/s):

16  ``verify_bundle`` of a bundle of N events, one process, with the log key and the
    witness key given and a threshold of 1: the manifest's SHA-256 of every file, every
    leaf's seq and log (located by canonical key order), leaf hash, chain hash, the
    Merkle root at each checkpoint, signatures, cosignatures and consistency proofs;
16b the same with ``full=True``: every leaf parsed and re-encoded canonically (no target);
16r raw: read ``leaves.jsonl`` line by line and SHA-256 each leaf once, the floor of any
    verifier of these files in Python (a reference, no target).

The bundle is built here, without a database, with ``infra.merkle`` and ``infra.notes``:
leaves of about 550 bytes like the append rows' events, a checkpoint every 10,000 events
signed by a log key and cosigned by a witness, the proofs between them. Each row runs once
on a warm page cache (after one untimed run of row 16) and must find the bundle intact.
No database or NATS. ``--quick``: 50,000 events.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from infra import canonical
from infra.collector import tune_collector
from infra.evidence import (
    FORMAT,
    HASHES,
    LEAVES,
    LOG_KEYS,
    MANIFEST,
    README,
    WITNESS_KEYS,
    BundleReport,
    Counts,
    LogKeyEntry,
    Manifest,
    checkpoint_name,
    pem_name,
    proof_name,
    verify_bundle,
)
from infra.merkle import (
    MIN_STORED_LEVEL,
    ZERO_HASH,
    Frontier,
    Range,
    chain_hash,
    consistency_ranges,
    fold_range,
    leaf_hash,
    subtree_of_leaves,
)
from infra.notes import (
    COSIGNATURE_KEY_TYPE,
    Checkpoint,
    Note,
    Signer,
    cosign,
    format_hashes,
    sign_note,
)
from tests.bench._harness import Measurement
from tests.bench._report import print_table, write_suite_json
from tests.bench._stack import cpu_count, cpu_model
from tests.bench.bench_append import RowResult, RowSpec, evaluate, event_data

CHECKPOINT_EVERY = 10_000
FULL_EVENTS = 500_000
QUICK_EVENTS = 50_000
LOG_HOST = "bench.strongroom.localhost"

SPECS: dict[str, RowSpec] = {
    s.key: s
    for s in (
        RowSpec("16", "verify evidence bundle offline, 1 process", 1, "16r", 200_000),
        RowSpec("16b", "  same, --full (parse every leaf)", 1, "16r"),
        RowSpec("16r", "  raw: read lines + one SHA-256 per leaf", 1, role="baseline"),
    )
}


@dataclass(frozen=True, slots=True)
class Bundle:
    path: Path
    events: int
    log_key: Signer
    witness: Signer


def build_bundle(root: Path, events: int, every: int = CHECKPOINT_EVERY) -> Bundle:
    """Write a bundle of ``events`` synthetic events (seq 1..events) to the new dir ``root``."""
    tenant = uuid.uuid4()
    origin = f"{LOG_HOST}/t/{tenant}"
    log_key = Signer.generate(LOG_HOST)
    witness = Signer.generate("witness.bench.localhost", COSIGNATURE_KEY_TYPE)
    root.mkdir()
    (root / "checkpoints").mkdir()
    (root / "consistency").mkdir()
    (root / "keys").mkdir()
    frontier = Frontier()
    chain = ZERO_HASH
    hashes: list[bytes] = []
    nodes: dict[tuple[int, int], bytes] = {}
    roots: dict[int, bytes] = {}
    ts = "2026-11-24T10:00:00.000000Z"
    with (root / LEAVES).open("wb") as leaves, (root / HASHES).open("wb") as recorded:
        for seq in range(1, events + 1):
            leaf = canonical.encode(
                {
                    "actor": {"id": str(uuid.uuid4()), "kind": "user"},
                    "causation": None,
                    "correlation": str(uuid.uuid4()),
                    "data": event_data(seq),
                    "id": str(uuid.uuid4()),
                    "log": origin,
                    "pii": {},
                    "salt": base64.b64encode(uuid.uuid4().bytes).decode(),
                    "seq": seq,
                    "stream": f"document-d{seq % 1000}",
                    "ts": ts,
                    "type": "document.shared",
                    "v": 1,
                    "version": seq // 1000 + 1,
                }
            )
            h = leaf_hash(leaf)
            chain = chain_hash(chain, h)
            leaves.write(leaf + b"\n")
            recorded.write(f"{h.hex()} {chain.hex()}\n".encode())
            hashes.append(h)
            for node in frontier.append(h):
                if node.level >= MIN_STORED_LEVEL:
                    nodes[(node.level, node.index)] = node.hash
            if seq % every == 0 or seq == events:
                roots[seq] = frontier.root()

    def range_hash(range_: Range) -> bytes:
        known = {}
        for node in range_.complete_subtrees():
            first = node.index << node.level
            known[(node.level, node.index)] = (
                nodes[(node.level, node.index)]
                if node.level >= MIN_STORED_LEVEL
                else subtree_of_leaves(hashes[first : first + (1 << node.level)])
            )
        return fold_range(range_, known)

    sizes = sorted(roots)
    signed_at = int(time.time())
    for size in sizes:
        body = Checkpoint(origin, size, roots[size]).body()
        note = Note(body, (sign_note(body, log_key), cosign(body, witness, signed_at)))
        (root / checkpoint_name(size)).write_text(note.text())
    for old, new in itertools.pairwise(sizes):
        proof = [range_hash(r) for r in consistency_ranges(old, new)]
        (root / proof_name(old, new)).write_text(format_hashes(proof))
    verifier = log_key.verifier
    (root / pem_name(verifier)).write_text(verifier.pem)
    entry = LogKeyEntry(
        name=verifier.name,
        key_id=verifier.key_id.hex(),
        vkey=verifier.vkey,
        public_key_pem=verifier.pem,
        valid_from=datetime.now(UTC).isoformat(),
        valid_until=None,
        activated_seq=0,
        retired_seq=None,
    )
    (root / LOG_KEYS).write_bytes(msgspec.json.encode({"keys": [entry]}))
    (root / WITNESS_KEYS).write_text(witness.verifier.vkey + "\n")
    (root / README).write_text("A synthetic bundle for the benchmark.\n")
    files = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    manifest = Manifest(
        format=FORMAT,
        origin=origin,
        tenant=str(tenant),
        first=1,
        last=events,
        exported_at=datetime.now(UTC).isoformat(),
        last_checkpoint=sizes[-1],
        counts=Counts(
            events=events,
            checkpoints=len(sizes),
            consistency_proofs=len(sizes) - 1,
            log_keys=1,
            witness_keys=1,
        ),
        files=files,
    )
    (root / MANIFEST).write_bytes(msgspec.json.encode(manifest))
    return Bundle(root, events, log_key, witness)


def _timed(events: int, run: Callable[[], BundleReport | int]) -> tuple[Measurement, str | None]:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    problem = None
    if isinstance(result, BundleReport) and not result.ok:
        problem = f"the bundle did not verify: {result.failure}"
    elif isinstance(result, BundleReport) and result.events != events:
        problem = f"checked {result.events} of {events} events"
    return Measurement(events, 0, seconds, 0.0, 0.0, 0, None, events), problem


def run_rows(bundle: Bundle) -> list[RowResult]:
    def verify(full: bool) -> Callable[[], BundleReport]:
        return lambda: verify_bundle(
            bundle.path,
            log_keys=[bundle.log_key.verifier],
            witnesses=[bundle.witness.verifier],
            witness_threshold=1,
            full=full,
        )

    def raw() -> int:
        sha256 = hashlib.sha256
        count = 0
        with (bundle.path / LEAVES).open("rb") as leaves:
            for line in leaves:
                sha256(b"\x00" + line[:-1]).digest()
                count += 1
        return count

    verify(False)()  # warm the page cache and the interpreter
    rows = []
    for key, run in (("16", verify(False)), ("16b", verify(True)), ("16r", raw)):
        measurement, problem = _timed(bundle.events, run)
        row = RowResult(SPECS[key], measurement)
        if problem:
            row.problems.append(problem)
        rows.append(row)
    rows[0].notes.append(
        f"{bundle.events:,} events of ~550 bytes, a checkpoint every {CHECKPOINT_EVERY:,}"
    )
    evaluate(rows, None)
    return rows


def run_suite(*, quick: bool) -> list[RowResult]:
    folder = Path(tempfile.mkdtemp(prefix="strongroom-bench-evidence-"))
    try:
        bundle = build_bundle(folder / "bundle", QUICK_EVENTS if quick else FULL_EVENTS)
        return run_rows(bundle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def machine() -> dict[str, str | int | bool]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": cpu_count(),
        "cpu": cpu_model(),
        "postgres": "not used",
        "python": platform.python_version(),
        "embedded_postgres": False,
    }


def main(argv: list[str]) -> int:
    """This suite alone: its table, and its JSON as ``bench-results/evidence-<UTC>.json``."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_evidence")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    args = parser.parse_args(argv)
    rows = run_suite(quick=args.quick)
    info = machine()
    print_table(info, rows, quick=args.quick)
    settings = {
        "quick": args.quick,
        "events": QUICK_EVENTS if args.quick else FULL_EVENTS,
        "checkpoint_every": CHECKPOINT_EVERY,
    }
    path = write_suite_json("evidence", info, settings, rows)
    print(f"results: {path}")
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    tune_collector()  # as the `strongroom` entry point does: the rows run its code paths
    sys.exit(main(sys.argv[1:]))
