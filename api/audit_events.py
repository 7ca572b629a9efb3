"""Other systems' audit events over HTTP: record them (one or a batch), query, export.

Recording checks the whole body first (domain/ingest.py) and appends one command, so
a batch is written whole or not at all. Queries and exports read the
``audit_events`` read model. An export first appends an ``audit.exported`` event
(who, format, filters, the seq it exports up to) and only then sends its first byte;
it streams the rows a page at a time, so its size never sits in memory.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import ClientException
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from api.access import principal_of, requires
from api.positions import positioned, read_model, wait_for_min_position
from api.schemas import Body
from domain.ingest import (
    MAX_ACTOR,
    MAX_BATCH,
    MAX_RESOURCE,
    OUTCOMES,
    MalformedBodyError,
    parse_batch,
    parse_event,
)
from domain.permissions import Permission
from infra.db import tenant_transaction
from infra.runtime import Runtime
from projections.audit_events import (
    AuditEventRow,
    AuditEventsProjection,
    AuditFilters,
    iter_audit_events,
    list_audit_events,
    projected_position,
)

log = logging.getLogger(__name__)

_PROJECTION: Final = AuditEventsProjection.name
MAX_BATCH_BODY: Final = 4 * 1024 * 1024
"""A batch body's bound: 1,000 events of about 4 KiB each (a single event's metadata
may reach 16 KiB; a batch of such events must be split)."""
MAX_LIMIT: Final = 500
EXPORT_PAGE: Final = 1000
CSV_COLUMNS: Final = (
    "seq",
    "occurred_at",
    "recorded_at",
    "actor",
    "action",
    "resource",
    "outcome",
    "actor_email",
    "source_ip",
    "api_key_id",
    "metadata",
)
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
MEDIA_TYPES: Final = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
"""litestar adds ``; charset=utf-8`` to text/csv."""


class AuditRecorded(Body):
    seq: int


class AuditBatchRecorded(Body):
    first_seq: int
    last_seq: int
    count: int


class AuditEventView(Body):
    seq: int
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    metadata: dict[str, Any]
    actor_email: str | None
    """Personal data: null if not given, or once its data subject is erased."""
    source_ip: str | None
    api_key_id: UUID | None
    """The API key that recorded it (null when a member's session did)."""


class AuditEventPage(Body):
    items: list[AuditEventView]
    next_after: int | None
    """The last seq of this page, for ``after``; null when no more events match."""


# ---- OpenAPI: what the handlers read themselves ----------------------------------------

_STRING = OpenAPIType.STRING
_EVENT_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["actor", "action", "resource", "outcome", "occurred_at"],
    additional_properties=False,
    properties={
        "actor": Schema(type=_STRING, min_length=1, max_length=MAX_ACTOR),
        "action": Schema(type=_STRING, pattern=r"^[a-z][a-z0-9_.:-]{0,127}$"),
        "resource": Schema(type=_STRING, min_length=1, max_length=MAX_RESOURCE),
        "outcome": Schema(type=_STRING, enum=list(OUTCOMES)),
        "occurred_at": Schema(type=_STRING, format="date-time"),  # type: ignore[arg-type]
        "actor_email": Schema(type=[_STRING, OpenAPIType.NULL], max_length=254),
        "source_ip": Schema(type=[_STRING, OpenAPIType.NULL], max_length=64),
        "metadata": Schema(
            type=[OpenAPIType.OBJECT, OpenAPIType.NULL],
            description="at most 16 KiB as JSON; integers only (decimals as strings)",
        ),
    },
)
_BATCH_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["events"],
    additional_properties=False,
    properties={
        "events": Schema(
            type=OpenAPIType.ARRAY, items=_EVENT_SCHEMA, min_items=1, max_items=MAX_BATCH
        )
    },
)


def _body(schema: Schema) -> RequestBody:
    return RequestBody(content={"application/json": OpenAPIMediaType(schema=schema)}, required=True)


class _OneEventOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _body(_EVENT_SCHEMA)


class _BatchOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _body(_BATCH_SCHEMA)


# ---- helpers ----------------------------------------------------------------------------


def _filters(
    actor: str | None,
    action: str | None,
    resource: str | None,
    since: datetime | None,
    until: datetime | None,
) -> AuditFilters:
    for value in (actor, action, resource):
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise ClientException("a filter must not contain NUL")
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise ClientException("since and until need an offset, e.g. 2026-11-24T10:00:00Z")
    return AuditFilters(actor, action, resource, since, until)


def _view(row: AuditEventRow) -> AuditEventView:
    return AuditEventView(
        seq=row.seq,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
        actor=row.actor,
        action=row.action,
        resource=row.resource,
        outcome=row.outcome,
        metadata=row.metadata,
        actor_email=row.actor_email,
        source_ip=row.source_ip,
        api_key_id=row.api_key_id,
    )


def _cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_page(rows: list[AuditEventRow], *, header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            (
                r.seq,
                _ts(r.occurred_at),
                _ts(r.recorded_at),
                _cell(r.actor),
                _cell(r.action),
                _cell(r.resource),
                r.outcome,
                _cell(r.actor_email or ""),
                _cell(r.source_ip or ""),
                r.api_key_id or "",
                _cell(_JSON.encode(r.metadata).decode()),
            )
        )
    return out.getvalue().encode()


_JSON = msgspec.json.Encoder()


def _jsonl_page(rows: list[AuditEventRow]) -> bytes:
    return b"".join(_JSON.encode(_view(r)) + b"\n" for r in rows)


def _ts(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _export_chunks(
    runtime: Runtime, tenant_id: UUID, filters: AuditFilters, fmt: str, up_to: int
) -> AsyncIterator[bytes]:
    if fmt == "csv":
        yield _csv_page([], header=True)
    try:
        pages = iter_audit_events(
            runtime.pool, tenant_transaction, tenant_id, filters, up_to=up_to, page=EXPORT_PAGE
        )
        async for rows in pages:
            yield _csv_page(rows, header=False) if fmt == "csv" else _jsonl_page(rows)
    except Exception as e:  # the status line is sent: all that is left is to stop
        log.warning("audit export ended early (%s)", type(e).__name__)
        raise


class _ExportStream(Stream):
    """A stream whose own media type wins: litestar prefers the handler's (contrary to
    its docstring), and the export's depends on ``format``."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = self.media_type
        return super().to_asgi_response(*args, **kwargs)


FilterText = Annotated[str | None, QueryParameter(min_length=1, max_length=MAX_RESOURCE)]


class AuditEventController(Controller):
    path = "/v1/audit-events"
    tags = ["audit events"]

    @post(
        "/",
        operation_id="recordAuditEvent",
        summary="Record one audit event of another system in the tenant's log",
        opt=requires(Permission.AUDIT_INGEST),
        operation_class=_OneEventOperation,
        status_code=201,
    )
    async def record_one(self, request: Request[Any, Any, Any]) -> Response[AuditRecorded]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        ingest = runtime.ingest
        try:
            event = parse_event(await request.body(), now=ingest.now())
        except MalformedBodyError as e:
            raise ClientException(str(e)) from None
        result = await ingest.record(principal.tenant_id, principal.actor, [event])
        return positioned(AuditRecorded(seq=result.last_seq), result.last_seq, 201)

    @post(
        "/batch",
        operation_id="recordAuditEvents",
        summary=f"Record 1 to {MAX_BATCH} audit events in one request: all or none",
        opt=requires(Permission.AUDIT_INGEST),
        operation_class=_BatchOperation,
        status_code=201,
        request_max_body_size=MAX_BATCH_BODY,
    )
    async def record_batch(self, request: Request[Any, Any, Any]) -> Response[AuditBatchRecorded]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        ingest = runtime.ingest
        try:
            events = parse_batch(await request.body(), now=ingest.now())
        except MalformedBodyError as e:
            raise ClientException(str(e)) from None
        result = await ingest.record(principal.tenant_id, principal.actor, events)
        body = AuditBatchRecorded(
            first_seq=result.events[0].seq, last_seq=result.last_seq, count=len(result.events)
        )
        return positioned(body, result.last_seq, 201)

    @get(
        "/",
        operation_id="listAuditEvents",
        summary="Other systems' audit events, by seq, filtered, a page at a time",
        opt=requires(Permission.AUDIT_READ),
    )
    async def list_page(
        self,
        request: Request[Any, Any, Any],
        actor: FilterText = None,
        action: FilterText = None,
        resource: FilterText = None,
        since: Annotated[
            datetime | None, QueryParameter(description="occurred at or after (RFC 3339)")
        ] = None,
        until: Annotated[
            datetime | None, QueryParameter(description="occurred before (RFC 3339)")
        ] = None,
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
    ) -> AuditEventPage:
        filters = _filters(actor, action, resource, since, until)
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_audit_events(
                conn, principal.tenant_id, filters, after=after, limit=limit + 1
            ),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditEventPage(
            items=[_view(r) for r in rows], next_after=rows[-1].seq if more else None
        )

    @get(
        "/export",
        operation_id="exportAuditEvents",
        summary="Export the filtered audit events as CSV or JSON Lines (streamed)",
        description="Needs a recent authentication. Recorded in the tenant's log as an "
        "`audit.exported` event before the first byte. Exports what the read model holds "
        "when the request arrives (send `Strongroom-Min-Position` to include your own "
        "writes); the event's `up_to_seq` says how far that is.",
        opt={
            **requires(Permission.AUDIT_READ, step_up=True),
            "media_types": tuple(MEDIA_TYPES.values()),
        },
        media_type=MEDIA_TYPES["csv"],
    )
    async def export(
        self,
        request: Request[Any, Any, Any],
        format: FromQuery[Literal["csv", "jsonl"]] = "csv",
        actor: FilterText = None,
        action: FilterText = None,
        resource: FilterText = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> Stream:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        filters = _filters(actor, action, resource, since, until)
        await wait_for_min_position(request, _PROJECTION, principal.tenant_id)
        async with tenant_transaction(runtime.pool, principal.tenant_id, readonly=True) as conn:
            up_to = await projected_position(conn, principal.tenant_id)
        recorded = {
            "actor": actor,
            "action": action,
            "resource": resource,
            "since": None if since is None else _ts(since),
            "until": None if until is None else _ts(until),
        }
        await runtime.ingest.exported(
            principal.tenant_id,
            principal.actor,
            fmt=format,
            filters={k: v for k, v in recorded.items() if v is not None},
            up_to=up_to,
        )
        return _ExportStream(
            _export_chunks(runtime, principal.tenant_id, filters, format, up_to),
            media_type=MEDIA_TYPES[format],
            headers={
                "Content-Disposition": f'attachment; filename="audit-events-{up_to}.{format}"',
                "X-Accel-Buffering": "no",
            },
        )
