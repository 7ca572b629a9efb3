"""A tenant: an organisation with its own log, keys and members."""

from __future__ import annotations

import re
from typing import ClassVar

from eventsourcing.domain import event

from domain.errors import InvalidError
from domain.recorded import RecordedAggregate

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class InvalidTenantError(InvalidError):
    pass


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidTenantError("a tenant name is 1 to 200 characters")
    return name


class Tenant(RecordedAggregate):
    category: ClassVar[str] = "tenant"

    class Created(RecordedAggregate.Created):
        name: str
        slug: str

    class Renamed(RecordedAggregate.Event):
        name: str

    @classmethod
    def create(cls, name: str, slug: str) -> Tenant:
        if not _SLUG.fullmatch(slug):
            raise InvalidTenantError("a slug is lowercase letters, digits and dashes")
        return cls._create(cls.Created, name=_check_name(name), slug=slug)

    def __init__(self, name: str, slug: str) -> None:
        self.name = name
        self.slug = slug

    def rename(self, name: str) -> None:
        name = _check_name(name)
        if name != self.name:
            self._renamed(name=name)

    @event(Renamed)
    def _renamed(self, name: str) -> None:
        self.name = name
