"""The ``strongroom`` command line.

Each command is a thin shell over ``infra``: tables for people, ``--json`` for
scripts. Expected failures print one line on stderr and exit non-zero; add
``--debug`` to see the traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import asyncpg
import click
import uvicorn
from rich.table import Table

from api.app import create_app
from infra.bootstrap import prepare_embedded_database
from infra.collector import tune_collector
from infra.embedded import EmbeddedNats, EmbeddedPostgres, ensure_port_free
from infra.investigations import Operator
from infra.keyring import load_or_create_dev_master_key
from infra.local import (
    RunInfo,
    database_urls,
    port_of,
    read_run_info,
    remove_run_info,
    write_run_info,
)
from infra.migrate import migrate
from infra.notary import load_or_create_dev_notary_key
from infra.readmodels import ensure_projections
from infra.runtime import Endpoints, Runtime, Workers, strongroom_version
from infra.services import create_platform_token
from infra.settings import Settings
from infra.verify import VerifyReport, verify_tenant
from projections import ALL as ALL_PROJECTIONS
from replay import evidence, investigate, pipeline, witness
from replay.common import (
    CommandFailed,
    err,
    friendly_errors,
    load_settings,
    out,
    parse_tenant,
    print_json,
    progress_bar,
)
from replay.demo import DEMO_SLUG, Demo, create_demo


@click.group()
@click.version_option(strongroom_version(), prog_name="strongroom")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Strongroom: tenant logs you can prove."""


# ---- up / serve ---------------------------------------------------------------------


def _raise_on_sigterm(_signum: int, _frame: Any) -> NoReturn:
    raise SystemExit(0)


@contextmanager
def _embedded_servers(settings: Settings) -> Iterator[tuple[str, str, int | None]]:
    """Start what is embedded; yield (owner URL, app URL and NATS URL, pg port)."""
    postgres = (
        EmbeddedPostgres(settings.data_dir / "postgres") if settings.embedded_postgres else None
    )
    nats = EmbeddedNats(settings.data_dir / "nats") if settings.embedded_nats else None
    try:
        if postgres is not None:
            err.print("starting embedded PostgreSQL…")
            superuser = postgres.start()
            urls = asyncio.run(prepare_embedded_database(superuser, postgres.data_dir))
            owner, app, pg_port = urls.owner, urls.app, port_of(superuser)
        else:
            assert settings.database_url is not None
            owner = settings.owner_database_url or settings.database_url
            app, pg_port = settings.database_url, None
        applied = asyncio.run(_migrate_all(owner))
        if applied:
            err.print(f"applied {len(applied)} migration(s) / read model(s)")
        platform_token = asyncio.run(_first_platform_token(owner))
        if platform_token:
            out.print(
                "platform administrator token (shown once; it only creates tenants, "
                f"POST /v1/tenants):\n  [bold]{platform_token}[/bold]"
            )
        if nats is not None:
            err.print("starting embedded NATS JetStream…")
            nats_url = nats.start()
        else:
            assert settings.nats_url is not None
            nats_url = settings.nats_url
        yield app, nats_url, pg_port
    finally:
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()


async def _migrate_all(owner_url: str) -> list[str]:
    """Schema migrations, then a schema for every read model that has none."""
    applied = await migrate(owner_url)
    report = await ensure_projections(owner_url, ALL_PROJECTIONS)
    for name in report.outdated:
        err.print(
            f"[yellow]warning:[/yellow] the tables of read model {name} changed; "
            f"run `strongroom replay rebuild {name}`"
        )
    return applied + [f"read model {name}" for name in report.created]


async def _first_platform_token(owner_url: str) -> str | None:
    conn = await asyncpg.connect(owner_url)
    try:
        return await create_platform_token(conn, only_if_none=True)
    finally:
        await conn.close()


def _print_demo(demo: Demo | None) -> None:
    if demo is None:
        err.print(f"the demo tenant ({DEMO_SLUG}) exists; its passwords were shown when made")
        return
    table = Table(title=f"demo tenant {DEMO_SLUG} ({demo.tenant_id})")
    for column in ("role", "e-mail", "password"):
        table.add_column(column)
    for member in demo.members:
        table.add_row(member.role.value, member.email, member.password)
    out.print(table)
    out.print(f"owner API key: [bold]{demo.owner_api_key}[/bold]")
    out.print(f'log in: POST /v1/auth/login {{"tenant": "{DEMO_SLUG}", "email": …, "password": …}}')


def _serve(settings: Settings, endpoints: Endpoints, workers: Workers | None = None) -> None:
    app = create_app(lambda: Runtime.open(settings, endpoints, workers))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,  # then end open event streams (clients resume)
    )
    out.print(
        f"Strongroom {strongroom_version()} is up: [bold]http://{settings.host}:{settings.port}"
        "[/bold]  (Ctrl-C stops it)"
    )
    uvicorn.Server(config).run()


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Default ./.strongroom")
@click.option("--host", help="Default 127.0.0.1")
@click.option("--port", type=int, help="Default 8700")
@click.option("--demo", is_flag=True, help="Create a demo tenant with one member per role")
@friendly_errors
def up(data_dir: Path | None, host: str | None, port: int | None, demo: bool) -> None:
    """Run everything on this machine: embedded PostgreSQL and NATS, migrations, the API."""
    settings = load_settings(data_dir=data_dir, host=host, port=port)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    running = read_run_info(settings.data_dir)
    if running is not None:
        raise CommandFailed(f"strongroom is already running on this data dir (pid {running.pid})")
    ensure_port_free(settings.host, settings.port)
    master_key = settings.load_master_key() or load_or_create_dev_master_key(settings.data_dir)
    if settings.load_notary_key_text() is None:
        key_file = load_or_create_dev_notary_key(settings.data_dir, settings.log_host)
        settings = dataclasses.replace(settings, notary_key_file=key_file)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with _embedded_servers(settings) as (app_url, nats_url, pg_port):
            write_run_info(
                settings.data_dir,
                RunInfo(os.getpid(), pg_port, nats_url, f"http://{settings.host}:{settings.port}"),
            )
            endpoints = Endpoints(app_url, nats_url, master_key)
            if demo:
                _print_demo(asyncio.run(create_demo(settings, endpoints)))
            workers = Workers(
                relay=True, projections=ALL_PROJECTIONS, notary=True, grant_expiry=True
            )
            _serve(settings, endpoints, workers)
    except KeyboardInterrupt:
        pass
    finally:
        remove_run_info(settings.data_dir)
        err.print("stopped")


@cli.command()
@click.option("--host", help="Default 127.0.0.1")
@click.option("--port", type=int, help="Default 8700")
@friendly_errors
def serve(host: str | None, port: int | None) -> None:
    """Run the API only, against STRONGROOM_DATABASE_URL and STRONGROOM_NATS_URL.

    The relay and the projections run as `strongroom worker relay|projections`.
    """
    settings = load_settings(host=host, port=port)
    if settings.database_url is None or settings.nats_url is None:
        raise CommandFailed("serve needs STRONGROOM_DATABASE_URL and STRONGROOM_NATS_URL")
    master_key = settings.load_master_key()
    if master_key is None:
        raise CommandFailed("serve needs STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE")
    _serve(settings, Endpoints(settings.database_url, settings.nats_url, master_key))


# ---- migrate / verify ---------------------------------------------------------------


@cli.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def migrate_command(as_json: bool) -> None:
    """Apply pending schema migrations (as the owner role)."""

    async def run() -> list[str]:
        async with database_urls(load_settings()) as urls:
            return await _migrate_all(urls.owner)

    applied = asyncio.run(run())
    if as_json:
        print_json({"applied": applied})
    elif applied:
        for name in applied:
            out.print(f"applied {name}")
    else:
        out.print("the schema is up to date")


@cli.command("platform-token")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def platform_token(as_json: bool) -> None:
    """Create another platform administrator token (shown once; creates tenants only)."""

    async def run() -> str | None:
        async with database_urls(load_settings()) as urls:
            conn = await asyncpg.connect(urls.owner)
            try:
                return await create_platform_token(conn, only_if_none=False)
            finally:
                await conn.close()

    token = asyncio.run(run())
    if as_json:
        print_json({"token": token})
    else:
        out.print(f"platform administrator token (shown once): [bold]{token}[/bold]")


@cli.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--tenant", "tenant", help="Tenant id (UUID): verify its stored log online.")
@investigate.operator_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@evidence.bundle_options
@friendly_errors
def verify(
    bundle: Path | None,
    tenant: str | None,
    operator: str | None,
    as_json: bool,
    **bundle_options: Any,
) -> None:
    """Verify an evidence BUNDLE offline, or --tenant ID's stored log online.

    BUNDLE: every leaf hash, the chain, each signed root, signatures, witness
    cosignatures and consistency proofs (see `strongroom export evidence`).
    --tenant: recompute the hashes, chain and Merkle tree from the stored leaves
    (recorded in the tenant's log as an investigation, like `strongroom events`).
    Exit 0 when everything holds; 1 naming the first failure.
    """
    if (bundle is None) == (tenant is None):
        raise CommandFailed("give a BUNDLE or --tenant ID (exactly one)")
    if bundle is not None:
        evidence.verify_bundle_command(bundle, as_json=as_json, **bundle_options)
        return
    assert tenant is not None
    if used := evidence.used_bundle_options(**bundle_options):
        raise CommandFailed(f"{', '.join(used)}: only for a BUNDLE, not --tenant")
    tenant_id = parse_tenant(tenant)
    who = Operator.resolve(operator)
    report, audit_seq, audit_error = asyncio.run(
        _verify(tenant_id, who, show_progress=not as_json and out.is_terminal)
    )
    if audit_error is not None:
        err.print(
            f"[red]warning:[/red] this verification could not be recorded in the tenant's "
            f"log ({audit_error}); the store refused an append",
            highlight=False,
        )
    if as_json:
        print_json(
            {**_report_dict(report), "investigation_seq": audit_seq, "audit_error": audit_error}
        )
    else:
        table = Table(title=f"tenant {report.tenant_id}", show_header=False)
        table.add_row("events", f"{report.checked} of {report.size}")
        table.add_row("Merkle root", report.root.hex() if report.root else "—")
        if report.ok:
            table.add_row("result", "[green]intact[/green]")
        else:
            table.add_row("result", f"[red]FIRST BAD SEQ {report.first_bad_seq}[/red]")
            table.add_row("reason", report.reason or "")
        out.print(table)
        if audit_seq is not None:
            investigate.show_recorded(audit_seq)
    if not report.ok or audit_error is not None:
        sys.exit(1)


async def _verify(
    tenant_id: UUID, operator: Operator, *, show_progress: bool
) -> tuple[VerifyReport, int | None, str | None]:
    """The report, and the seq of its audit event or why that could not be written.

    Unlike the commands that show events, a verification is shown even when its audit
    event cannot be appended: it reveals only hashes and positions, and a log broken
    so that it refuses appends (a row planted beyond the head) must not also hide the
    report that says so.
    """
    async with investigate.investigating(load_settings(), operator, decrypt=False) as s:
        pool, investigator = s.investigator.pool, s.investigator
        await investigator.head_size(tenant_id)  # an unknown tenant fails here
        with progress_bar(show_progress, "verifying") as progress:
            report = await verify_tenant(pool, tenant_id, progress=progress)
        filters = {"ok": report.ok, "size": report.size}
        try:
            audit_seq = await investigator.record(tenant_id, "verify", filters, report.checked)
        except Exception as e:  # reported by type only: the text may quote rows
            return report, None, type(e).__name__
        return report, audit_seq, None


def _report_dict(report: VerifyReport) -> dict[str, Any]:
    return {
        "tenant": str(report.tenant_id),
        "size": report.size,
        "checked": report.checked,
        "ok": report.ok,
        "first_bad_seq": report.first_bad_seq,
        "reason": report.reason,
        "root": report.root.hex() if report.root else None,
    }


for command in (*pipeline.COMMANDS, *investigate.COMMANDS):
    cli.add_command(command)
pipeline.replay_group.add_command(investigate.DRY_RUN)
cli.add_command(witness.witness_group)
cli.add_command(evidence.export_group)


def main() -> None:
    tune_collector()
    cli()
