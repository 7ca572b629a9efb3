"""``strongroom export evidence`` and ``strongroom verify BUNDLE``: evidence for auditors.

The export reads one tenant's log in its own read-only tenant transaction and
writes a bundle (``infra.evidence``); the verification needs nothing but the
bundle and, ideally, the keys the auditor got elsewhere (``--key``,
``--witness``). Without them it trusts the bundle's own keys and says so.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from infra.evidence import BundleReport, ExportReport, KeySource, export_evidence, verify_bundle
from infra.investigations import Operator
from infra.notes import COSIGNATURE_KEY_TYPE, NOTE_KEY_TYPE, NoteError, Verifier
from infra.witness import parse_witnesses
from replay import investigate
from replay.common import (
    CommandFailed,
    friendly_errors,
    load_settings,
    out,
    parse_tenant,
    print_json,
    progress_bar,
)

F = TypeVar("F", bound=Callable[..., Any])

TOFU_WARNING = (
    "the log keys came from the bundle itself (trust on first use): anyone who can write "
    "a bundle can sign it; pass --key with the key you got out of band"
)
TOFU_WITNESS_WARNING = "the witness keys came from the bundle itself; pass --witness to pin them"


def _parse_keys(option: str, texts: list[str], key_type: int) -> list[Verifier]:
    keys = []
    for text in texts:
        try:
            key = Verifier.parse(text)
        except NoteError as e:
            raise CommandFailed(f"{option}: {e}") from None
        if key.key_type != key_type:
            kind = "a log (note) key" if key_type == NOTE_KEY_TYPE else "a witness (cosigner) key"
            raise CommandFailed(f"{option}: {key.name} is not {kind}")
        keys.append(key)
    return keys


# ---- export ---------------------------------------------------------------------------


@click.group("export")
def export_group() -> None:
    """Export evidence for auditors."""


@export_group.command("evidence")
@click.argument("out_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--tenant", required=True, help="Tenant id (UUID).")
@click.option("--from", "first", type=click.IntRange(min=1), help="First seq (default 1).")
@click.option("--to", "last", type=click.IntRange(min=1), help="Last seq (default: the log now).")
@click.option(
    "--witness",
    "witness_keys",
    multiple=True,
    metavar="VKEY",
    help="A witness cosigner key to name in the bundle (repeatable; adds to STRONGROOM_WITNESSES).",
)
@investigate.operator_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def export_evidence_command(
    out_path: Path,
    tenant: str,
    first: int | None,
    last: int | None,
    witness_keys: tuple[str, ...],
    operator: str | None,
    as_json: bool,
) -> None:
    """Write an evidence bundle of one tenant's log to OUT (OUT.tar: a tar; else a directory).

    Leaves with their exact bytes and recorded hashes, the signed checkpoints in
    the range, consistency proofs between them, the notary and witness keys, a
    README and a manifest. OUT must not exist. The export is recorded in the
    tenant's log (investigation.performed) before the bundle appears at OUT.
    """
    tenant_id = parse_tenant(tenant)
    if first is not None and last is not None and first > last:
        raise CommandFailed(f"--from {first} is after --to {last}")
    settings = load_settings()
    try:
        configured = [e.verifier for e in parse_witnesses(settings.witnesses)]
    except ValueError as e:
        raise CommandFailed(f"STRONGROOM_WITNESSES: {e}") from None
    witnesses = configured + [
        w
        for w in _parse_keys("--witness", list(witness_keys), COSIGNATURE_KEY_TYPE)
        if w not in configured
    ]

    who = Operator.resolve(operator)
    audit_seqs: list[int] = []

    async def run() -> ExportReport:
        async with investigate.investigating(settings, who, decrypt=False) as s:
            investigator = s.investigator
            await investigator.head_size(tenant_id)  # an unknown tenant fails here

            async def record(report: ExportReport) -> None:
                filters = {"from": report.first, "to": report.last, "out": out_path.name}
                audit_seqs.append(
                    await investigator.record(tenant_id, "export evidence", filters, report.events)
                )

            with progress_bar(not as_json and out.is_terminal, "exporting") as progress:
                return await export_evidence(
                    investigator.pool,
                    tenant_id,
                    out_path,
                    first=first,
                    last=last,
                    witnesses=witnesses,
                    progress=progress,
                    before_publish=record,
                )

    report = asyncio.run(run())
    if as_json:
        print_json(
            {
                "bundle": str(report.path),
                "tenant": str(report.tenant_id),
                "origin": report.origin,
                "from": report.first,
                "to": report.last,
                "events": report.events,
                "checkpoints": report.checkpoints,
                "last_checkpoint": report.last_checkpoint,
                "uncovered_events": report.uncovered,
                "bytes": report.bytes,
                "investigation_seq": audit_seqs[0],
            }
        )
        return
    table = Table(title=f"evidence bundle {escape(str(report.path))}", show_header=False)
    table.add_row("log", escape(report.origin))
    table.add_row("events", f"{report.first}..{report.last} ({report.events} exported)")
    if report.events != report.last - report.first + 1:
        table.add_row(
            "[red]warning[/red]",
            "the store lacks events of this range: the bundle shows it as it is; "
            f"run strongroom verify --tenant {report.tenant_id}",
        )
    table.add_row(
        "checkpoints",
        f"{report.checkpoints}, the last of size {report.last_checkpoint}"
        if report.last_checkpoint
        else "[yellow]none in this range[/yellow]",
    )
    table.add_row("not covered", f"{report.uncovered} event(s) after the last checkpoint")
    table.add_row("size", f"{report.bytes:,} bytes")
    out.print(table)
    investigate.show_recorded(audit_seqs[0])


# ---- verify BUNDLE --------------------------------------------------------------------


def bundle_options(command: F) -> F:
    """The options of ``strongroom verify BUNDLE`` (the command itself lives in replay.cli)."""
    options = [
        click.option(
            "--key",
            "keys",
            multiple=True,
            metavar="VKEY",
            help="BUNDLE: a log key you trust (repeatable). Without it the bundle's own keys "
            "are used, and the summary says so.",
        ),
        click.option(
            "--key-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="BUNDLE: a file of trusted log keys, one vkey per line.",
        ),
        click.option(
            "--witness",
            "witnesses",
            multiple=True,
            metavar="VKEY",
            help="BUNDLE: a witness cosigner key you trust (repeatable; default: the bundle's).",
        ),
        click.option(
            "--witness-threshold",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="BUNDLE: valid witness cosignatures each checkpoint needs.",
        ),
        click.option(
            "--full",
            is_flag=True,
            help="BUNDLE: parse every leaf (canonical form, v, ts order); slower.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def used_bundle_options(
    keys: tuple[str, ...],
    key_file: Path | None,
    witnesses: tuple[str, ...],
    witness_threshold: int,
    full: bool,
) -> list[str]:
    """The BUNDLE-only options given, for an error when --tenant is verified instead."""
    given = {
        "--key": bool(keys),
        "--key-file": key_file is not None,
        "--witness": bool(witnesses),
        "--witness-threshold": witness_threshold != 0,
        "--full": full,
    }
    return [name for name, used in given.items() if used]


def verify_bundle_command(
    bundle: Path,
    *,
    as_json: bool,
    keys: tuple[str, ...],
    key_file: Path | None,
    witnesses: tuple[str, ...],
    witness_threshold: int,
    full: bool,
) -> None:
    """Verify BUNDLE offline; print the summary; exit 1 naming the first failure."""
    key_texts = list(keys)
    if key_file is not None:
        lines = key_file.read_text(encoding="utf-8").splitlines()
        key_texts += [line for line in lines if line.strip() and not line.startswith("#")]
        if not key_texts:
            raise CommandFailed(f"--key-file: {key_file} holds no key")
    log_keys = _parse_keys("--key", key_texts, NOTE_KEY_TYPE) if key_texts else None
    witness_keys = (
        _parse_keys("--witness", list(witnesses), COSIGNATURE_KEY_TYPE) if witnesses else None
    )
    with progress_bar(not as_json and out.is_terminal, "verifying") as progress:
        report = verify_bundle(
            bundle,
            log_keys=log_keys,
            witnesses=witness_keys,
            witness_threshold=witness_threshold,
            full=full,
            progress=progress,
        )
    if as_json:
        print_json(report_dict(bundle, report))
    else:
        out.print(_table(bundle, report))
    if not report.ok:
        sys.exit(1)


def _warnings(report: BundleReport) -> list[str]:
    warnings = []
    if report.log_keys == KeySource.BUNDLE:
        warnings.append(TOFU_WARNING)
    if report.witnesses == KeySource.BUNDLE and report.witness_names:
        warnings.append(TOFU_WITNESS_WARNING)
    if report.ok and report.covered_to is None:
        warnings.append("no checkpoint lies in this bundle: no event is under a signed root")
    return warnings


def report_dict(bundle: Path, report: BundleReport) -> dict[str, Any]:
    failure = report.failure
    return {
        "bundle": str(bundle),
        "ok": report.ok,
        "failure": None
        if failure is None
        else {
            "kind": failure.kind,
            "seq": failure.seq,
            "checkpoint": failure.checkpoint,
            "file": failure.file,
            "reason": failure.reason,
        },
        "origin": report.origin,
        "tenant": report.tenant,
        "from": report.first,
        "to": report.last,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "consistency_proofs": report.consistency_proofs,
        "covered_to": report.covered_to,
        "uncovered_events": report.uncovered if report.ok else None,
        "root": report.root.hex() if report.root else None,
        "keys": {
            "log": {"source": report.log_keys, "names": report.log_key_names},
            "witnesses": {
                "source": report.witnesses,
                "names": report.witness_names,
                "threshold": report.witness_threshold,
                "cosignatures": report.cosignatures,
            },
        },
        "full": report.full,
        "seconds": round(report.seconds, 3),
        "events_per_s": round(report.events_per_s),
        "warnings": _warnings(report),
    }


def _where(report: BundleReport) -> str:
    failure = report.failure
    assert failure is not None
    if failure.seq is not None:
        return f"seq {failure.seq}"
    if failure.checkpoint is not None:
        return f"checkpoint {failure.checkpoint}"
    return escape(failure.file or "the bundle")


def _table(bundle: Path, report: BundleReport) -> Table:
    table = Table(title=f"evidence bundle {escape(str(bundle))}", show_header=False)
    table.add_row("log", escape(report.origin or "-"))
    if report.first is not None:
        table.add_row("events", f"{report.first}..{report.last}: {report.events} checked, in order")
    checkpoints = f"{report.checkpoints} signed root(s) matched the leaves"
    table.add_row("checkpoints", f"{checkpoints}, {report.consistency_proofs} consistency proof(s)")
    if report.ok:
        table.add_row(
            "covered",
            f"{report.first}..{report.covered_to} under signed roots; {report.uncovered} "
            "after the last checkpoint (hash and chain only)"
            if report.covered_to
            else f"[bold red]nothing[/bold red]: {report.uncovered} event(s), no checkpoint",
        )
    names = escape(", ".join(report.log_key_names) or "-")
    table.add_row(
        "log keys",
        f"{names} (given)"
        if report.log_keys == KeySource.GIVEN
        else f"{names} [bold red]FROM THE BUNDLE: trust on first use; pass --key[/bold red]",
    )
    cosigned = ", ".join(f"{escape(n)} x{c}" for n, c in sorted(report.cosignatures.items()))
    source = "given" if report.witnesses == KeySource.GIVEN else "[yellow]from the bundle[/yellow]"
    table.add_row(
        "witnesses",
        f"threshold {report.witness_threshold}; keys {source}; cosigned: {cosigned or 'none'}",
    )
    if report.root is not None:
        table.add_row(f"Merkle root at {report.last}", report.root.hex())
    table.add_row("speed", f"{report.events_per_s:,.0f} events/s ({report.seconds:.2f} s)")
    if report.ok:
        table.add_row("result", "[green]intact[/green]")
    else:
        assert report.failure is not None
        table.add_row(
            "result", f"[red]FIRST FAILURE: {report.failure.kind} at {_where(report)}[/red]"
        )
        table.add_row("reason", escape(report.failure.reason))
    return table
