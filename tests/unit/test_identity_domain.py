"""Identity decisions in the domain, without I/O: given events, when a command, then
events or an error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain import membership
from domain.apikey import ApiKey, ApiKeyStateError, InvalidApiKeyError
from domain.errors import ConflictError, ForbiddenError, InvalidError
from domain.member import Member, MemberStateError
from domain.permissions import (
    ROLE_PERMISSIONS,
    Permission,
    check_may_assign,
    check_scopes_within,
    parse_scopes,
)
from domain.roles import Role
from domain.tenant import InvalidTenantError, LastOwnerError, Tenant

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def joined_member(tenant: Tenant, role: Role) -> Member:
    member = Member.invite(tenant.id, f"{role.value}-{uuid4().hex[:6]}@example.com", role)
    membership.join(tenant, member)
    member.collect_events()
    return member


def tenant_with_owner() -> tuple[Tenant, Member]:
    tenant = Tenant.create("Acme", "acme")
    owner = joined_member(tenant, Role.OWNER)
    tenant.collect_events()
    return tenant, owner


# ---- the catalogue --------------------------------------------------------------------


def test_every_role_has_an_entry_and_owner_holds_every_permission() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
    assert ROLE_PERMISSIONS[Role.OWNER] == frozenset(Permission)


def test_every_role_may_manage_its_own_account_and_readonly_may_only_read() -> None:
    for role in Role:
        assert Permission.ACCOUNT_SELF in ROLE_PERMISSIONS[role]
    assert all(
        p in {Permission.ACCOUNT_SELF, Permission.MEMBERS_READ, Permission.TENANT_READ}
        for p in ROLE_PERMISSIONS[Role.READONLY]
    )


def test_requesters_cannot_approve_and_approvers_cannot_request() -> None:
    assert Permission.REQUESTS_APPROVE not in ROLE_PERMISSIONS[Role.REQUESTER]
    assert Permission.REQUESTS_SUBMIT not in ROLE_PERMISSIONS[Role.APPROVER]


def test_only_an_owner_grants_or_takes_the_owner_role() -> None:
    check_may_assign(Role.OWNER, Role.ADMIN, Role.OWNER)
    with pytest.raises(ForbiddenError):
        check_may_assign(Role.ADMIN, Role.ADMIN, Role.OWNER)
    with pytest.raises(ForbiddenError):
        check_may_assign(Role.ADMIN, Role.OWNER, Role.READONLY)


def test_nobody_grants_a_role_with_more_rights_than_their_own() -> None:
    with pytest.raises(ForbiddenError):
        check_may_assign(Role.ADMIN, Role.READONLY, Role.APPROVER)
    check_may_assign(Role.ADMIN, Role.READONLY, Role.REQUESTER)


def test_scopes_must_be_known_non_empty_and_within_the_issuers_role() -> None:
    assert parse_scopes(["members:read"]) == {Permission.MEMBERS_READ}
    with pytest.raises(InvalidError):
        parse_scopes(["members:everything"])
    with pytest.raises(InvalidError):
        parse_scopes([])
    with pytest.raises(ForbiddenError):
        check_scopes_within(Role.READONLY, frozenset({Permission.MEMBERS_INVITE}))


# ---- members and the owner invariant ----------------------------------------------------


def test_joining_as_owner_makes_an_active_owner_of_the_tenant() -> None:
    tenant = Tenant.create("Acme", "acme")
    owner = Member.invite(tenant.id, "o@example.com", Role.OWNER)
    membership.join(tenant, owner)
    assert [type(e) for e in owner.collect_events()] == [Member.Invited, Member.Joined]
    (added,) = tenant.collect_events()[1:]
    assert isinstance(added, Tenant.OwnerAdded)
    assert tenant.owners == {owner.id}


def test_an_invitation_is_accepted_once() -> None:
    tenant, owner = tenant_with_owner()
    with pytest.raises(MemberStateError):
        membership.join(tenant, owner)


def test_the_last_owner_cannot_be_demoted_or_deactivated() -> None:
    tenant, owner = tenant_with_owner()
    with pytest.raises(LastOwnerError):
        membership.change_role(tenant, owner, Role.ADMIN, by=Role.OWNER)
    with pytest.raises(LastOwnerError):
        membership.deactivate(tenant, owner, by=Role.OWNER)
    assert isinstance(LastOwnerError("x"), ConflictError)


def test_an_owner_can_step_down_once_another_owner_joined() -> None:
    tenant, owner = tenant_with_owner()
    second = joined_member(tenant, Role.ADMIN)
    membership.change_role(tenant, second, Role.OWNER, by=Role.OWNER)
    membership.change_role(tenant, owner, Role.ADMIN, by=Role.OWNER)
    assert tenant.owners == {second.id}
    assert [type(e) for e in tenant.collect_events()] == [Tenant.OwnerAdded, Tenant.OwnerRemoved]


def test_an_invited_owner_who_has_not_joined_does_not_count_as_an_owner() -> None:
    tenant, owner = tenant_with_owner()
    Member.invite(tenant.id, "later@example.com", Role.OWNER)
    with pytest.raises(LastOwnerError):
        membership.deactivate(tenant, owner, by=Role.OWNER)


def test_reactivating_an_owner_makes_them_an_owner_again() -> None:
    tenant, owner = tenant_with_owner()
    second = joined_member(tenant, Role.OWNER)
    membership.deactivate(tenant, second, by=Role.OWNER)
    assert tenant.owners == {owner.id}
    membership.reactivate(tenant, second, by=Role.OWNER)
    assert tenant.owners == {owner.id, second.id}


def test_an_admin_cannot_deactivate_an_owner() -> None:
    tenant, _ = tenant_with_owner()
    second = joined_member(tenant, Role.OWNER)
    with pytest.raises(ForbiddenError):
        membership.deactivate(tenant, second, by=Role.ADMIN)


def test_mfa_is_enrolled_once_and_an_owners_mfa_stays_on() -> None:
    tenant, owner = tenant_with_owner()
    owner.enroll_mfa()
    with pytest.raises(MemberStateError):
        owner.enroll_mfa()
    with pytest.raises(MemberStateError):
        owner.disable_mfa()
    admin = joined_member(tenant, Role.ADMIN)
    admin.enroll_mfa()
    admin.disable_mfa()
    assert [type(e) for e in admin.collect_events()] == [Member.MfaEnrolled, Member.MfaDisabled]


def test_a_member_who_has_not_joined_has_no_password_or_mfa_to_change() -> None:
    member = Member.invite(uuid4(), "x@example.com", Role.READONLY)
    with pytest.raises(MemberStateError):
        member.change_password()
    with pytest.raises(MemberStateError):
        member.enroll_mfa()


# ---- tenant settings ------------------------------------------------------------------


def test_settings_change_only_when_something_changes_and_stay_in_range() -> None:
    tenant = Tenant.create("Acme", "acme")
    tenant.collect_events()
    tenant.change_settings(mfa_required=False, session_idle_minutes=30)
    assert tenant.collect_events() == []
    tenant.change_settings(mfa_required=True)
    (changed,) = tenant.collect_events()
    assert isinstance(changed, Tenant.SettingsChanged)
    assert changed.mfa_required and changed.session_idle_minutes == 30
    for bad in (
        {"session_idle_minutes": 4},
        {"session_absolute_hours": 0},
        {"session_idle_minutes": 1440, "session_absolute_hours": 2},
    ):
        with pytest.raises(InvalidTenantError):
            tenant.change_settings(**bad)  # type: ignore[arg-type]


# ---- API keys -------------------------------------------------------------------------


def issue(**overrides: object) -> ApiKey:
    arguments: dict[str, object] = {
        "member_id": uuid4(),
        "issuer_role": Role.ADMIN,
        "name": "ci",
        "prefix": "sr_live_abcd",
        "scopes": frozenset({Permission.MEMBERS_READ}),
        "expires_at": None,
        "now": NOW,
    }
    arguments.update(overrides)
    return ApiKey.issue(**arguments)  # type: ignore[arg-type]


def test_a_key_cannot_carry_scopes_beyond_its_issuers_role() -> None:
    with pytest.raises(ForbiddenError):
        issue(issuer_role=Role.READONLY, scopes=frozenset({Permission.APIKEYS_MANAGE}))


def test_a_key_expires_in_the_future_and_within_a_year() -> None:
    with pytest.raises(InvalidApiKeyError):
        issue(expires_at=NOW - timedelta(seconds=1))
    with pytest.raises(InvalidApiKeyError):
        issue(expires_at=NOW + timedelta(days=400))
    key = issue(expires_at=NOW + timedelta(days=1))
    assert key.usable_at(NOW) and not key.usable_at(NOW + timedelta(days=1))


def test_rotation_retires_the_old_key_after_the_overlap_and_happens_once() -> None:
    key = issue()
    successor = uuid4()
    key.rotate(successor, overlap=timedelta(hours=1), now=NOW)
    assert key.usable_at(NOW + timedelta(minutes=59))
    assert not key.usable_at(NOW + timedelta(hours=1))
    with pytest.raises(ApiKeyStateError):
        key.rotate(uuid4(), overlap=timedelta(hours=1), now=NOW)


def test_a_revoked_key_is_unusable_and_cannot_be_revoked_or_rotated_again() -> None:
    key = issue()
    key.revoke()
    assert not key.usable_at(NOW)
    with pytest.raises(ApiKeyStateError):
        key.revoke()
    with pytest.raises(ApiKeyStateError):
        key.rotate(uuid4(), overlap=timedelta(0), now=NOW)
