"""Other systems' audit events, queryable: one row per ``audit.recorded`` event.

``actor_email`` and ``source_ip`` are personal data, stored decrypted (as
``members_view.email`` is): they read as NULL once their data subject is erased and
the read model is rebuilt. Queries page by ``seq`` (keyset), so a page boundary is
stable while events keep arriving: new ones only ever get higher seqs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from projections.base import Event, Projection

_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AuditEventRow:
    seq: int
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    action: str
    resource: str
    outcome: str
    metadata: dict[str, Any]
    actor_email: str | None
    source_ip: str | None
    api_key_id: UUID | None


@dataclass(frozen=True, slots=True)
class AuditFilters:
    actor: str | None = None
    action: str | None = None
    resource: str | None = None
    since: datetime | None = None
    """occurred_at >= since"""
    until: datetime | None = None
    """occurred_at < until"""


class AuditEventsProjection(Projection):
    name = "audit_events"
    handles = frozenset({"audit.recorded"})
    tables = """
        CREATE TABLE audit_events_view (
            tenant_id    uuid NOT NULL,
            seq          bigint NOT NULL,
            occurred_at  timestamptz NOT NULL,
            recorded_at  timestamptz NOT NULL,
            actor        text NOT NULL,
            action       text NOT NULL,
            resource     text NOT NULL,
            outcome      text NOT NULL,
            metadata     jsonb NOT NULL,
            actor_email  text,
            source_ip    text,
            api_key_id   uuid,
            PRIMARY KEY (tenant_id, seq)
        );
        CREATE INDEX audit_events_view_actor ON audit_events_view (tenant_id, actor, seq);
        CREATE INDEX audit_events_view_action ON audit_events_view (tenant_id, action, seq);
        CREATE INDEX audit_events_view_resource ON audit_events_view (tenant_id, resource, seq);
        CREATE INDEX audit_events_view_occurred ON audit_events_view (tenant_id, occurred_at);
    """

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        await self.apply_batch(conn, [event])

    async def apply_batch(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        """Every row of the page in ONE insert (a row for a seq that exists raises)."""
        if not events:
            return
        columns: list[list[Any]] = [[] for _ in range(11)]
        for event in events:
            data = event.data
            key_id = UUID(event.actor_id) if event.actor_kind == "api_key" else None
            values = (
                event.seq,
                datetime.fromisoformat(data["occurred_at"]),
                event.ts,
                data["actor"],
                data["action"],
                data["resource"],
                data["outcome"],
                _ENCODER.encode(data.get("metadata") or {}).decode(),
                event.personal.get("actor_email"),
                event.personal.get("source_ip"),
                key_id,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await conn.execute(_INSERT, events[0].tenant_id, *columns)


_INSERT: Final = """
    INSERT INTO audit_events_view (tenant_id, seq, occurred_at, recorded_at, actor, action,
        resource, outcome, metadata, actor_email, source_ip, api_key_id)
    SELECT $1, s, o, r, a, ac, re, ou, m::jsonb, e, ip, k
    FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::uuid[])
        AS t (s, o, r, a, ac, re, ou, m, e, ip, k)
"""

_TABLE: Final = f"{AuditEventsProjection().schema}.audit_events_view"
_COLUMNS: Final = (
    "seq, occurred_at, recorded_at, actor, action, resource, outcome, metadata::text, "
    "actor_email, source_ip, api_key_id"
)
_WHERE: Final = (
    "tenant_id = $1 AND seq > $2 AND ($3::bigint IS NULL OR seq <= $3) "
    "AND ($4::text IS NULL OR actor = $4) AND ($5::text IS NULL OR action = $5) "
    "AND ($6::text IS NULL OR resource = $6) "
    "AND ($7::timestamptz IS NULL OR occurred_at >= $7) "
    "AND ($8::timestamptz IS NULL OR occurred_at < $8)"
)
_PAGE: Final = f"SELECT {_COLUMNS} FROM {_TABLE} WHERE {_WHERE} ORDER BY seq LIMIT $9"
_DECODER = msgspec.json.Decoder(dict[str, Any])


def _row(record: asyncpg.Record) -> AuditEventRow:
    values = dict(record)
    values["metadata"] = _DECODER.decode(values["metadata"])
    return AuditEventRow(**values)


async def list_audit_events(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    filters: AuditFilters,
    *,
    after: int = 0,
    up_to: int | None = None,
    limit: int = 100,
) -> list[AuditEventRow]:
    """A page of events with ``after < seq <= up_to`` that pass ``filters``, by seq
    (``conn``: a tenant transaction)."""
    rows = await conn.fetch(
        _PAGE,
        tenant_id,
        after,
        up_to,
        filters.actor,
        filters.action,
        filters.resource,
        filters.since,
        filters.until,
        limit,
    )
    return [_row(r) for r in rows]


async def projected_position(conn: asyncpg.Connection, tenant_id: UUID) -> int:
    """How far this read model has read the tenant's log."""
    position = await conn.fetchval(
        f"SELECT last_seq FROM {AuditEventsProjection().schema}.position WHERE tenant_id = $1",
        tenant_id,
    )
    return int(position or 0)


async def iter_audit_events(
    pool: asyncpg.Pool,
    transaction: Any,
    tenant_id: UUID,
    filters: AuditFilters,
    *,
    up_to: int,
    page: int = 1000,
) -> AsyncIterator[list[AuditEventRow]]:
    """Every event with ``seq <= up_to`` that passes ``filters``, a page at a time, each
    page read in a short transaction of its own (``transaction(pool, tenant_id)``): a
    long export holds no snapshot and no connection between pages."""
    after = 0
    while True:
        async with transaction(pool, tenant_id) as conn:
            rows = await list_audit_events(
                conn, tenant_id, filters, after=after, up_to=up_to, limit=page
            )
        if not rows:
            return
        yield rows
        if len(rows) < page:
            return
        after = rows[-1].seq
