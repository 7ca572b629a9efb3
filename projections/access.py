"""Access requests, their history (with every decision's signature) and the grants.

Built from ``access_request.*`` and ``grant.*`` events. ``justification`` is personal
data: it reads as NULL once the requester's data subject is erased and the model is
rebuilt. The history keeps each decision's signature and key id, so a reader can check
it against the tenant's published approval key without the log.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from projections.base import Event, Projection

_REQUEST_EVENTS = frozenset(
    {
        "access_request.submitted",
        "access_request.edited",
        "access_request.approved",
        "access_request.rejected",
        "access_request.executed",
        "access_request.withdrawn",
    }
)
_GRANT_EVENTS = frozenset({"grant.issued", "grant.expired", "grant.revoked", "grant.provisioned"})
_STATUS = {
    "access_request.rejected": "rejected",
    "access_request.executed": "executed",
    "access_request.withdrawn": "withdrawn",
}


@dataclass(frozen=True, slots=True)
class RequestRow:
    request_id: UUID
    requester_id: UUID
    connector_id: UUID
    resource: str
    access_level: str
    justification: str | None
    duration_seconds: int
    items: int
    risk: str
    approvals_needed: int
    approval_ttl_seconds: int
    content_version: int
    content_hash: str
    status: str
    submitted_at: datetime
    updated_at: datetime
    grant_id: UUID | None
    version: int


@dataclass(frozen=True, slots=True)
class HistoryRow:
    seq: int
    type: str
    actor_id: UUID | None
    at: datetime
    content_version: int | None
    content_hash: str | None
    approval_id: UUID | None
    key_id: str | None
    signature: bytes | None
    grant_id: UUID | None


@dataclass(frozen=True, slots=True)
class GrantRow:
    grant_id: UUID
    request_id: UUID
    member_id: UUID
    connector_id: UUID
    resource: str
    access_level: str
    granted_at: datetime
    expires_at: datetime
    status: str
    ended_at: datetime | None
    revoked_by: UUID | None
    provisioned: bool | None
    deprovisioned: bool | None
    version: int


class AccessProjection(Projection):
    name = "access"
    handles = _REQUEST_EVENTS | _GRANT_EVENTS
    tables = """
        CREATE TABLE requests_view (
            tenant_id            uuid NOT NULL,
            request_id           uuid NOT NULL,
            requester_id         uuid NOT NULL,
            connector_id         uuid NOT NULL,
            resource             text NOT NULL,
            access_level         text NOT NULL,
            justification        text,
            duration_seconds     integer NOT NULL,
            items                bigint NOT NULL,
            risk                 text NOT NULL,
            approvals_needed     integer NOT NULL,
            approval_ttl_seconds integer NOT NULL,
            content_version      integer NOT NULL,
            content_hash         text NOT NULL,
            status               text NOT NULL,
            submitted_at         timestamptz NOT NULL,
            updated_at           timestamptz NOT NULL,
            grant_id             uuid,
            version              integer NOT NULL,
            PRIMARY KEY (tenant_id, request_id)
        );
        CREATE INDEX requests_view_requester ON requests_view (tenant_id, requester_id);
        CREATE INDEX requests_view_status ON requests_view (tenant_id, status);
        CREATE TABLE history_view (
            tenant_id        uuid NOT NULL,
            request_id       uuid NOT NULL,
            seq              bigint NOT NULL,
            type             text NOT NULL,
            actor_id         uuid,
            at               timestamptz NOT NULL,
            content_version  integer,
            content_hash     text,
            approval_id      uuid,
            key_id           text,
            signature        bytea,
            grant_id         uuid,
            PRIMARY KEY (tenant_id, request_id, seq)
        );
        CREATE INDEX history_view_decider ON history_view (tenant_id, actor_id, request_id);
        CREATE TABLE grants_view (
            tenant_id     uuid NOT NULL,
            grant_id      uuid NOT NULL,
            request_id    uuid NOT NULL,
            member_id     uuid NOT NULL,
            connector_id  uuid NOT NULL,
            resource      text NOT NULL,
            access_level  text NOT NULL,
            granted_at    timestamptz NOT NULL,
            expires_at    timestamptz NOT NULL,
            status        text NOT NULL,
            ended_at      timestamptz,
            revoked_by    uuid,
            provisioned   boolean,
            deprovisioned boolean,
            version       integer NOT NULL,
            PRIMARY KEY (tenant_id, grant_id)
        );
        CREATE INDEX grants_view_member ON grants_view (tenant_id, member_id);
        CREATE INDEX grants_view_resource ON grants_view (tenant_id, resource);
    """

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        if event.type in _GRANT_EVENTS:
            await self._grant(conn, event)
        else:
            await self._request(conn, event)

    async def _request(self, conn: asyncpg.Connection, event: Event) -> None:
        request_id = UUID(event.entity_id)
        data = event.data
        content = (
            (
                data["connector_id"],
                data["resource"],
                data["access_level"],
                event.personal.get("justification"),
                data["duration_seconds"],
                data["items"],
                data["risk"],
                data["approvals_needed"],
                data["approval_ttl_seconds"],
                data["content_version"],
                data["content_hash"],
            )
            if event.type in ("access_request.submitted", "access_request.edited")
            else None
        )
        if event.type == "access_request.submitted":
            assert content is not None
            await conn.execute(
                "INSERT INTO requests_view (tenant_id, request_id, requester_id, connector_id, "
                "resource, access_level, justification, duration_seconds, items, risk, "
                "approvals_needed, approval_ttl_seconds, content_version, content_hash, status, "
                "submitted_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
                "$10, $11, $12, $13, $14, 'pending', $15, $15, $16)",
                event.tenant_id,
                request_id,
                UUID(data["requester_id"]),
                *(UUID(content[0]), *content[1:]),
                event.ts,
                event.version,
            )
        elif content is not None:
            await self._update(
                conn,
                event,
                request_id,
                "connector_id = $5, resource = $6, access_level = $7, justification = $8, "
                "duration_seconds = $9, items = $10, risk = $11, approvals_needed = $12, "
                "approval_ttl_seconds = $13, content_version = $14, content_hash = $15",
                UUID(content[0]),
                *content[1:],
            )
        elif event.type == "access_request.executed":
            await self._update(
                conn,
                event,
                request_id,
                "status = 'executed', grant_id = $5",
                UUID(data["grant_id"]),
            )
        elif event.type in _STATUS:
            await self._update(conn, event, request_id, f"status = '{_STATUS[event.type]}'")
        decided = event.type in ("access_request.approved", "access_request.rejected")
        actor = data.get("approver_id") if decided else None
        if actor is None and event.actor_kind == "user":
            actor = event.actor_id
        await conn.execute(
            "INSERT INTO history_view (tenant_id, request_id, seq, type, actor_id, at, "
            "content_version, content_hash, approval_id, key_id, signature, grant_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            event.tenant_id,
            request_id,
            event.seq,
            event.type.split(".", 1)[1],
            UUID(actor) if actor else None,
            datetime.fromisoformat(data["decided_at"]) if decided else event.ts,
            data.get("content_version"),
            data.get("content_hash"),
            UUID(data["approval_id"]) if data.get("approval_id") else None,
            data.get("key_id"),
            base64.b64decode(data["signature"]) if data.get("signature") else None,
            UUID(data["grant_id"]) if data.get("grant_id") else None,
        )

    @staticmethod
    async def _update(
        conn: asyncpg.Connection, event: Event, request_id: UUID, change: str, *values: object
    ) -> None:
        status = await conn.execute(
            f"UPDATE requests_view SET {change}, updated_at = $3, version = $4 "
            "WHERE tenant_id = $1 AND request_id = $2",
            event.tenant_id,
            request_id,
            event.ts,
            event.version,
            *values,
        )
        if status != "UPDATE 1":
            raise LookupError(f"seq {event.seq}: no access request row to update")

    async def _grant(self, conn: asyncpg.Connection, event: Event) -> None:
        grant_id = UUID(event.entity_id)
        data = event.data
        if event.type == "grant.issued":
            await conn.execute(
                "INSERT INTO grants_view (tenant_id, grant_id, request_id, member_id, "
                "connector_id, resource, access_level, granted_at, expires_at, status, "
                "version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10)",
                event.tenant_id,
                grant_id,
                UUID(data["request_id"]),
                UUID(data["member_id"]),
                UUID(data["connector_id"]),
                data["resource"],
                data["access_level"],
                datetime.fromisoformat(data["granted_at"]),
                datetime.fromisoformat(data["expires_at"]),
                event.version,
            )
            return
        if event.type == "grant.provisioned":
            values: list[object] = [bool(data["ok"])]
            change = "provisioned = $4" if data["step"] == "grant" else "deprovisioned = $4"
        elif event.type == "grant.expired":
            change = "status = 'expired', ended_at = $4"
            values = [datetime.fromisoformat(data["expired_at"])]
        else:
            change = "status = 'revoked', ended_at = $4, revoked_by = $5"
            values = [datetime.fromisoformat(data["revoked_at"]), UUID(data["by"])]
        status = await conn.execute(
            f"UPDATE grants_view SET {change}, version = $3 WHERE tenant_id = $1 AND grant_id = $2",
            event.tenant_id,
            grant_id,
            event.version,
            *values,
        )
        if status != "UPDATE 1":
            raise LookupError(f"seq {event.seq}: no grant row to update")


_SCHEMA = AccessProjection().schema
_REQUEST_COLUMNS = ", ".join(RequestRow.__slots__)
_GRANT_COLUMNS = ", ".join(GrantRow.__slots__)
_HISTORY_COLUMNS = ", ".join(HistoryRow.__slots__)


async def list_requests(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    requester_id: UUID | None = None,
    status: str | None = None,
    connector_id: UUID | None = None,
    after: UUID | None = None,
    limit: int = 100,
) -> list[RequestRow]:
    """One page of requests by id (``conn``: a tenant transaction)."""
    rows = await conn.fetch(
        f"SELECT {_REQUEST_COLUMNS} FROM {_SCHEMA}.requests_view WHERE tenant_id = $1 "
        "AND ($2::uuid IS NULL OR requester_id = $2) AND ($3::text IS NULL OR status = $3) "
        "AND ($4::uuid IS NULL OR connector_id = $4) AND ($5::uuid IS NULL OR request_id > $5) "
        "ORDER BY request_id LIMIT $6",
        tenant_id,
        requester_id,
        status,
        connector_id,
        after,
        limit,
    )
    return [RequestRow(**dict(r)) for r in rows]


async def waiting_for(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    member_id: UUID,
    now: datetime,
    *,
    after: UUID | None = None,
    limit: int = 100,
) -> list[RequestRow]:
    """Pending requests of others that this member has not decided on in their current
    version and that still lack approvals now."""
    rows = await conn.fetch(
        f"SELECT {_REQUEST_COLUMNS} FROM {_SCHEMA}.requests_view r WHERE r.tenant_id = $1 "
        "AND r.status = 'pending' AND r.requester_id <> $2 "
        "AND ($4::uuid IS NULL OR r.request_id > $4) "
        f"AND NOT EXISTS (SELECT 1 FROM {_SCHEMA}.history_view h WHERE h.tenant_id = $1 "
        "  AND h.request_id = r.request_id AND h.actor_id = $2 "
        "  AND h.type IN ('approved', 'rejected') AND h.content_version = r.content_version) "
        f"AND (SELECT count(DISTINCT h.actor_id) FROM {_SCHEMA}.history_view h "
        "  WHERE h.tenant_id = $1 AND h.request_id = r.request_id AND h.type = 'approved' "
        "  AND h.content_version = r.content_version AND h.content_hash = r.content_hash "
        "  AND h.at + make_interval(secs => r.approval_ttl_seconds) > $3) "
        "  < r.approvals_needed "
        "ORDER BY r.request_id LIMIT $5",
        tenant_id,
        member_id,
        now,
        after,
        limit,
    )
    return [RequestRow(**dict(r)) for r in rows]


async def get_request(
    conn: asyncpg.Connection, tenant_id: UUID, request_id: UUID
) -> tuple[RequestRow, list[HistoryRow]] | None:
    row = await conn.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM {_SCHEMA}.requests_view "
        "WHERE tenant_id = $1 AND request_id = $2",
        tenant_id,
        request_id,
    )
    if row is None:
        return None
    history = await conn.fetch(
        f"SELECT {_HISTORY_COLUMNS} FROM {_SCHEMA}.history_view "
        "WHERE tenant_id = $1 AND request_id = $2 ORDER BY seq",
        tenant_id,
        request_id,
    )
    return RequestRow(**dict(row)), [HistoryRow(**dict(h)) for h in history]


async def list_grants(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    member_id: UUID | None = None,
    resource: str | None = None,
    connector_id: UUID | None = None,
    active_at: datetime | None = None,
    after: UUID | None = None,
    limit: int = 100,
) -> list[GrantRow]:
    """One page of grants by id; ``active_at``: only those active at that moment."""
    rows = await conn.fetch(
        f"SELECT {_GRANT_COLUMNS} FROM {_SCHEMA}.grants_view WHERE tenant_id = $1 "
        "AND ($2::uuid IS NULL OR member_id = $2) AND ($3::text IS NULL OR resource = $3) "
        "AND ($4::uuid IS NULL OR connector_id = $4) "
        "AND ($5::timestamptz IS NULL OR (status = 'active' AND granted_at <= $5 "
        "     AND expires_at > $5)) "
        "AND ($6::uuid IS NULL OR grant_id > $6) ORDER BY grant_id LIMIT $7",
        tenant_id,
        member_id,
        resource,
        connector_id,
        active_at,
        after,
        limit,
    )
    return [GrantRow(**dict(r)) for r in rows]


async def get_grant(conn: asyncpg.Connection, tenant_id: UUID, grant_id: UUID) -> GrantRow | None:
    row = await conn.fetchrow(
        f"SELECT {_GRANT_COLUMNS} FROM {_SCHEMA}.grants_view "
        "WHERE tenant_id = $1 AND grant_id = $2",
        tenant_id,
        grant_id,
    )
    return None if row is None else GrantRow(**dict(row))
