"""An API key: a member's credential for scripts, with scopes and an expiry.

The key's secret never enters an event. Scopes are a subset of the issuer's
permissions when issued; at use, they are intersected with the member's
current role, so a demotion narrows every key at once. Rotation issues a
successor and retires this key after an overlap window.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.errors import ConflictError, InvalidError
from domain.permissions import Permission, check_scopes_within
from domain.recorded import RecordedAggregate
from domain.roles import Role

MAX_LIFETIME = timedelta(days=366)
MAX_ROTATION_OVERLAP = timedelta(days=30)


class InvalidApiKeyError(InvalidError):
    pass


class ApiKeyStateError(ConflictError):
    pass


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidApiKeyError("a key name is 1 to 100 characters")
    return name


class ApiKey(RecordedAggregate):
    category: ClassVar[str] = "apikey"

    class Issued(RecordedAggregate.Created):
        member_id: UUID
        name: str
        prefix: str
        scopes: list[str]
        expires_at: datetime | None
        rotated_from: UUID | None

    class Rotated(RecordedAggregate.Event):
        successor_id: UUID
        retires_at: datetime

    class Revoked(RecordedAggregate.Event):
        pass

    @classmethod
    def issue(
        cls,
        *,
        member_id: UUID,
        issuer_role: Role,
        name: str,
        prefix: str,
        scopes: frozenset[Permission],
        expires_at: datetime | None,
        now: datetime,
        rotated_from: UUID | None = None,
    ) -> ApiKey:
        check_scopes_within(issuer_role, scopes)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidApiKeyError("expires_at needs a time zone")
            if expires_at <= now:
                raise InvalidApiKeyError("expires_at must be in the future")
            if expires_at - now > MAX_LIFETIME:
                raise InvalidApiKeyError("a key lives at most 366 days")
        return cls._create(
            cls.Issued,
            member_id=member_id,
            name=_check_name(name),
            prefix=prefix,
            scopes=sorted(scopes),
            expires_at=expires_at,
            rotated_from=rotated_from,
        )

    def __init__(
        self,
        member_id: UUID,
        name: str,
        prefix: str,
        scopes: list[str],
        expires_at: datetime | None,
        rotated_from: UUID | None,
    ) -> None:
        self.member_id = member_id
        self.name = name
        self.prefix = prefix
        self.scopes = frozenset(Permission(s) for s in scopes)
        self.expires_at = expires_at
        self.rotated_from = rotated_from
        self.successor_id: UUID | None = None
        self.revoked = False

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def rotate(self, successor_id: UUID, *, overlap: timedelta, now: datetime) -> None:
        if not self.usable_at(now):
            raise ApiKeyStateError("a revoked or expired key cannot be rotated")
        if self.successor_id is not None:
            raise ApiKeyStateError("the key was already rotated")
        if not timedelta(0) <= overlap <= MAX_ROTATION_OVERLAP:
            raise InvalidApiKeyError("the overlap is 0 seconds to 30 days")
        retires_at = now + overlap
        if self.expires_at is not None:
            retires_at = min(retires_at, self.expires_at)
        self._rotated(successor_id=successor_id, retires_at=retires_at)

    @event(Rotated)
    def _rotated(self, successor_id: UUID, retires_at: datetime) -> None:
        self.successor_id = successor_id
        self.expires_at = retires_at

    def revoke(self) -> None:
        if self.revoked:
            raise ApiKeyStateError("the key is already revoked")
        self._revoked()

    @event(Revoked)
    def _revoked(self) -> None:
        self.revoked = True
