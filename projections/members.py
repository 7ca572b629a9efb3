"""The members directory: every member of a tenant, their role and whether active.

Built from ``member.*`` events. ``email`` is personal data: it reads as NULL
once the member's data subject is erased and the directory is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from projections.base import Event, Projection


@dataclass(frozen=True, slots=True)
class MemberRow:
    member_id: UUID
    email: str | None
    role: str
    active: bool
    invited_at: datetime
    updated_at: datetime
    version: int


class MembersProjection(Projection):
    name = "members"
    handles = frozenset(
        {"member.invited", "member.role_changed", "member.deactivated", "member.reactivated"}
    )
    tables = """
        CREATE TABLE members_view (
            tenant_id   uuid NOT NULL,
            member_id   uuid NOT NULL,
            email       text,
            role        text NOT NULL,
            active      boolean NOT NULL,
            invited_at  timestamptz NOT NULL,
            updated_at  timestamptz NOT NULL,
            version     integer NOT NULL,
            PRIMARY KEY (tenant_id, member_id)
        );
        CREATE INDEX members_view_email ON members_view (tenant_id, lower(email));
        CREATE INDEX members_view_role ON members_view (tenant_id, role);
    """

    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        member_id = UUID(event.entity_id)
        match event.type:
            case "member.invited":
                await conn.execute(
                    "INSERT INTO members_view (tenant_id, member_id, email, role, active, "
                    "invited_at, updated_at, version) VALUES ($1, $2, $3, $4, true, $5, $5, $6)",
                    event.tenant_id,
                    member_id,
                    event.personal.get("email"),
                    event.data["role"],
                    event.ts,
                    event.version,
                )
            case "member.role_changed":
                await self._update(conn, event, member_id, "role = $4", event.data["role"])
            case "member.deactivated":
                await self._update(conn, event, member_id, "active = $4", False)
            case "member.reactivated":
                await self._update(conn, event, member_id, "active = $4", True)

    @staticmethod
    async def _update(
        conn: asyncpg.Connection, event: Event, member_id: UUID, change: str, value: object
    ) -> None:
        status = await conn.execute(
            f"UPDATE members_view SET {change}, updated_at = $3, version = $5 "
            "WHERE tenant_id = $1 AND member_id = $2",
            event.tenant_id,
            member_id,
            event.ts,
            value,
            event.version,
        )
        if status != "UPDATE 1":
            raise LookupError(f"seq {event.seq}: no member row to update")

    async def apply_batch(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        """The page folded per member in Python, then ONE statement: the members invited
        in the page are inserted as they end up, the others updated to how they end up.
        Raises where ``apply`` would: an invite of a member who exists (the insert
        violates the key; twice in the page: here), a change of one who does not (fewer
        rows updated than members changed), a missing or null role."""
        if not events:
            return
        invited: dict[UUID, list[Any]] = {}
        """member -> [email, role, active, invited_at, updated_at, version]"""
        changed: dict[UUID, list[Any]] = {}
        """member -> [role or None, active or None, updated_at, version]"""
        ids: dict[str, UUID] = {}
        for event in events:
            member_id = ids.get(event.stream)
            if member_id is None:
                member_id = ids[event.stream] = UUID(event.entity_id)
            match event.type:
                case "member.invited":
                    if member_id in invited or member_id in changed:
                        raise LookupError(f"seq {event.seq}: member row exists already")
                    invited[member_id] = [
                        event.personal.get("email"),
                        event.data["role"],
                        True,
                        event.ts,
                        event.ts,
                        event.version,
                    ]
                    continue
                case "member.role_changed":
                    role = event.data["role"]
                    if role is None:
                        raise ValueError(f"seq {event.seq}: role is null")
                    column, value = 0, role
                case "member.deactivated":
                    column, value = 1, False
                case "member.reactivated":
                    column, value = 1, True
                case _:
                    continue
            row = invited.get(member_id)
            if row is not None:  # invited earlier in this page: fold into the insert
                row[column + 1], row[4], row[5] = value, event.ts, event.version
                continue
            row = changed.setdefault(member_id, [None, None, None, None])
            row[column], row[2], row[3] = value, event.ts, event.version
        new, old = list(invited.values()), list(changed.values())
        updated = await conn.fetchval(
            _APPLY_BATCH,
            events[0].tenant_id,
            list(invited),
            *([r[i] for r in new] for i in range(6)),
            list(changed),
            *([r[i] for r in old] for i in range(4)),
        )
        if updated != len(changed):
            raise LookupError(f"seqs {events[0].seq}-{events[-1].seq}: a member row is missing")


_APPLY_BATCH = """
    WITH inserted AS (
        INSERT INTO members_view
            (tenant_id, member_id, email, role, active, invited_at, updated_at, version)
        SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::boolean[],
            $6::timestamptz[], $7::timestamptz[], $8::integer[])
    ), updated AS (
        UPDATE members_view m SET role = COALESCE(c.role, m.role),
            active = COALESCE(c.active, m.active), updated_at = c.updated_at,
            version = c.version
        FROM unnest($9::uuid[], $10::text[], $11::boolean[], $12::timestamptz[],
            $13::integer[]) AS c (member_id, role, active, updated_at, version)
        WHERE m.tenant_id = $1 AND m.member_id = c.member_id
        RETURNING 1
    )
    SELECT count(*) FROM updated
"""

_COLUMNS = "member_id, email, role, active, invited_at, updated_at, version"
_TABLE = f"{MembersProjection().schema}.members_view"


async def list_members(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    *,
    role: str | None = None,
    active: bool | None = None,
    after: UUID | None = None,
    limit: int = 100,
) -> list[MemberRow]:
    """One page of a tenant's members ordered by id (``conn``: a tenant transaction)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE tenant_id = $1 "
        "AND ($2::text IS NULL OR role = $2) AND ($3::boolean IS NULL OR active = $3) "
        "AND ($4::uuid IS NULL OR member_id > $4) ORDER BY member_id LIMIT $5",
        tenant_id,
        role,
        active,
        after,
        limit,
    )
    return [MemberRow(**dict(r)) for r in rows]


async def get_member(
    conn: asyncpg.Connection, tenant_id: UUID, member_id: UUID
) -> MemberRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {_TABLE} WHERE tenant_id = $1 AND member_id = $2",
        tenant_id,
        member_id,
    )
    return None if row is None else MemberRow(**dict(row))
