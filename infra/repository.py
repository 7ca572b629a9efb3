"""Saves eventsourcing aggregates to the event store and loads them back.

An event's fields (less ``originator_id``, ``originator_version``,
``timestamp`` and ``originator_topic``, which the store's envelope already
carries) become the leaf's ``data`` via ``msgspec.to_builtins``; fields the
event class lists in ``personal`` go through the PII envelope instead. An event
class with ``class_version = N > 1`` writes ``"class_version": N`` into
``data``; on load, older data is upcast step by step with the class's
``upcast_vK_vK+1(state)`` static methods, as eventsourcing does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.utils import get_topic

from domain.errors import NotFoundError
from domain.recorded import RecordedAggregate, event_classes, personal_fields
from infra.eventstore import (
    ERASED,
    Actor,
    AppendResult,
    Effect,
    EventStore,
    NewEvent,
    RecordedEvent,
)

A = TypeVar("A", bound=RecordedAggregate)

_ENVELOPE_FIELDS = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic"}
)


class UnknownEventTypeError(RuntimeError):
    """A stored event type has no class: a deployment is missing code."""


class EventRegistry:
    """Type strings <-> event classes for a set of aggregate classes."""

    def __init__(self, aggregates: Iterable[type[RecordedAggregate]]) -> None:
        self._by_type: dict[str, tuple[type[RecordedAggregate], type[Any]]] = {}
        self._by_class: dict[type[Any], tuple[type[RecordedAggregate], str]] = {}
        for aggregate in aggregates:
            for type_name, cls in event_classes(aggregate).items():
                self._by_type[type_name] = (aggregate, cls)
                self._by_class[cls] = (aggregate, type_name)

    def to_new_event(self, event: CanMutateAggregate[UUID]) -> NewEvent:
        try:
            aggregate, type_name = self._by_class[type(event)]
        except KeyError:
            raise UnknownEventTypeError(f"{type(event).__qualname__} is not registered") from None
        personal = set(personal_fields(type(event)))
        data: dict[str, Any] = {}
        values: dict[str, str] = {}
        for f in dataclasses.fields(event):  # type: ignore[arg-type]
            if f.name in _ENVELOPE_FIELDS:
                continue
            value = getattr(event, f.name)
            if f.name in personal:
                if value is not None:
                    values[f.name] = str(value)
            else:
                data[f.name] = msgspec.to_builtins(value)
        class_version = getattr(type(event), "class_version", 1)
        if class_version > 1:
            data["class_version"] = class_version
        stream = aggregate.stream_for(event.originator_id)
        return NewEvent(
            stream=stream,
            type=type_name,
            data=data,
            personal=values,
            subject=stream if values else None,
        )

    def to_domain_event(self, recorded: RecordedEvent) -> Aggregate.Event:
        try:
            aggregate, cls = self._by_type[recorded.type]
        except KeyError:
            raise UnknownEventTypeError(f"no class for event type {recorded.type}") from None
        state = dict(recorded.data)
        version = state.pop("class_version", 1)
        while version < getattr(cls, "class_version", 1):
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
        for name in personal_fields(cls):
            value = recorded.personal.get(name)
            state[name] = None if value is ERASED else value
        state["originator_id"] = UUID(recorded.stream.split("-", 1)[1])
        state["originator_version"] = recorded.version
        state["timestamp"] = recorded.ts
        if issubclass(cls, Aggregate.Created):
            state["originator_topic"] = get_topic(aggregate)
        event: Aggregate.Event = msgspec.convert(state, type=cls, strict=False)
        return event


class Repository:
    """Loads and saves aggregates of the registered classes, one tenant at a time."""

    def __init__(self, store: EventStore, registry: EventRegistry) -> None:
        self._store = store
        self._registry = registry

    async def save(
        self,
        tenant_id: UUID,
        *aggregates: RecordedAggregate,
        command_id: UUID,
        actor: Actor,
        correlation: UUID | None = None,
        effect: Effect | None = None,
    ) -> AppendResult | None:
        """Append the aggregates' pending events as one command (None if there were none)."""
        pending = [e for aggregate in aggregates for e in aggregate.collect_events()]
        if not pending:
            return None
        events: list[NewEvent] = []
        expected: dict[str, int | None] = {}
        for domain_event in pending:
            new = self._registry.to_new_event(domain_event)
            expected.setdefault(new.stream, domain_event.originator_version - 1)
            events.append(new)
        return await self._store.append(
            tenant_id,
            events,
            expected=expected,
            command_id=command_id,
            actor=actor,
            correlation=correlation,
            effect=effect,
        )

    async def get(
        self,
        tenant_id: UUID,
        cls: type[A],
        aggregate_id: UUID,
        *,
        version: int | None = None,
        to_seq: int | None = None,
    ) -> A:
        """The aggregate as of now, as of a stream version, or as of a log position."""
        recorded = await self._store.read_stream(
            tenant_id, cls.stream_for(aggregate_id), to_version=version, to_seq=to_seq
        )
        aggregate = self.fold(recorded)
        if aggregate is None or not isinstance(aggregate, cls):
            raise NotFoundError(f"no {cls.category} {aggregate_id}")
        return aggregate

    def fold(self, recorded: Sequence[RecordedEvent]) -> RecordedAggregate | None:
        aggregate: Any = None
        for r in recorded:
            aggregate = self._registry.to_domain_event(r).mutate(aggregate)
        return aggregate  # type: ignore[no-any-return]
