"""``make bench``: run the benchmark suites, print one table, write JSON to ``bench-results/``.

Usage: ``python -m tests.bench [--quick] [--only SUITES]``. ``--quick`` measures about one
second per row (a smoke run; its numbers are not meant to be compared with the targets). The
append suite (rows 1-5), the projection suite (rows 6-8, with NATS), the HTTP suite (rows
9-12, the API as its own process), the ledger suite (rows 13-15) and the ingestion suite (rows
17-18, audit events through HTTP) each get a fresh embedded database; the evidence suite (row
16, offline bundle verification) needs none. Exits 1 only when a row had errors or its
checks found lost or extra events.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib.metadata import version

from infra.collector import tune_collector
from tests.bench import (
    bench_append,
    bench_evidence,
    bench_http,
    bench_ingest,
    bench_ledger,
    bench_projections,
)
from tests.bench._report import print_table, write_json
from tests.bench._stack import bench_database, bench_nats, machine_info

SUITES = ("append", "projections", "http", "ledger", "evidence", "ingest")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 1 s per row (smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(SUITES),
        help=f"comma-separated suites to run (default: all of {', '.join(SUITES)})",
    )
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    return args


def settings(quick: bool) -> dict[str, object]:
    window = bench_append.QUICK if quick else bench_append.FULL
    scale = bench_projections.QUICK_SCALE if quick else bench_projections.FULL_SCALE
    return {
        "quick": quick,
        "warmup_s": window.warmup,
        "measure_s": window.measure,
        "tenants": bench_append.TENANTS,
        "batch_events": bench_append.BATCH_EVENTS,
        "pool_max_size": bench_append.POOL_MAX,
        "projections_offered_commands_per_s": bench_projections.OFFERED_RATE,
        "projections_tenants": bench_projections.TENANTS,
        "projections": {
            "members_per_tenant": scale.members_per_tenant,
            "max_in_flight": bench_projections.MAX_IN_FLIGHT,
            "log": dataclasses.asdict(scale.log),
        },
        "http": bench_http.settings(),
        "ingest": bench_ingest.settings(),
        "nats_py": version("nats-py"),
        "asyncpg": version("asyncpg"),
        "eventsourcing": version("eventsourcing"),
        "psycopg": version("psycopg"),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rows = []
    machine: dict[str, str | int | bool] = {}
    if "append" in args.only:
        with bench_database() as db:
            machine = machine or machine_info(db)
            rows += bench_append.run_suite(db, quick=args.quick)
    if "projections" in args.only:
        with bench_database() as db, bench_nats() as nats_url:
            machine = machine or machine_info(db)
            rows += bench_projections.run_suite(db, nats_url, quick=args.quick)
    if "http" in args.only:
        with bench_database() as db, bench_nats() as nats_url:
            machine = machine or machine_info(db)
            rows += bench_http.run_suite(db, nats_url, quick=args.quick)
    if "ledger" in args.only:
        with bench_database() as db:
            machine = machine or machine_info(db)
            rows += bench_ledger.run_suite(db, quick=args.quick)
    if "evidence" in args.only:  # offline: no database
        machine = machine or bench_evidence.machine()
        rows += bench_evidence.run_suite(quick=args.quick)
    if "ingest" in args.only:
        with bench_database() as db, bench_nats() as nats_url:
            machine = machine or machine_info(db)
            rows += bench_ingest.run_suite(db, nats_url, quick=args.quick)
    print_table(machine, rows, quick=args.quick)
    path = write_json(machine, settings(args.quick), rows)
    print(f"results: {path}")
    # A missed target is a finding, not a crash; errors or lost events are.
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    tune_collector()  # as the `strongroom` entry point does: the rows run its code paths
    sys.exit(main(sys.argv[1:]))
