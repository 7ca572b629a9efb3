"""A tenant: an organisation with its own log, keys, members and settings.

The tenant keeps the set of its active owners so that "the last owner cannot
be removed or demoted" is one aggregate's invariant: every command that could
take an owner away also changes the tenant, and optimistic concurrency on the
tenant's stream serializes two such commands.
"""

from __future__ import annotations

import re
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.errors import ConflictError, InvalidError
from domain.recorded import RecordedAggregate

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

DEFAULT_SESSION_IDLE_MINUTES = 30
DEFAULT_SESSION_ABSOLUTE_HOURS = 12


class InvalidTenantError(InvalidError):
    pass


class LastOwnerError(ConflictError):
    """The tenant would be left without an active owner."""


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidTenantError("a tenant name is 1 to 200 characters")
    return name


def check_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise InvalidTenantError("a slug is 1 to 63 lowercase letters, digits and dashes")
    return slug


class Tenant(RecordedAggregate):
    category: ClassVar[str] = "tenant"

    class Created(RecordedAggregate.Created):
        name: str
        slug: str

    class Renamed(RecordedAggregate.Event):
        name: str

    class SettingsChanged(RecordedAggregate.Event):
        mfa_required: bool
        session_idle_minutes: int
        session_absolute_hours: int

    class OwnerAdded(RecordedAggregate.Event):
        member_id: UUID

    class OwnerRemoved(RecordedAggregate.Event):
        member_id: UUID

    class KeyRotated(RecordedAggregate.Event):
        """A new primary tenant key; the data keys it wraps were re-wrapped under it."""

        from_version: int
        to_version: int
        subject_keys: int
        vault_keys: int

    @classmethod
    def create(cls, name: str, slug: str, *, tenant_id: UUID | None = None) -> Tenant:
        """A new tenant; its aggregate id is the tenant id (its log's id)."""
        return cls._create(cls.Created, id=tenant_id, name=_check_name(name), slug=check_slug(slug))

    def __init__(self, name: str, slug: str) -> None:
        self.name = name
        self.slug = slug
        self.mfa_required = False
        self.session_idle_minutes = DEFAULT_SESSION_IDLE_MINUTES
        self.session_absolute_hours = DEFAULT_SESSION_ABSOLUTE_HOURS
        self.owners: set[UUID] = set()
        self.key_version = 1
        """The primary tenant key's version (a tenant starts with version 1)."""

    def rename(self, name: str) -> None:
        name = _check_name(name)
        if name != self.name:
            self._renamed(name=name)

    @event(Renamed)
    def _renamed(self, name: str) -> None:
        self.name = name

    def change_settings(
        self,
        *,
        mfa_required: bool | None = None,
        session_idle_minutes: int | None = None,
        session_absolute_hours: int | None = None,
    ) -> None:
        idle = self.session_idle_minutes if session_idle_minutes is None else session_idle_minutes
        absolute = (
            self.session_absolute_hours
            if session_absolute_hours is None
            else session_absolute_hours
        )
        mfa = self.mfa_required if mfa_required is None else mfa_required
        if not 5 <= idle <= 24 * 60:
            raise InvalidTenantError("session_idle_minutes is 5 to 1440")
        if not 1 <= absolute <= 30 * 24:
            raise InvalidTenantError("session_absolute_hours is 1 to 720")
        if idle > absolute * 60:
            raise InvalidTenantError("the idle timeout cannot exceed the absolute lifetime")
        if (mfa, idle, absolute) != (
            self.mfa_required,
            self.session_idle_minutes,
            self.session_absolute_hours,
        ):
            self._settings_changed(
                mfa_required=mfa, session_idle_minutes=idle, session_absolute_hours=absolute
            )

    @event(SettingsChanged)
    def _settings_changed(
        self, mfa_required: bool, session_idle_minutes: int, session_absolute_hours: int
    ) -> None:
        self.mfa_required = mfa_required
        self.session_idle_minutes = session_idle_minutes
        self.session_absolute_hours = session_absolute_hours

    def add_owner(self, member_id: UUID) -> None:
        if member_id not in self.owners:
            self._owner_added(member_id=member_id)

    @event(OwnerAdded)
    def _owner_added(self, member_id: UUID) -> None:
        self.owners.add(member_id)

    def check_owner_removable(self, member_id: UUID) -> None:
        if self.owners == {member_id}:
            raise LastOwnerError("the last owner cannot be removed or demoted")

    def remove_owner(self, member_id: UUID) -> None:
        if member_id not in self.owners:
            return
        self.check_owner_removable(member_id)
        self._owner_removed(member_id=member_id)

    @event(OwnerRemoved)
    def _owner_removed(self, member_id: UUID) -> None:
        self.owners.discard(member_id)

    def record_key_rotation(
        self, *, from_version: int, to_version: int, subject_keys: int, vault_keys: int
    ) -> None:
        if from_version != self.key_version or to_version != from_version + 1:
            raise ConflictError("the tenant key moved on; rotate again")
        if subject_keys < 0 or vault_keys < 0:
            raise InvalidTenantError("re-wrapped key counts are not negative")
        self._key_rotated(
            from_version=from_version,
            to_version=to_version,
            subject_keys=subject_keys,
            vault_keys=vault_keys,
        )

    @event(KeyRotated)
    def _key_rotated(
        self, from_version: int, to_version: int, subject_keys: int, vault_keys: int
    ) -> None:
        self.key_version = to_version
