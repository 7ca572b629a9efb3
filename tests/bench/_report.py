"""Printing the benchmark table (rich) and writing it as JSON under ``bench-results/``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from tests.bench.bench_append import RowResult

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench-results"


def _target_text(row: RowResult) -> str:
    spec = row.spec
    parts = []
    if spec.min_rate is not None:
        parts.append(f">= {spec.min_rate:,.0f}/s")
    if spec.min_ratio is not None:
        parts.append(f">= {spec.min_ratio:g}x row {spec.peer}")
    if spec.max_p99_ms is not None:
        parts.append(f"p99 < {spec.max_p99_ms:g} ms")
    return ", ".join(parts) or "-"


def _ratio_text(row: RowResult) -> str:
    if row.ratio is None:
        return row.spec.role or "-"
    return f"{row.ratio:.2f}x row {row.spec.peer}"


def _ms_text(row: RowResult, value: float) -> str:
    """A latency, or "-" for a row timed as one piece of work."""
    return f"{value:.2f}" if row.measurement.commands else "-"


def _verdict_text(row: RowResult) -> str:
    if row.passed is None:
        return "-"
    if row.passed:
        return "[green]PASS[/green]"
    return "[red]FAIL[/red]" + ("*" if row.problems else "")


def build_table(machine: dict[str, Any], rows: list[RowResult], *, quick: bool) -> Table:
    title = (
        f"Strongroom benchmark{' (--quick)' if quick else ''} - {machine['date']}\n"
        f"nproc {machine['nproc']}, {machine['cpu']}, PostgreSQL {machine['postgres']}, "
        f"Python {machine['python']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("benchmark")
    table.add_column("events/s", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("result")
    for row in rows:
        m = row.measurement
        table.add_row(
            row.spec.key,
            row.spec.name,
            f"{m.rate:,.0f}",
            _ms_text(row, m.p50_ms),
            _ms_text(row, m.p99_ms),
            _ratio_text(row),
            _target_text(row),
            _verdict_text(row),
        )
    notes = [f"* row {r.spec.key}: {p}" for r in rows for p in r.problems]
    notes += [f"  row {r.spec.key}: {n}" for r in rows for n in r.notes]
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def print_table(machine: dict[str, Any], rows: list[RowResult], *, quick: bool) -> None:
    console = Console()
    if not console.is_terminal:
        console.width = 160  # rich assumes 80 columns when piped; keep rows on one line
    console.print(build_table(machine, rows, quick=quick))


def _row_json(row: RowResult) -> dict[str, Any]:
    m = row.measurement
    timed = m.commands > 0
    return {
        "key": row.spec.key,
        "name": row.spec.name,
        "writers": row.spec.writers,
        "events_per_s": round(m.rate, 1),
        "p50_ms": round(m.p50_ms, 3) if timed else None,
        "p99_ms": round(m.p99_ms, 3) if timed else None,
        "commands": m.commands,
        "events": m.events,
        "seconds": round(m.seconds, 3),
        "errors": m.errors,
        "ratio": None if row.ratio is None else round(row.ratio, 3),
        "ratio_to": row.spec.peer,
        "target_events_per_s": row.spec.min_rate,
        "target_ratio": row.spec.min_ratio,
        "target_p99_ms": row.spec.max_p99_ms,
        "passed": row.passed,
        "problems": row.problems,
        "notes": row.notes,
        "shed": m.shed,
    }


def _document(
    suites: list[str], machine: dict[str, Any], settings: dict[str, Any], rows: list[RowResult]
) -> bytes:
    document = {
        "suites": suites,
        "machine": machine,
        "settings": settings,
        "rows": [_row_json(r) for r in rows],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_json(machine: dict[str, Any], settings: dict[str, Any], rows: list[RowResult]) -> Path:
    """Write ``bench-<UTC timestamp>.json`` and ``latest.json``; return the first."""
    RESULTS_DIR.mkdir(exist_ok=True)
    data = _document(["append", "projections", "http"], machine, settings, rows)
    path = RESULTS_DIR / f"bench-{_stamp()}.json"
    path.write_bytes(data)
    (RESULTS_DIR / "latest.json").write_bytes(data)
    return path


def write_suite_json(
    suite: str, machine: dict[str, Any], settings: dict[str, Any], rows: list[RowResult]
) -> Path:
    """One suite run alone: ``<suite>-<UTC timestamp>.json`` (``latest.json`` is left to
    ``make bench``); return its path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{suite}-{_stamp()}.json"
    path.write_bytes(_document([suite], machine, settings, rows))
    return path
