"""The connectors directory: each connector's settings, status and credential metadata.

Built from ``connector.*`` events. It holds what the events hold: the kind,
version and fingerprint of the credential in use, never the credential.
``rotated_at`` is when the credential in use was set (first set or rotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from projections.base import Event, Projection


@dataclass(frozen=True, slots=True)
class ConnectorRow:
    connector_id: UUID
    kind: str
    name: str
    config: dict[str, Any]
    status: str
    rotating: bool
    credential_kind: str | None
    credential_version: int | None
    fingerprint: str | None
    rotated_at: datetime | None
    registered_at: datetime
    updated_at: datetime
    version: int


class ConnectorsProjection(Projection):
    name = "connectors"
    handles = frozenset(
        {
            "connector.registered",
            "connector.config_changed",
            "connector.paused",
            "connector.resumed",
            "connector.credential_set",
            "connector.rotation_started",
            "connector.rotation_completed",
        }
    )
    tables = """
        CREATE TABLE connectors_view (
            tenant_id           uuid NOT NULL,
            connector_id        uuid NOT NULL,
            kind                text NOT NULL,
            name                text NOT NULL,
            config              jsonb NOT NULL,
            status              text NOT NULL,
            rotating            boolean NOT NULL DEFAULT false,
            credential_kind     text,
            credential_version  integer,
            fingerprint         text,
            rotated_at          timestamptz,
            registered_at       timestamptz NOT NULL,
            updated_at          timestamptz NOT NULL,
            version             integer NOT NULL,
            PRIMARY KEY (tenant_id, connector_id)
        );
        CREATE INDEX connectors_view_kind ON connectors_view (tenant_id, kind);
    """

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        connector_id = UUID(event.entity_id)
        data = event.data
        if event.type == "connector.registered":
            await conn.execute(
                "INSERT INTO connectors_view (tenant_id, connector_id, kind, name, config, "
                "status, registered_at, updated_at, version) "
                "VALUES ($1, $2, $3, $4, $5::jsonb, 'active', $6, $6, $7)",
                event.tenant_id,
                connector_id,
                data["kind"],
                data["name"],
                orjson.dumps(data["config"]).decode(),
                event.ts,
                event.version,
            )
            return
        match event.type:
            case "connector.config_changed":
                change, values = "config = $4::jsonb", [orjson.dumps(data["config"]).decode()]
            case "connector.paused":
                change, values = "status = 'paused'", []
            case "connector.resumed":
                change, values = "status = 'active', rotating = false", []
            case "connector.rotation_started":
                change, values = "rotating = true", []
            case "connector.credential_set" | "connector.rotation_completed":
                change = (
                    "credential_kind = $4, credential_version = $5, fingerprint = $6, "
                    "rotated_at = $3"
                )
                values = [data["credential_kind"], data["version"], data["fingerprint"]]
            case _:
                return
        status = await conn.execute(
            f"UPDATE connectors_view SET {change}, updated_at = $3, "
            f"version = ${4 + len(values)} WHERE tenant_id = $1 AND connector_id = $2",
            event.tenant_id,
            connector_id,
            event.ts,
            *values,
            event.version,
        )
        if status != "UPDATE 1":
            raise LookupError(f"seq {event.seq}: no connector row to update")


_COLUMNS = (
    "connector_id, kind, name, config::text AS config, status, rotating, credential_kind, "
    "credential_version, fingerprint, rotated_at, registered_at, updated_at, version"
)
_TABLE = f"{ConnectorsProjection().schema}.connectors_view"


def _row(record: asyncpg.Record) -> ConnectorRow:
    values = dict(record)
    values["config"] = orjson.loads(values["config"])
    return ConnectorRow(**values)


async def list_connectors(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    kind: str | None = None,
    status: str | None = None,
    after: UUID | None = None,
    limit: int = 100,
) -> list[ConnectorRow]:
    """One page of a tenant's connectors ordered by id (``conn``: a tenant transaction)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE tenant_id = $1 "
        "AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR status = $3) "
        "AND ($4::uuid IS NULL OR connector_id > $4) ORDER BY connector_id LIMIT $5",
        tenant_id,
        kind,
        status,
        after,
        limit,
    )
    return [_row(r) for r in rows]


async def get_connector(
    conn: asyncpg.Connection, tenant_id: UUID, connector_id: UUID
) -> ConnectorRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE tenant_id = $1 AND connector_id = $2",
        tenant_id,
        connector_id,
    )
    return None if row is None else _row(row)
