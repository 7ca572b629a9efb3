"""Read models built from the tenant logs: one module per read model."""

from __future__ import annotations

from projections.access import AccessProjection
from projections.audit_events import AuditEventsProjection
from projections.base import Projection
from projections.connectors import ConnectorsProjection
from projections.members import MembersProjection

ALL: tuple[Projection, ...] = (
    MembersProjection(),
    AccessProjection(),
    AuditEventsProjection(),
    ConnectorsProjection(),
)


def by_name(name: str) -> Projection | None:
    return next((p for p in ALL if p.name == name), None)
