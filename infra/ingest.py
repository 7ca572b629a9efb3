"""Recording other systems' audit events in a tenant's log.

One request's events (1 to 1,000, checked by domain/ingest.py) become ONE append of
``audit.recorded`` events to the tenant's ``audit-<tenant id>`` stream, in any order
(no expected version): all of them are written, or none. The e-mail address and the
IP address are personal fields, encrypted under a data subject per external person:
``ext-<HMAC-SHA256(tenant key, lower(e-mail) or actor id)>``. The HMAC key is derived
from the tenant's first key, so the subject names nobody outside the tenant, and the
same person gets the same subject in every event: erasing that subject shreds their
e-mail address and IP addresses everywhere in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from domain.ingest import ExternalAuditEvent
from infra.credentials import derive_key, keyed_hash
from infra.db import tenant_transaction
from infra.eventstore import Actor, AppendResult, EventStore, NewEvent
from infra.keyring import Keyring

RECORDED: Final = "audit.recorded"
EXPORTED: Final = "audit.exported"
SUBJECT_PREFIX: Final = "ext-"


def audit_stream(tenant_id: UUID) -> str:
    return f"audit-{tenant_id}"


class Ingestor:
    """Appends external audit events (and the record of their exports); one per process."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        keyring: Keyring,
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._subject_keys: dict[UUID, bytes] = {}

    def now(self) -> datetime:
        """The time ``occurred_at`` is checked against (not more than 5 minutes ahead)."""
        return self._clock()

    async def subject_of(self, tenant_id: UUID, basis: str) -> str:
        """The data subject of an external person (see the module docstring)."""
        key = await self._subject_key(tenant_id)
        return SUBJECT_PREFIX + keyed_hash(key, basis).hex()

    async def record(
        self, tenant_id: UUID, actor: Actor, events: Sequence[ExternalAuditEvent]
    ) -> AppendResult:
        """Append ``events`` in one command: all or nothing."""
        key = await self._subject_key(tenant_id)
        stream = audit_stream(tenant_id)
        subjects: dict[str, str] = {}
        new_events = []
        for event in events:
            personal: dict[str, str] = {}
            if event.actor_email is not None:
                personal["actor_email"] = event.actor_email
            if event.source_ip is not None:
                personal["source_ip"] = event.source_ip
            subject = None
            if personal:
                basis = event.subject_basis
                subject = subjects.get(basis)
                if subject is None:
                    subject = subjects[basis] = SUBJECT_PREFIX + keyed_hash(key, basis).hex()
            new_events.append(
                NewEvent(
                    stream=stream,
                    type=RECORDED,
                    data={
                        "actor": event.actor,
                        "action": event.action,
                        "resource": event.resource,
                        "outcome": event.outcome,
                        "occurred_at": event.occurred_at_text,
                        "metadata": event.metadata,
                    },
                    personal=personal,
                    subject=subject,
                )
            )
        return await self._store.append(
            tenant_id, new_events, expected={stream: None}, command_id=uuid4(), actor=actor
        )

    async def exported(
        self, tenant_id: UUID, actor: Actor, *, fmt: str, filters: Mapping[str, Any], up_to: int
    ) -> AppendResult:
        """Record an export (who, in what format, with which filters, up to which seq)
        before its first byte is sent: an export is itself an audit event."""
        stream = audit_stream(tenant_id)
        event = NewEvent(
            stream=stream,
            type=EXPORTED,
            data={"format": fmt, "filters": dict(filters), "up_to_seq": up_to},
        )
        return await self._store.append(
            tenant_id, [event], expected={stream: None}, command_id=uuid4(), actor=actor
        )

    async def _subject_key(self, tenant_id: UUID) -> bytes:
        key = self._subject_keys.get(tenant_id)
        if key is None:
            async with tenant_transaction(self._pool, tenant_id, readonly=True) as conn:
                tenant_key = await self._keyring.tenant_key(conn, tenant_id, 1)
            key = self._subject_keys[tenant_id] = derive_key(tenant_key, "external actor subject")
        return key
