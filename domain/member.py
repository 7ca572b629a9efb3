"""A member of a tenant: invited with an e-mail address and a role, then joins.

A member is *invited* (a one-time invite token exists), *joins* by setting a
password, and may be deactivated and reactivated. Their secrets (password hash,
TOTP secret, recovery codes) never enter an event: events record only that
they changed.
"""

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


def check_email(email: str) -> str:
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

    class Joined(RecordedAggregate.Event):
        """Accepted the invitation and set a password."""

    class PasswordChanged(RecordedAggregate.Event):
        pass

    class MfaEnrolled(RecordedAggregate.Event):
        pass

    class MfaDisabled(RecordedAggregate.Event):
        pass

    class RecoveryCodesGenerated(RecordedAggregate.Event):
        count: int

    class RoleChanged(RecordedAggregate.Event):
        role: Role

    class Deactivated(RecordedAggregate.Event):
        pass

    class Reactivated(RecordedAggregate.Event):
        pass

    @classmethod
    def invite(cls, tenant_id: UUID, email: str, role: Role) -> Member:
        return cls._create(
            cls.Invited, tenant_id=tenant_id, email=check_email(email), role=_role(role)
        )

    def __init__(self, tenant_id: UUID, email: str | None, role: Role) -> None:
        self.tenant_id = tenant_id
        self.email = email
        self.role = role
        self.active = True
        self.joined = False
        self.mfa_enabled = False

    @property
    def is_active_owner(self) -> bool:
        return self.role is Role.OWNER and self.active and self.joined

    def join(self) -> None:
        if self.joined:
            raise MemberStateError("the invitation was already accepted")
        if not self.active:
            raise MemberStateError("a deactivated member cannot join")
        self._joined()

    @event(Joined)
    def _joined(self) -> None:
        self.joined = True

    def change_password(self) -> None:
        self._require_usable()
        self._password_changed()

    @event(PasswordChanged)
    def _password_changed(self) -> None:
        pass

    def enroll_mfa(self) -> None:
        self._require_usable()
        if self.mfa_enabled:
            raise MemberStateError("MFA is already enabled")
        self._mfa_enrolled()

    @event(MfaEnrolled)
    def _mfa_enrolled(self) -> None:
        self.mfa_enabled = True

    def disable_mfa(self) -> None:
        self._require_usable()
        if not self.mfa_enabled:
            raise MemberStateError("MFA is not enabled")
        if self.role is Role.OWNER:
            raise MemberStateError("an owner's MFA stays on once enrolled")
        self._mfa_disabled()

    @event(MfaDisabled)
    def _mfa_disabled(self) -> None:
        self.mfa_enabled = False

    def generate_recovery_codes(self, count: int) -> None:
        self._require_usable()
        self._recovery_codes_generated(count=count)

    @event(RecoveryCodesGenerated)
    def _recovery_codes_generated(self, count: int) -> None:
        pass

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

    def _require_usable(self) -> None:
        if not (self.active and self.joined):
            raise MemberStateError("only an active member who joined can do this")
