"""What a projection is: its tables, the event types it handles, and a projector.

A projection owns a schema of its own (``proj_<name>``). Its ``tables`` DDL
uses unqualified names; the framework (infra/readmodels.py) creates them in the
schema with a ``position`` table beside them, turns on row-level security for
every one of them (each must have a ``tenant_id`` column leading its primary
key), and grants the app role what it needs. The runner (infra/projector.py)
calls ``apply_batch`` with a page's events of handled types (in order; ``apply``
for a page with one), inside the tenant's transaction, with ``search_path`` set to
the schema; the same transaction moves the position. Events of other types only
move the position. ``apply_batch`` loops over ``apply`` unless a projection
overrides it with set-based SQL; if it raises, the runner rolls the page back and
applies it again one event at a time, to find the failing event.

A projector must be deterministic and must not fail on any event the log can
hold: a raise parks the tenant's partition until an operator looks at it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

import asyncpg
import msgspec

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class Event(msgspec.Struct, frozen=True):
    """One event of a tenant's log, as a projector sees it. Immutable; a msgspec struct
    rather than a frozen dataclass because a rebuild makes one per event, and a frozen
    dataclass costs ~1.8 µs to build against ~0.15 µs."""

    tenant_id: UUID
    seq: int
    stream: str
    version: int
    type: str
    ts: datetime
    actor_kind: str
    actor_id: str
    data: Mapping[str, Any]
    personal: Mapping[str, str | None]
    """Personal fields, decrypted; None once the data subject was erased."""

    @property
    def entity_id(self) -> str:
        """The id part of the stream name ``<category>-<id>``."""
        return self.stream.split("-", 1)[1]


class Projection(ABC):
    """A read model built from the log. Subclasses set the class attributes below."""

    name: ClassVar[str]
    tables: ClassVar[str]
    """DDL of the read model's tables (CREATE TABLE / CREATE INDEX), unqualified."""
    handles: ClassVar[frozenset[str]]
    """Event types passed to ``apply``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not _NAME.fullmatch(cls.name):
            raise ValueError(f"projection name {cls.name!r} must match {_NAME.pattern}")

    @property
    def schema(self) -> str:
        return schema_for(self.name)

    @abstractmethod
    async def apply(self, conn: asyncpg.Connection, event: Event) -> None:
        """Update the read model for one event (the position is moved by the caller)."""

    async def apply_batch(self, conn: asyncpg.Connection, events: Sequence[Event]) -> None:
        """Update the read model for consecutive events of one tenant, in order.

        An override must leave exactly the rows that ``apply`` would, one event after
        the other, and must raise when ``apply`` would raise for any of them (it need
        not say which: the runner then rolls back and calls ``apply`` one at a time).
        """
        for event in events:
            await self.apply(conn, event)


def schema_for(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"projection name {name!r} must match {_NAME.pattern}")
    return f"proj_{name}"
