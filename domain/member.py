"""A member of a tenant: invited with an e-mail address and a role."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.errors import ConflictError, InvalidError
from domain.recorded import RecordedAggregate
from domain.roles import Role


class InvalidMemberError(InvalidError):
    pass


class MemberStateError(ConflictError):
    """The member is not in a state that allows this."""


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidMemberError(f"role must be one of {', '.join(Role)}") from None


def _check_email(email: str) -> str:
    email = email.strip()
    local, _, domain = email.rpartition("@")
    if not local or "." not in domain or len(email) > 254 or any(c.isspace() for c in email):
        raise InvalidMemberError("not an e-mail address")
    return email


class Member(RecordedAggregate):
    category: ClassVar[str] = "member"

    class Invited(RecordedAggregate.Created):
        personal: ClassVar[tuple[str, ...]] = ("email",)
        tenant_id: UUID
        email: str | None
        role: Role

    class RoleChanged(RecordedAggregate.Event):
        role: Role

    class Deactivated(RecordedAggregate.Event):
        pass

    class Reactivated(RecordedAggregate.Event):
        pass

    @classmethod
    def invite(cls, tenant_id: UUID, email: str, role: Role) -> Member:
        return cls._create(
            cls.Invited, tenant_id=tenant_id, email=_check_email(email), role=_role(role)
        )

    def __init__(self, tenant_id: UUID, email: str | None, role: Role) -> None:
        self.tenant_id = tenant_id
        self.email = email
        self.role = role
        self.active = True

    def change_role(self, role: Role) -> None:
        if not self.active:
            raise MemberStateError("a deactivated member's role cannot change")
        role = _role(role)
        if role != self.role:
            self._role_changed(role=role)

    @event(RoleChanged)
    def _role_changed(self, role: Role) -> None:
        self.role = role

    def deactivate(self) -> None:
        if not self.active:
            raise MemberStateError("the member is already deactivated")
        self._deactivated()

    @event(Deactivated)
    def _deactivated(self) -> None:
        self.active = False

    def reactivate(self) -> None:
        if self.active:
            raise MemberStateError("the member is active")
        self._reactivated()

    @event(Reactivated)
    def _reactivated(self) -> None:
        self.active = True
