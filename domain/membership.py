"""Decisions that involve a member and its tenant together (the owner invariant).

Each function checks first, then changes the member and, when the member gains
or loses the status of active owner, the tenant; both are saved as one command.
"""

from __future__ import annotations

from collections.abc import Callable

from domain.member import Member
from domain.permissions import check_may_assign
from domain.roles import Role
from domain.tenant import Tenant


def _keeping_owners(tenant: Tenant, member: Member, change: Callable[[], None]) -> None:
    was_owner = member.is_active_owner
    change()
    if was_owner and not member.is_active_owner:
        tenant.remove_owner(member.id)
    elif member.is_active_owner and not was_owner:
        tenant.add_owner(member.id)


def join(tenant: Tenant, member: Member) -> None:
    _keeping_owners(tenant, member, member.join)


def change_role(tenant: Tenant, member: Member, role: Role, *, by: Role) -> None:
    check_may_assign(by, member.role, role)
    if member.is_active_owner and role is not Role.OWNER:
        tenant.check_owner_removable(member.id)
    _keeping_owners(tenant, member, lambda: member.change_role(role))


def deactivate(tenant: Tenant, member: Member, *, by: Role) -> None:
    if member.role is Role.OWNER:
        check_may_assign(by, Role.OWNER, Role.OWNER)
    if member.is_active_owner:
        tenant.check_owner_removable(member.id)
    _keeping_owners(tenant, member, member.deactivate)


def reactivate(tenant: Tenant, member: Member, *, by: Role) -> None:
    check_may_assign(by, None, member.role)
    _keeping_owners(tenant, member, member.reactivate)
