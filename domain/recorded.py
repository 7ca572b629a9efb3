"""How aggregates and their events are named in the log.

An aggregate class sets ``category`` (its streams are ``<category>-<id>``);
each event class gets the type string ``<category>.<snake_case name>``, e.g.
``Member.RoleChanged`` is ``member.role_changed``. Event classes list their
personal fields in ``personal``: those values never enter the leaf, and they
are typed ``str | None`` because they read as None once the subject is erased.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class RecordedAggregate(Aggregate):
    """Base of our aggregates: adds the naming rules above."""

    category: ClassVar[str] = ""

    @classmethod
    def stream_for(cls, aggregate_id: UUID) -> str:
        return f"{cls.category}-{aggregate_id}"

    @property
    def stream(self) -> str:
        return self.stream_for(self.id)


def event_type_name(aggregate: type[RecordedAggregate], event_class: type[Any]) -> str:
    return f"{aggregate.category}.{_CAMEL.sub('_', event_class.__name__).lower()}"


def personal_fields(event_class: type[Any]) -> tuple[str, ...]:
    fields: tuple[str, ...] = getattr(event_class, "personal", ())
    return fields


def event_classes(aggregate: type[RecordedAggregate]) -> dict[str, type[Any]]:
    """The aggregate's own event classes by type string.

    eventsourcing gives every aggregate class generated ``Event`` and
    ``Created`` classes; the generated ``Created`` is left out when the
    aggregate declares its own created event under another name.
    """
    own = [
        value
        for value in vars(aggregate).values()
        if isinstance(value, type)
        and issubclass(value, Aggregate.Event)
        and value.__qualname__.startswith(aggregate.__name__ + ".")
        and value.__name__ != "Event"
    ]
    creators = [c for c in own if issubclass(c, Aggregate.Created)]
    if len(creators) > 1:
        own = [c for c in own if c.__name__ != "Created"]
    return {event_type_name(aggregate, c): c for c in own}
