"""The aggregates, given events, when a command, then events or an error. No I/O."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from domain.errors import ConflictError, InvalidError
from domain.member import InvalidMemberError, Member, MemberStateError
from domain.recorded import RecordedAggregate, event_classes, event_type_name, personal_fields
from domain.roles import Role
from domain.tenant import InvalidTenantError, Tenant

A = TypeVar("A", bound=RecordedAggregate)
TENANT = UUID("00000000-0000-4000-8000-000000000001")


def given(*events: Any) -> Any:
    """An aggregate rebuilt from past events only: it has nothing pending."""
    aggregate = None
    for e in events:
        aggregate = e.mutate(aggregate)
    assert aggregate is not None
    assert aggregate.collect_events() == []
    return aggregate


def history(aggregate: A) -> list[Any]:
    return list(aggregate.collect_events())


def invited(role: Role = Role.REQUESTER, *then: str) -> list[Any]:
    member = Member.invite(TENANT, "ada@example.com", role)
    for step in then:
        getattr(member, step)()
    return history(member)


# ---- Member -------------------------------------------------------------------------


def test_inviting_a_member_records_invited_with_the_email_and_role() -> None:
    member = Member.invite(TENANT, "  ada@example.com ", Role.ADMIN)
    [e] = history(member)
    assert isinstance(e, Member.Invited)
    assert (e.tenant_id, e.email, e.role) == (TENANT, "ada@example.com", Role.ADMIN)
    assert e.originator_id == member.id and e.originator_version == 1
    assert (member.email, member.role, member.active, member.version) == (
        "ada@example.com",
        Role.ADMIN,
        True,
        1,
    )


def test_inviting_with_a_role_name_stores_the_role() -> None:
    member = Member.invite(TENANT, "ada@example.com", "auditor")  # type: ignore[arg-type]
    assert member.role is Role.AUDITOR


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada",
        "@example.com",
        "ada@example",
        "ada @example.com",
        "a@b\tc.com",
        "x" * 250 + "@e.co",
    ],
)
def test_inviting_with_something_that_is_not_an_email_is_refused(email: str) -> None:
    with pytest.raises(InvalidMemberError):
        Member.invite(TENANT, email, Role.ADMIN)


def test_inviting_with_an_unknown_role_is_an_invalid_member_error() -> None:
    with pytest.raises(InvalidError):
        Member.invite(TENANT, "ada@example.com", "boss")  # type: ignore[arg-type]


def test_changing_a_role_records_role_changed() -> None:
    member = given(*invited(Role.REQUESTER))
    member.change_role(Role.APPROVER)
    [e] = history(member)
    assert isinstance(e, Member.RoleChanged)
    assert e.role is Role.APPROVER and e.originator_version == 2
    assert member.role is Role.APPROVER


def test_changing_to_the_same_role_records_nothing() -> None:
    member = given(*invited(Role.REQUESTER))
    member.change_role(Role.REQUESTER)
    assert history(member) == []


def test_changing_to_an_unknown_role_is_an_invalid_member_error() -> None:
    member = given(*invited(Role.REQUESTER))
    with pytest.raises(InvalidError):
        member.change_role("boss")
    assert history(member) == []


def test_deactivating_records_deactivated() -> None:
    member = given(*invited())
    member.deactivate()
    [e] = history(member)
    assert isinstance(e, Member.Deactivated)
    assert member.active is False


def test_deactivating_twice_is_refused() -> None:
    member = given(*invited(Role.REQUESTER, "deactivate"))
    with pytest.raises(MemberStateError, match="already deactivated"):
        member.deactivate()
    assert history(member) == []


def test_a_deactivated_members_role_cannot_change() -> None:
    member = given(*invited(Role.REQUESTER, "deactivate"))
    with pytest.raises(MemberStateError):
        member.change_role(Role.OWNER)
    assert history(member) == []
    assert member.role is Role.REQUESTER


def test_reactivating_a_deactivated_member_records_reactivated() -> None:
    member = given(*invited(Role.REQUESTER, "deactivate"))
    member.reactivate()
    [e] = history(member)
    assert isinstance(e, Member.Reactivated)
    assert member.active is True
    member.change_role(Role.ADMIN)
    assert member.role is Role.ADMIN


def test_reactivating_an_active_member_is_refused() -> None:
    member = given(*invited())
    with pytest.raises(MemberStateError, match="active"):
        member.reactivate()


def test_member_state_errors_are_conflicts_and_bad_input_is_invalid() -> None:
    assert issubclass(MemberStateError, ConflictError)
    assert issubclass(InvalidMemberError, InvalidError)


def test_the_email_is_the_only_personal_field_of_a_member() -> None:
    assert personal_fields(Member.Invited) == ("email",)
    for cls in (Member.RoleChanged, Member.Deactivated, Member.Reactivated):
        assert personal_fields(cls) == ()


# ---- Tenant -------------------------------------------------------------------------


def test_creating_a_tenant_records_created_with_name_and_slug() -> None:
    tenant = Tenant.create("  Acme Corp ", "acme-corp")
    [e] = history(tenant)
    assert isinstance(e, Tenant.Created)
    assert (e.name, e.slug) == ("Acme Corp", "acme-corp")
    assert (tenant.name, tenant.slug, tenant.version) == ("Acme Corp", "acme-corp", 1)


@pytest.mark.parametrize("slug", ["a", "acme", "a1", "acme-corp-2", "9", "a" * 63])
def test_a_slug_of_lowercase_letters_digits_and_inner_dashes_is_accepted(slug: str) -> None:
    assert Tenant.create("Acme", slug).slug == slug


@pytest.mark.parametrize(
    "slug", ["", "Acme", "-acme", "acme-", "acme corp", "acme_corp", "a" * 64, "ácme", "acme\n"]
)
def test_a_bad_slug_is_refused(slug: str) -> None:
    with pytest.raises(InvalidTenantError):
        Tenant.create("Acme", slug)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_tenant_name_must_be_1_to_200_characters(name: str) -> None:
    with pytest.raises(InvalidTenantError):
        Tenant.create(name, "acme")


def test_renaming_records_renamed_with_the_trimmed_name() -> None:
    tenant = given(*history(Tenant.create("Acme", "acme")))
    tenant.rename(" Acme Ltd ")
    [e] = history(tenant)
    assert isinstance(e, Tenant.Renamed)
    assert e.name == "Acme Ltd" and e.originator_version == 2
    assert tenant.name == "Acme Ltd" and tenant.slug == "acme"


def test_renaming_to_the_same_name_records_nothing() -> None:
    tenant = given(*history(Tenant.create("Acme", "acme")))
    tenant.rename("  Acme  ")
    assert history(tenant) == []


def test_renaming_to_a_blank_name_is_refused() -> None:
    tenant = given(*history(Tenant.create("Acme", "acme")))
    with pytest.raises(InvalidTenantError):
        tenant.rename("  ")
    assert history(tenant) == []


# ---- naming -------------------------------------------------------------------------


def test_member_event_type_strings_are_category_dot_snake_case() -> None:
    assert event_classes(Member) == {
        "member.invited": Member.Invited,
        "member.joined": Member.Joined,
        "member.password_changed": Member.PasswordChanged,
        "member.mfa_enrolled": Member.MfaEnrolled,
        "member.mfa_disabled": Member.MfaDisabled,
        "member.recovery_codes_generated": Member.RecoveryCodesGenerated,
        "member.role_changed": Member.RoleChanged,
        "member.deactivated": Member.Deactivated,
        "member.reactivated": Member.Reactivated,
    }


def test_tenant_event_type_strings_are_category_dot_snake_case() -> None:
    assert event_classes(Tenant) == {
        "tenant.created": Tenant.Created,
        "tenant.renamed": Tenant.Renamed,
        "tenant.settings_changed": Tenant.SettingsChanged,
        "tenant.owner_added": Tenant.OwnerAdded,
        "tenant.owner_removed": Tenant.OwnerRemoved,
        "tenant.key_rotated": Tenant.KeyRotated,
    }


def test_streams_are_category_dash_id() -> None:
    member_id = uuid4()
    assert Member.stream_for(member_id) == f"member-{member_id}"
    assert event_type_name(Member, Member.RoleChanged) == "member.role_changed"
    member = Member.invite(TENANT, "ada@example.com", Role.ADMIN)
    assert member.stream == f"member-{member.id}"
