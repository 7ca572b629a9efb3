"""CLI commands of the event pipeline: workers, projection status, rebuilds.

``strongroom worker relay|projections`` run one kind of background work as its
own process (``strongroom up`` runs both inside the API process).
``strongroom projections status|retry`` show and un-park partitions.
``strongroom replay rebuild`` rebuilds a read model from the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import click
from prometheus_client import start_http_server
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from infra.db import create_pool
from infra.eventstore import EventStore
from infra.keyring import Keyring, load_or_create_dev_master_key
from infra.local import database_urls, read_run_info
from infra.projector import Partition, partitions, unpark
from infra.readmodels import (
    EVENTS_PER_WORKER,
    RebuildReport,
    StoreSpec,
    ddl_sha256,
    default_workers,
    rebuild,
)
from infra.runtime import Endpoints, Runtime, Workers
from infra.settings import Settings
from projections import ALL as ALL_PROJECTIONS
from projections import by_name
from projections.base import Projection
from replay.common import (
    CommandFailed,
    cli_pool,
    err,
    friendly_errors,
    load_settings,
    out,
    parse_tenant,
    print_json,
)


def _tenant(value: str | None) -> UUID | None:
    return None if value is None else parse_tenant(value)


def _projection(name: str) -> Projection:
    projection = by_name(name)
    if projection is None:
        known = ", ".join(p.name for p in ALL_PROJECTIONS)
        raise CommandFailed(f"no projection named {name!r} (known: {known})")
    return projection


def _master_key(settings: Settings) -> bytes:
    key = settings.load_master_key()
    if key is not None:
        return key
    if (settings.data_dir / "master.key").exists():
        return load_or_create_dev_master_key(settings.data_dir)
    raise CommandFailed("needs STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE")


def _nats_url(settings: Settings) -> str:
    if settings.nats_url is not None:
        return settings.nats_url
    running = read_run_info(settings.data_dir)
    if running is not None and running.nats_url:
        return running.nats_url
    raise CommandFailed("no NATS: set STRONGROOM_NATS_URL, or start `strongroom up` first")


@dataclass(frozen=True, slots=True)
class _Connected:
    owner_url: str
    pool: asyncpg.Pool
    store: EventStore
    spec: StoreSpec
    """How a rebuild's helper processes open the same store."""


@asynccontextmanager
async def _connected(settings: Settings, *, need_key: bool) -> AsyncIterator[_Connected]:
    async with database_urls(settings) as urls:
        pool = await create_pool(urls.app, min_size=1, max_size=8)
        try:
            master_key = _master_key(settings) if need_key else bytes(32)
            store = EventStore(pool, Keyring(master_key), log_host=settings.log_host)
            spec = StoreSpec(urls.app, master_key, settings.log_host)
            yield _Connected(urls.owner, pool, store, spec)
        finally:
            await pool.close()


# ---- workers --------------------------------------------------------------------------


@click.group()
def worker() -> None:
    """Run background work as its own process (`strongroom up` runs it all inside)."""


def _run_worker(workers: Workers, metrics_port: int | None) -> None:
    settings = load_settings()
    if metrics_port is not None:
        start_http_server(metrics_port, addr=settings.host)

    async def run() -> None:
        # SIGTERM / Ctrl-C cancel this task, so every worker stops through its finally.
        main = asyncio.current_task()
        assert main is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, main.cancel)
        async with database_urls(settings) as urls:
            endpoints = Endpoints(urls.app, _nats_url(settings), _master_key(settings))
            runtime = await Runtime.open(settings, endpoints, workers)
            try:
                await runtime.wait_closed()
            except asyncio.CancelledError:
                pass
            finally:
                await runtime.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


_metrics_port = click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve /metrics on this port."
)


@worker.command("relay")
@_metrics_port
@friendly_errors
def worker_relay(metrics_port: int | None) -> None:
    """Publish committed events that were not published yet (the backstop)."""
    err.print("relay running (Ctrl-C stops it)")
    _run_worker(Workers(relay=True), metrics_port)


@worker.command("projections")
@click.option("--projection", "names", multiple=True, help="Only these projections (default: all).")
@_metrics_port
@friendly_errors
def worker_projections(names: tuple[str, ...], metrics_port: int | None) -> None:
    """Keep the read models up to date from JetStream and the event store."""
    chosen = tuple(_projection(n) for n in names) or ALL_PROJECTIONS
    err.print(f"projecting {', '.join(p.name for p in chosen)} (Ctrl-C stops it)")
    _run_worker(Workers(projections=chosen), metrics_port)


@worker.command("notary")
@_metrics_port
@friendly_errors
def worker_notary(metrics_port: int | None) -> None:
    """Sign a checkpoint of every tenant log that grew (STRONGROOM_NOTARY_KEY[_FILE])."""
    settings = load_settings()
    err.print(f"notary signing every {settings.notary_interval} s (Ctrl-C stops it)")
    _run_worker(Workers(notary=True), metrics_port)


@worker.command("grant-expiry")
@_metrics_port
@friendly_errors
def worker_grant_expiry(metrics_port: int | None) -> None:
    """End access grants as they run out, in every tenant (any number may run)."""
    err.print("ending grants as they run out (Ctrl-C stops it)")
    _run_worker(Workers(grant_expiry=True), metrics_port)


# ---- projections status / retry ---------------------------------------------------------


@click.group("projections")
def projections_group() -> None:
    """Read models: where each tenant's partition is, and un-parking."""


def _partition_dict(p: Partition) -> dict[str, Any]:
    return {
        "tenant": str(p.tenant_id),
        "position": p.position,
        "head": p.head,
        "lag": p.lag,
        "state": _state(p),
        "parked_seq": p.parked_seq,
        "parked_error": p.parked_error,
        "parked_at": p.parked_at.isoformat() if p.parked_at else None,
        "updated_at": p.updated_at.isoformat() if p.updated_at else None,
    }


def _state(p: Partition) -> str:
    if p.parked_seq is not None:
        return "parked"
    return "behind" if p.lag else "caught up"


@projections_group.command("status")
@click.option("--all", "show_all", is_flag=True, help="List every partition, not only lagging.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def projections_status(show_all: bool, as_json: bool) -> None:
    """Positions, lag and parked partitions of every projection."""

    async def run() -> list[dict[str, Any]]:
        # Read-only: the investigation role, which sees positions through
        # projection_partitions() and no read-model row.
        async with cli_pool(load_settings(), max_size=1) as (pool, _urls):
            return await _status(pool)

    async def _status(pool: asyncpg.Pool) -> list[dict[str, Any]]:
        registry = {
            r["name"]: r
            for r in await pool.fetch("SELECT name, ddl_sha256, built_at FROM projection_registry")
        }
        found = []
        for projection in ALL_PROJECTIONS:
            row = registry.get(projection.name)
            parts = await partitions(pool, projection.name) if row else []
            built_at: datetime | None = row["built_at"] if row else None
            found.append(
                {
                    "projection": projection.name,
                    "built_at": built_at.isoformat() if built_at else None,
                    "tables": "missing"
                    if row is None
                    else "current"
                    if row["ddl_sha256"] == ddl_sha256(projection)
                    else "outdated",
                    "tenants": len(parts),
                    "behind": sum(1 for p in parts if _state(p) == "behind"),
                    "parked": sum(1 for p in parts if p.parked_seq is not None),
                    "lag": sum(p.lag for p in parts),
                    "partitions": [
                        _partition_dict(p)
                        for p in parts
                        if show_all or p.lag or p.parked_seq is not None
                    ],
                }
            )
        return found

    found = asyncio.run(run())
    if as_json:
        print_json({"projections": found})
        return
    summary = Table(title="projections")
    for column in ("projection", "tables", "tenants", "behind", "parked", "lag (events)"):
        summary.add_column(column)
    for f in found:
        parked = f"[red]{f['parked']}[/red]" if f["parked"] else "0"
        summary.add_row(
            f["projection"], f["tables"], str(f["tenants"]), str(f["behind"]), parked, str(f["lag"])
        )
    out.print(summary)
    rows = [(f["projection"], p) for f in found for p in f["partitions"]]
    if rows:
        detail = Table(title="partitions" if show_all else "partitions behind or parked")
        for column in (
            "projection",
            "tenant",
            "position",
            "head",
            "state",
            "parked at seq",
            "error",
        ):
            detail.add_column(column)
        for name, p in rows:
            detail.add_row(
                name,
                p["tenant"],
                str(p["position"]),
                str(p["head"]),
                p["state"],
                str(p["parked_seq"] or ""),
                p["parked_error"] or "",
            )
        out.print(detail)


@projections_group.command("retry")
@click.argument("projection_name", metavar="PROJECTION")
@click.option("--tenant", help="Only this tenant (UUID).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def projections_retry(projection_name: str, tenant: str | None, as_json: bool) -> None:
    """Un-park parked partitions: the runner retries their failing event."""
    projection = _projection(projection_name)
    tenant_id = _tenant(tenant)

    async def run() -> list[Partition]:
        async with _connected(load_settings(), need_key=False) as c:
            parked = [
                p
                for p in await partitions(c.pool, projection.name, behind_only=True)
                if p.parked_seq is not None and tenant_id in (None, p.tenant_id)
            ]
            return [p for p in parked if await unpark(c.pool, projection, p.tenant_id)]

    retried = asyncio.run(run())
    if as_json:
        print_json(
            {"projection": projection.name, "unparked": [_partition_dict(p) for p in retried]}
        )
    elif not retried:
        out.print("nothing is parked" + (f" for tenant {tenant_id}" if tenant_id else ""))
    else:
        for p in retried:
            out.print(
                f"un-parked {projection.name} for tenant {p.tenant_id} (was at seq {p.parked_seq})"
            )


# ---- replay rebuild ---------------------------------------------------------------------


@click.group("replay")
def replay_group() -> None:
    """Rebuild read models from the event store."""


@replay_group.command("rebuild")
@click.argument("projection_name", metavar="PROJECTION")
@click.option("--tenant", help="Only this tenant (UUID); others are untouched.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=default_workers(),
    show_default="the CPUs, at most 4",
    help="Processes that build tenants, this one included (all tenants only).",
)
@click.option(
    "--events-per-worker",
    type=click.IntRange(1),
    default=EVENTS_PER_WORKER,
    show_default=True,
    help="Start one more process per this many events (each costs ~0.4 s to start).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def replay_rebuild(
    projection_name: str,
    tenant: str | None,
    workers: int,
    events_per_worker: int,
    as_json: bool,
) -> None:
    """Rebuild PROJECTION from the event store into fresh tables, then swap them in.

    The old read model keeps serving until the swap, which is atomic.
    """
    projection = _projection(projection_name)
    tenant_id = _tenant(tenant)
    show_progress = not as_json and err.is_terminal

    async def run() -> RebuildReport:
        async with _connected(load_settings(), need_key=True) as c:
            run = functools.partial(
                rebuild,
                c.owner_url,
                c.pool,
                c.store,
                projection,
                tenant_id=tenant_id,
                workers=workers,
                spec=c.spec,
                events_per_worker=events_per_worker,
            )
            if not show_progress:
                return await run()
            columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*Progress.get_default_columns()[:1], *columns, console=err) as bar:
                task = bar.add_task(f"rebuilding {projection.name}", total=None)
                return await run(
                    progress=lambda done, total: bar.update(task, completed=done, total=total)
                )

    report = asyncio.run(run())
    result = {
        "projection": report.projection,
        "tenant": str(tenant_id) if tenant_id else None,
        "tenants": report.tenants,
        "events": report.events,
        "seconds": round(report.seconds, 3),
        "events_per_second": round(report.events_per_second),
        "parked": [str(t) for t in report.parked],
        "events_per_process": report.per_process,
    }
    if as_json:
        print_json(result)
        return
    table = Table(title=f"rebuilt {report.projection}", show_header=False)
    table.add_row("tenants", str(report.tenants))
    table.add_row("events", str(report.events))
    table.add_row("time", f"{report.seconds:.2f} s")
    table.add_row("rate", f"{report.events_per_second:,.0f} events/s")
    table.add_row("processes", " + ".join(f"{n:,}" for n in report.per_process) + " events")
    if report.parked:
        table.add_row("[red]parked[/red]", ", ".join(map(str, report.parked)))
    out.print(table)


COMMANDS = (worker, projections_group, replay_group)
