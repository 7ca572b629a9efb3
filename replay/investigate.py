"""Investigation commands: the tenant log, time travel, timelines, dry-run replays.

``strongroom events list|show|tail``, ``strongroom state``, ``strongroom timeline``,
``strongroom replay dry-run`` and ``strongroom tenants list``. They connect as the
investigation role (``strongroom_cli``: row-level security like the app, no
credential table), one tenant at a time. Each command that reads a tenant's log
first appends ``investigation.performed`` to that log (the operator, the command,
its filters, how many events it returned), and prints only once that is committed.
Tables for people; ``--json`` (and ``--jsonl`` for event lists) for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import click
from rich.markup import escape
from rich.table import Table

from infra.bootstrap import DatabaseUrls
from infra.db import CLI_ROLE
from infra.eventstore import EventStore, RecordedEvent
from infra.investigations import (
    ActorFilter,
    Change,
    EventQuery,
    Investigator,
    Operator,
    Point,
    StateAt,
    announcements,
    diff,
    event_view,
    list_tenants,
    parse_time,
)
from infra.keyring import Keyring
from infra.local import read_run_info
from infra.readmodels import AsOfCopy, build_as_of
from infra.settings import Settings
from replay.common import (
    CommandFailed,
    cli_pool,
    err,
    friendly_errors,
    load_settings,
    out,
    parse_tenant,
    print_json,
    progress_bar,
    spinner,
)
from replay.pipeline import _master_key, _projection

SUMMARY_WIDTH = 96


# ---- shared ---------------------------------------------------------------------------------


def _time(value: str | None, option: str) -> datetime | None:
    return None if value is None else parse_time(value, option)


tenant_option = click.option("--tenant", required=True, help="Tenant id (UUID).")
operator_option = click.option(
    "--operator",
    envvar="STRONGROOM_OPERATOR",
    help="Who is investigating (recorded in the tenant's log). Default: the OS user.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
jsonl_option = click.option("--jsonl", is_flag=True, help="One JSON event per line.")


@dataclass(frozen=True, slots=True)
class Session:
    investigator: Investigator
    urls: DatabaseUrls


@asynccontextmanager
async def investigating(
    settings: Settings, operator: Operator, *, decrypt: bool = True
) -> AsyncIterator[Session]:
    """A pool of the investigation role and its store; with ``decrypt``, one that can
    read personal fields (it needs the master key)."""
    async with cli_pool(settings) as (pool, urls):
        # Without ``decrypt`` nothing is decrypted: the keyring's key is never used.
        master_key = _master_key(settings) if decrypt else bytes(32)
        store = EventStore(pool, Keyring(master_key), log_host=settings.log_host)
        yield Session(Investigator(pool, store, operator), urls)


def _summary(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1] + "…"


def _cell(value: Any) -> str:
    """A value for a table: text as it is, anything else as JSON."""
    return escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _actor(view: dict[str, Any]) -> str:
    return f"{view['actor']['kind']}:{view['actor']['id']}"


def _when(iso: str) -> str:
    """``2026-11-24T22:25:56.802049+00:00`` as ``2026-11-24 22:25:56.802`` (UTC)."""
    return iso[:10] + " " + iso[11:23]


def _events_table(title: str, views: list[dict[str, Any]]) -> Table:
    table = Table(title=escape(title), caption="times in UTC")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("recorded at", no_wrap=True)
    table.add_column("type", no_wrap=True)
    for column in ("stream", "actor"):
        table.add_column(column, overflow="fold", ratio=2)
    table.add_column("data", overflow="fold", ratio=3)
    for v in views:
        data = v["data"]
        if v["erased"]:
            data = {**data, "(erased)": v["erased"]}
        table.add_row(
            str(v["seq"]),
            _when(v["recorded_at"]),
            escape(v["type"]),
            escape(v["stream"]),
            escape(_actor(v)),
            escape(_summary(data)),
        )
    return table


def show_recorded(seq: int) -> None:
    err.print(f"[dim]recorded as investigation.performed at seq {seq}[/dim]")


def _print_events(
    title: str,
    views: list[dict[str, Any]],
    *,
    as_json: bool,
    jsonl: bool,
    extra: dict[str, Any],
    audit_seq: int,
) -> None:
    if jsonl:
        for v in views:
            click.echo(json.dumps(v, sort_keys=True, ensure_ascii=False))
        return
    if as_json:
        print_json({**extra, "events": views, "investigation_seq": audit_seq})
        return
    out.print(_events_table(title, views))
    if extra.get("next") is not None:
        err.print(f"more events follow: --after {extra['next']}")
    show_recorded(audit_seq)


def _query(
    *,
    stream: str | None,
    types: tuple[str, ...],
    actor: str | None,
    subject: str | None,
    since: str | None,
    until: str | None,
    after: int,
    limit: int,
) -> EventQuery:
    return EventQuery(
        stream=stream,
        types=types,
        actor=ActorFilter.parse(actor) if actor is not None else None,
        subject=subject,
        since=_time(since, "--since"),
        until=_time(until, "--until"),
        after=after,
        limit=limit,
    )


def _filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--since", metavar="TIME", help="Recorded at or after (ISO 8601)."),
            click.option("--until", metavar="TIME", help="Recorded at or before (ISO 8601)."),
            click.option("--after", type=int, default=0, help="Only seqs above this."),
            click.option("--limit", type=int, default=100, show_default=True),
        ]
    ):
        command = option(command)
    return command


# ---- events -----------------------------------------------------------------------------------


@click.group("events")
def events_group() -> None:
    """A tenant's log: filtered lists, one event in full, a live follow."""


@events_group.command("list")
@tenant_option
@click.option("--stream", help="Exact stream, e.g. member-<uuid>.")
@click.option("--type", "types", multiple=True, help="Exact event type (repeatable).")
@click.option("--actor", help="Actor id, or kind:id (user, api_key, system, operator, platform).")
@click.option("--subject", help="A stream or an id the events concern (stream or data).")
@_filter_options
@operator_option
@json_option
@jsonl_option
@friendly_errors
def events_list(
    tenant: str,
    stream: str | None,
    types: tuple[str, ...],
    actor: str | None,
    subject: str | None,
    since: str | None,
    until: str | None,
    after: int,
    limit: int,
    operator: str | None,
    as_json: bool,
    jsonl: bool,
) -> None:
    """The tenant log, filtered, in seq order; personal fields decrypted unless erased."""
    tenant_id = parse_tenant(tenant)
    query = _query(
        stream=stream,
        types=types,
        actor=actor,
        subject=subject,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    _list_and_print(
        "events list",
        tenant_id,
        query,
        Operator.resolve(operator),
        f"tenant {tenant_id}",
        as_json=as_json,
        jsonl=jsonl,
    )


def _list_and_print(
    command: str,
    tenant_id: UUID,
    query: EventQuery,
    operator: Operator,
    title: str,
    *,
    as_json: bool,
    jsonl: bool,
) -> None:
    """Read a page, record the investigation, then (only then) print the page."""

    async def run() -> tuple[list[dict[str, Any]], int | None, int]:
        async with investigating(load_settings(), operator) as s:
            page = await s.investigator.list_events(tenant_id, query)
            seq = await s.investigator.record(
                tenant_id, command, query.audit_filters(), len(page.events)
            )
            return [event_view(e) for e in page.events], page.read_to if page.more else None, seq

    with spinner(not (as_json or jsonl) and err.is_terminal, "reading the log"):
        views, next_after, seq = asyncio.run(run())
    _print_events(
        f"{title}: {len(views)} event(s)",
        views,
        as_json=as_json,
        jsonl=jsonl,
        extra={"tenant": str(tenant_id), "next": next_after},
        audit_seq=seq,
    )


@events_group.command("show")
@tenant_option
@click.argument("seq", type=int)
@operator_option
@json_option
@friendly_errors
def events_show(tenant: str, seq: int, operator: str | None, as_json: bool) -> None:
    """One event in full: data, ids, hashes, and the checkpoint that covers it."""
    tenant_id = parse_tenant(tenant)
    if seq < 1:
        raise CommandFailed("SEQ: 1 or more")
    who = Operator.resolve(operator)

    async def run() -> tuple[dict[str, Any], int]:
        async with investigating(load_settings(), who) as s:
            event, coverage = await s.investigator.event(tenant_id, seq)
            audit_seq = await s.investigator.record(tenant_id, "events show", {"seq": seq}, 1)
            view = event_view(event, hashes=True)
            view["receipt"] = {
                "covered_by_checkpoint": coverage.checkpoint_size,
                "checkpoint_signed_at": coverage.signed_at.isoformat()
                if coverage.signed_at
                else None,
                "latest_checkpoint": coverage.latest_size,
            }
            return view, audit_seq

    view, audit_seq = asyncio.run(run())
    if as_json:
        print_json({"tenant": str(tenant_id), "event": view, "investigation_seq": audit_seq})
        return
    table = Table(title=f"tenant {tenant_id}, seq {seq}", show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for name in ("seq", "id", "type", "stream", "version", "recorded_at"):
        table.add_row(name, escape(str(view[name])))
    table.add_row("actor", escape(_actor(view)))
    table.add_row("causation", str(view["causation"] or "—"))
    table.add_row("correlation", view["correlation"])
    for name, value in view["data"].items():
        shown = "[yellow](erased)[/yellow]" if name in view["erased"] else escape(json.dumps(value))
        table.add_row(f"data.{escape(name)}", shown)
    table.add_row("leaf hash", view["leaf_hash"])
    table.add_row("chain hash", view["chain_hash"])
    receipt = view["receipt"]
    if receipt["covered_by_checkpoint"] is not None:
        table.add_row(
            "receipt",
            f"[green]covered[/green] by the checkpoint of size {receipt['covered_by_checkpoint']}"
            f" (signed {receipt['checkpoint_signed_at']}); "
            f"GET /v1/events/{seq}/receipt.tlog-proof",
        )
    else:
        latest = receipt["latest_checkpoint"]
        table.add_row(
            "receipt",
            "[yellow]not yet covered[/yellow]: "
            + (f"the latest checkpoint has size {latest}" if latest else "no checkpoint yet"),
        )
    out.print(table)
    show_recorded(audit_seq)


@events_group.command("tail")
@tenant_option
@click.option("--after", type=int, help="Resume after this seq (default: the log's end now).")
@click.option("--stream", help="Exact stream.")
@click.option("--type", "types", multiple=True, help="Exact event type (repeatable).")
@click.option("--actor", help="Actor id, or kind:id.")
@operator_option
@click.option("--jsonl", "--json", "jsonl", is_flag=True, help="One JSON event per line.")
@friendly_errors
def events_tail(
    tenant: str,
    after: int | None,
    stream: str | None,
    types: tuple[str, ...],
    actor: str | None,
    operator: str | None,
    jsonl: bool,
) -> None:
    """Follow the log live (NATS announcements; the store is read), until Ctrl-C."""
    tenant_id = parse_tenant(tenant)
    query = _query(
        stream=stream,
        types=types,
        actor=actor,
        subject=None,
        since=None,
        until=None,
        after=after or 0,
        limit=1,
    )
    who = Operator.resolve(operator)
    settings = load_settings()

    async def run() -> None:
        async with investigating(settings, who) as s:
            size = await s.investigator.head_size(tenant_id)  # an unknown tenant fails here
            start = after if after is not None else size
            following = dataclasses.replace(query, after=start)
            filters = {**following.audit_filters(), "follow": True}
            filters.pop("limit", None)
            seq = await s.investigator.record(tenant_id, "events tail", filters, None)
            if not jsonl:
                err.print(f"following tenant {tenant_id} after seq {start} (Ctrl-C stops)")
                show_recorded(seq)
            nats_url = settings.nats_url or _running_nats(settings)
            async with announcements(nats_url, tenant_id, _warn_polling) as wake:
                followed = s.investigator.follow(tenant_id, following, wake)
                async for events in followed:
                    _print_live(events, jsonl=jsonl)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def _running_nats(settings: Settings) -> str | None:
    running = read_run_info(settings.data_dir)
    return running.nats_url if running is not None else None


def _warn_polling(reason: str) -> None:
    err.print(f"[yellow]{reason}: reading the store every second instead[/yellow]")


def _print_live(events: list[RecordedEvent], *, jsonl: bool) -> None:
    for event in events:
        view = event_view(event)
        if jsonl:
            click.echo(json.dumps(view, sort_keys=True, ensure_ascii=False))
            continue
        out.print(
            f"{view['seq']:>8}  {view['recorded_at']}  {escape(view['type'])}  "
            f"{escape(view['stream'])}  {escape(_actor(view))}  {escape(_summary(view['data']))}",
            soft_wrap=True,
        )


# ---- timeline ------------------------------------------------------------------------------


@click.command("timeline")
@tenant_option
@click.option("--actor", help="Everything this actor did: id, or kind:id.")
@click.option("--subject", help="Everything that touched this stream or id.")
@_filter_options
@operator_option
@json_option
@jsonl_option
@friendly_errors
def timeline(
    tenant: str,
    actor: str | None,
    subject: str | None,
    since: str | None,
    until: str | None,
    after: int,
    limit: int,
    operator: str | None,
    as_json: bool,
    jsonl: bool,
) -> None:
    """What an actor did, or what touched a subject, in log order across streams."""
    if (actor is None) == (subject is None):
        raise CommandFailed("give --actor or --subject (exactly one)")
    tenant_id = parse_tenant(tenant)
    query = _query(
        stream=None,
        types=(),
        actor=actor,
        subject=subject,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    who_what = f"actor {actor}" if actor is not None else f"subject {subject}"
    _list_and_print(
        "timeline",
        tenant_id,
        query,
        Operator.resolve(operator),
        f"timeline of {who_what} in tenant {tenant_id}",
        as_json=as_json,
        jsonl=jsonl,
    )


# ---- state ---------------------------------------------------------------------------------


def _point(as_of_seq: int | None, as_of_version: int | None, as_of: str | None) -> Point:
    given = [p for p in (as_of_seq, as_of_version, as_of) if p is not None]
    if len(given) > 1:
        raise CommandFailed("give at most one of --as-of-seq, --as-of-version, --as-of")
    if as_of_seq is not None:
        return Point.at_seq(as_of_seq)
    if as_of_version is not None:
        return Point.at_version(as_of_version)
    if as_of is not None:
        return Point.at_time(parse_time(as_of, "--as-of"))
    return Point("latest")


def _state_dict(state: StateAt) -> dict[str, Any]:
    return {
        "stream": state.stream,
        "aggregate": state.aggregate,
        "as_of": str(state.point),
        "version": state.version,
        "seq": state.seq,
        "recorded_at": state.recorded_at.isoformat(),
        "state": state.state,
    }


def _change_dict(change: Change) -> dict[str, Any]:
    return {"field": change.field, "before": change.before, "after": change.after}


@click.command("state")
@tenant_option
@click.argument("stream")
@click.option("--as-of-seq", type=int, help="As it was after this log seq.")
@click.option("--as-of-version", type=int, help="As it was at this stream version.")
@click.option("--as-of", "as_of", metavar="TIME", help="As it was at this time (ISO 8601).")
@click.option(
    "--diff-from",
    metavar="POINT",
    help="Also show what changed since POINT: seq:N, version:V or a time.",
)
@operator_option
@json_option
@friendly_errors
def state(
    tenant: str,
    stream: str,
    as_of_seq: int | None,
    as_of_version: int | None,
    as_of: str | None,
    diff_from: str | None,
    operator: str | None,
    as_json: bool,
) -> None:
    """An aggregate's state as it was at a point (its stream folded up to there)."""
    tenant_id = parse_tenant(tenant)
    point = _point(as_of_seq, as_of_version, as_of)
    earlier = Point.parse(diff_from) if diff_from is not None else None
    who = Operator.resolve(operator)

    async def run() -> tuple[StateAt, StateAt | None, int]:
        async with investigating(load_settings(), who) as s:
            now = await s.investigator.state(tenant_id, stream, point)
            before = (
                await s.investigator.state(tenant_id, stream, earlier)
                if earlier is not None
                else None
            )
            filters: dict[str, Any] = {"stream": stream, "as_of": str(point)}
            if earlier is not None:
                filters["diff_from"] = str(earlier)
            seq = await s.investigator.record(tenant_id, "state", filters, now.version)
            return now, before, seq

    with spinner(not as_json and err.is_terminal, "folding the stream"):
        now, before, audit_seq = asyncio.run(run())
    changes = diff(before, now) if before is not None else None
    if as_json:
        result: dict[str, Any] = {
            "tenant": str(tenant_id),
            **_state_dict(now),
            "investigation_seq": audit_seq,
        }
        if before is not None and changes is not None:
            result["diff_from"] = _state_dict(before)
            result["changes"] = [_change_dict(c) for c in changes]
        print_json(result)
        return
    table = Table(
        title=escape(f"{now.aggregate} {now.stream} as of {now.point}"),
        caption=f"version {now.version}, last event seq {now.seq} at "
        f"{_when(now.recorded_at.isoformat())} UTC",
        show_header=False,
    )
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for name, value in now.state.items():
        table.add_row(escape(name), _cell(value))
    out.print(table)
    if before is not None and changes is not None:
        changed = Table(
            title=escape(
                f"changes from {before.point} (version {before.version}) "
                f"to {now.point} (version {now.version})"
            )
        )
        for column in ("field", "before", "after"):
            changed.add_column(column, overflow="fold")
        for c in changes:
            changed.add_row(
                escape(c.field),
                escape(json.dumps(c.before, ensure_ascii=False)),
                escape(json.dumps(c.after, ensure_ascii=False)),
            )
        if not changes:
            changed.add_row("(no change)", "", "")
        out.print(changed)
    show_recorded(audit_seq)


# ---- tenants --------------------------------------------------------------------------------


@click.group("tenants")
def tenants_group() -> None:
    """Tenants of this deployment."""


@tenants_group.command("list")
@json_option
@friendly_errors
def tenants_list(as_json: bool) -> None:
    """Every tenant: id, slug, log size and signed size (no event is read)."""

    async def run() -> list[dict[str, Any]]:
        async with cli_pool(load_settings(), max_size=1) as (pool, _urls):
            entries = await list_tenants(pool)
        return [
            {
                "tenant": str(e.tenant_id),
                "slug": e.slug,
                "created_at": e.created_at.isoformat() if e.created_at else None,
                "events": e.size,
                "signed_size": e.checkpoint_size,
            }
            for e in entries
        ]

    entries = asyncio.run(run())
    if as_json:
        print_json({"tenants": entries})
        return
    table = Table(title=f"{len(entries)} tenant(s)")
    for column in ("tenant", "slug", "created at", "events", "signed size"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e["tenant"],
            escape(e["slug"] or "—"),
            e["created_at"] or "—",
            str(e["events"]),
            str(e["signed_size"]),
        )
    out.print(table)


# ---- replay dry-run --------------------------------------------------------------------------


@click.command("dry-run")
@click.argument("projection_name", metavar="PROJECTION")
@tenant_option
@click.option("--until", "until", type=int, required=True, help="Replay up to this seq.")
@click.option("--keep", is_flag=True, help="Leave the scratch schema (drop it yourself).")
@click.option("--max-rows", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@operator_option
@json_option
@friendly_errors
def replay_dry_run(
    projection_name: str,
    tenant: str,
    until: int,
    keep: bool,
    max_rows: int,
    operator: str | None,
    as_json: bool,
) -> None:
    """Rebuild PROJECTION for one tenant as of seq UNTIL into a scratch schema, show it.

    The live read model is not touched. The scratch schema is dropped afterwards
    unless --keep.
    """
    projection = _projection(projection_name)
    tenant_id = parse_tenant(tenant)
    who = Operator.resolve(operator)
    if until < 1:
        raise CommandFailed("--until: a seq, 1 or more")

    async def run() -> tuple[AsOfCopy, int]:
        async with investigating(load_settings(), who) as s:
            size = await s.investigator.head_size(tenant_id)
            if until > size:
                raise CommandFailed(f"--until {until} is past the end of the log ({size})")
            with progress_bar(not as_json and err.is_terminal, "replaying") as progress:
                copy = await build_as_of(
                    s.urls.owner,
                    s.investigator.pool,
                    s.investigator.store,
                    projection,
                    tenant_id,
                    until,
                    grantee=CLI_ROLE,
                    keep=keep,
                    max_rows=max_rows,
                    progress=progress,
                )
            filters = {"projection": projection.name, "until": until, "keep": keep}
            seq = await s.investigator.record(tenant_id, "replay dry-run", filters, copy.events)
            return copy, seq

    copy, audit_seq = asyncio.run(run())
    result = {
        "projection": projection.name,
        "tenant": str(tenant_id),
        "until": copy.until,
        "events": copy.events,
        "failed_at": copy.failed_at,
        "failure": copy.failure,
        "schema": copy.schema if copy.kept else None,
        "tables": copy.tables,
        "truncated": copy.truncated,
        "investigation_seq": audit_seq,
    }
    if as_json:
        print_json(result)
        return
    for name, rows in copy.tables.items():
        table = Table(title=f"{projection.name}.{name} as of seq {until}: {len(rows)} row(s)")
        columns = [c for c in (rows[0] if rows else []) if c != "tenant_id"]
        for column in columns:
            table.add_column(escape(column), overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        out.print(table)
        if name in copy.truncated:
            err.print(f"[yellow]{name}: only the first {max_rows} rows[/yellow]")
    if copy.failed_at is not None:
        err.print(
            f"[red]the projection failed at seq {copy.failed_at} ({copy.failure}); "
            "the copy stops before it[/red]"
        )
    if copy.kept:
        err.print(f"kept in schema {copy.schema} (DROP SCHEMA {copy.schema} CASCADE as owner)")
    show_recorded(audit_seq)


COMMANDS = (events_group, timeline, state, tenants_group)
DRY_RUN = replay_dry_run
