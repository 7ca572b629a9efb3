"""Access requests, approvals and grants in the domain, without I/O: given events, when a
command, then events or an error."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.access import (
    AccessPolicy,
    AccessRequest,
    AccessRequestStateError,
    AlreadyDecidedError,
    Decision,
    Grant,
    GrantStateError,
    InvalidAccessRequestError,
    InvalidGrantError,
    InvalidPolicyError,
    NotApprovedError,
    NotRequesterError,
    RequestStatus,
    RiskLevel,
    SeparationOfDutiesError,
    TenantAccessPolicy,
    approval_manifest,
    content_hash,
    policy_from_fields,
)
from domain.errors import ConflictError, ForbiddenError, InvalidError
from domain.permissions import ROLE_PERMISSIONS, Permission
from domain.recorded import event_classes, personal_fields
from domain.roles import Role
from infra import canonical
from infra.eventstore import ERASED, Actor, RecordedEvent
from infra.repository import EventRegistry

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REQUESTER = UUID(int=1)
ALICE = UUID(int=2)
BOB = UUID(int=3)
CAROL = UUID(int=4)
CONNECTOR = UUID(int=100)
SUBMIT = ROLE_PERMISSIONS[Role.REQUESTER]
APPROVE = ROLE_PERMISSIONS[Role.APPROVER]
SIG = bytes(range(64))
KEY_ID = "approval-key-1"

POLICY = AccessPolicy(
    sensitivity=(
        ("db/prod/*", RiskLevel.HIGH),
        ("db/prod/payroll*", RiskLevel.CRITICAL),
        ("db/staging/*", RiskLevel.MEDIUM),
    ),
    access_floors=(("admin", RiskLevel.HIGH), ("write", RiskLevel.MEDIUM)),
    two_approvers_at=RiskLevel.HIGH,
    two_approvers_above_items=100,
)

LOW: dict[str, Any] = {"resource": "wiki/team", "access_level": "read"}
HIGH: dict[str, Any] = {"resource": "db/prod/orders", "access_level": "read"}


def submitted(policy: AccessPolicy = POLICY, **overrides: Any) -> AccessRequest:
    """Given: a submitted request (its events already collected)."""
    fields: dict[str, Any] = {
        "requester_id": REQUESTER,
        "requester_permissions": SUBMIT,
        "connector_id": CONNECTOR,
        "resource": "wiki/team",
        "access_level": "read",
        "justification": "on-call for the release",
        "duration": timedelta(hours=4),
        "items": 1,
        "policy": policy,
        "now": NOW,
    } | overrides
    request = AccessRequest.submit(**fields)
    request.collect_events()
    return request


def approve(request: AccessRequest, approver: UUID, at: datetime = NOW) -> None:
    request.approve(
        approver_id=approver, approver_permissions=APPROVE, signature=SIG, key_id=KEY_ID, now=at
    )


def reject(request: AccessRequest, approver: UUID, at: datetime = NOW) -> None:
    request.reject(
        approver_id=approver, approver_permissions=APPROVE, signature=SIG, key_id=KEY_ID, now=at
    )


def edit(request: AccessRequest, at: datetime = NOW, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "by": REQUESTER,
        "connector_id": request.connector_id,
        "resource": request.resource,
        "access_level": request.access_level,
        "justification": request.justification,
        "duration": request.duration,
        "items": request.items,
        "policy": POLICY,
        "now": at,
    } | overrides
    request.edit(**fields)


def new_events(aggregate: Aggregate) -> list[type[Any]]:
    return [type(e) for e in aggregate.collect_events()]


# ---- the policy -----------------------------------------------------------------------------


def test_risk_levels_are_ordered_by_severity_not_alphabetically() -> None:
    assert RiskLevel.LOW < RiskLevel.MEDIUM < RiskLevel.HIGH < RiskLevel.CRITICAL
    assert max([RiskLevel.CRITICAL, RiskLevel.HIGH, RiskLevel.LOW]) is RiskLevel.CRITICAL
    assert sorted(RiskLevel, reverse=True)[0] is RiskLevel.CRITICAL


def test_the_highest_matching_sensitivity_rule_wins_whatever_the_order() -> None:
    assert POLICY.risk_of("wiki/team", "read", 1) is RiskLevel.LOW
    assert POLICY.risk_of("db/staging/orders", "read", 1) is RiskLevel.MEDIUM
    assert POLICY.risk_of("db/prod/orders", "read", 1) is RiskLevel.HIGH
    assert POLICY.risk_of("db/prod/payroll", "read", 1) is RiskLevel.CRITICAL
    reordered = replace(POLICY, sensitivity=tuple(reversed(POLICY.sensitivity)))
    assert reordered.risk_of("db/prod/payroll", "read", 1) is RiskLevel.CRITICAL


def test_an_access_level_floor_and_the_default_raise_the_risk() -> None:
    assert POLICY.risk_of("wiki/team", "admin", 1) is RiskLevel.HIGH
    assert POLICY.risk_of("wiki/team", "write", 1) is RiskLevel.MEDIUM
    assert POLICY.risk_of("wiki/team", " Admin ", 1) is RiskLevel.HIGH
    assert POLICY.risk_of("db/prod/payroll", "admin", 1) is RiskLevel.CRITICAL
    cautious = AccessPolicy(default_risk=RiskLevel.MEDIUM)
    assert cautious.risk_of("anything", "read", 1) is RiskLevel.MEDIUM
    assert AccessPolicy().risk_of("anything", "admin", 1) is RiskLevel.HIGH


def test_two_approvers_are_needed_at_and_above_the_threshold_and_one_below() -> None:
    assert POLICY.approvals_for(RiskLevel.MEDIUM, 1) == 1
    assert POLICY.approvals_for(RiskLevel.HIGH, 1) == 2
    assert POLICY.approvals_for(RiskLevel.CRITICAL, 1) == 2
    assert submitted(**LOW).approvals_needed == 1
    assert POLICY.approvals_needed(submitted(**HIGH)) == 2


def test_more_items_than_the_threshold_need_two_approvers_and_raise_the_risk() -> None:
    assert POLICY.approvals_for(RiskLevel.LOW, 100) == 1
    assert POLICY.approvals_for(RiskLevel.LOW, 101) == 2
    assert POLICY.risk_of("wiki/team", "read", 101) is RiskLevel.HIGH
    request = submitted(items=101)
    assert (request.risk, request.approvals_needed) == (RiskLevel.HIGH, 2)
    assert AccessPolicy().approvals_for(RiskLevel.LOW, 10**9) == 1


def test_the_approval_ttl_defaults_to_a_day_and_is_bounded() -> None:
    assert AccessPolicy().approval_ttl == timedelta(hours=24)
    assert AccessPolicy(approval_ttl=timedelta(hours=1)).approval_ttl == timedelta(hours=1)
    for ttl in (timedelta(minutes=4), timedelta(days=8), timedelta(hours=1, microseconds=5)):
        with pytest.raises(InvalidPolicyError, match="approval TTL"):
            AccessPolicy(approval_ttl=ttl)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sensitivity": (("", RiskLevel.HIGH),)}, "resource"),
        ({"sensitivity": (("db/*", "severe"),)}, "rule's level"),
        ({"sensitivity": ("db/*",)}, "pair"),
        ({"access_floors": (("admin", "high"), ("ADMIN", "low"))}, "two floors"),
        ({"access_floors": (("no spaces", "high"),)}, "access level"),
        ({"two_approvers_at": "urgent"}, "two_approvers_at"),
        ({"default_risk": "none"}, "default_risk"),
        ({"two_approvers_above_items": 0}, "item threshold"),
        ({"two_approvers_above_items": True}, "item threshold"),
        ({"max_grant_duration": timedelta(seconds=30)}, "maximum grant duration"),
        ({"max_grant_duration": timedelta(days=367)}, "maximum grant duration"),
    ],
)
def test_a_policy_is_validated_with_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPolicyError, match=message):
        AccessPolicy(**kwargs)
    assert issubclass(InvalidPolicyError, InvalidError)


def test_a_policy_read_from_configuration_text_gets_risk_levels() -> None:
    policy = AccessPolicy(
        sensitivity=(("db/*", "critical"),),  # type: ignore[arg-type]
        access_floors=(("Admin", "high"),),  # type: ignore[arg-type]
        two_approvers_at="medium",  # type: ignore[arg-type]
    )
    assert policy.sensitivity == (("db/*", RiskLevel.CRITICAL),)
    assert policy.access_floors == (("admin", RiskLevel.HIGH),)
    assert policy.two_approvers_at is RiskLevel.MEDIUM


# ---- submitting -----------------------------------------------------------------------------


def test_submitting_records_the_content_its_hash_and_the_policys_verdict() -> None:
    request = AccessRequest.submit(
        requester_id=REQUESTER,
        requester_permissions=SUBMIT,
        connector_id=CONNECTOR,
        resource=" db/prod/orders ",
        access_level="Read",
        justification="incident 42",
        duration=timedelta(hours=2),
        items=3,
        policy=POLICY,
        now=NOW,
    )
    (e,) = request.collect_events()
    assert isinstance(e, AccessRequest.Submitted)
    assert (e.resource, e.access_level, e.justification) == (
        "db/prod/orders",
        "read",
        "incident 42",
    )
    assert (e.duration_seconds, e.items, e.content_version) == (7200, 3, 1)
    assert (e.risk, e.approvals_needed, e.approval_ttl_seconds) == (RiskLevel.HIGH, 2, 86400)
    assert e.content_hash == request.content_hash
    assert request.stream == f"access_request-{request.id}"
    assert request.status is RequestStatus.PENDING


def test_event_types_follow_the_naming_rule_and_the_justification_is_personal() -> None:
    assert set(event_classes(AccessRequest)) == {
        "access_request.submitted",
        "access_request.edited",
        "access_request.approved",
        "access_request.rejected",
        "access_request.executed",
        "access_request.withdrawn",
    }
    assert set(event_classes(Grant)) == {
        "grant.issued",
        "grant.expired",
        "grant.revoked",
        "grant.provisioned",
    }
    assert personal_fields(AccessRequest.Submitted) == ("justification",)
    assert personal_fields(AccessRequest.Edited) == ("justification",)
    assert personal_fields(Grant.Revoked) == ("reason",)


def test_submitting_needs_the_submit_permission() -> None:
    with pytest.raises(ForbiddenError):
        submitted(requester_permissions=APPROVE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resource": ""}, "resource"),
        ({"resource": "x" * 501}, "resource"),
        ({"resource": "db/\x00"}, "resource"),
        ({"access_level": ""}, "access level"),
        ({"access_level": "read write"}, "access level"),
        ({"access_level": "r" * 65}, "access level"),
        ({"justification": "   "}, "justification"),
        ({"justification": "j" * 2001}, "justification"),
        ({"justification": "bell\x07"}, "control"),
        ({"duration": timedelta(0)}, "positive"),
        ({"duration": timedelta(seconds=-5)}, "positive"),
        ({"duration": timedelta(seconds=1, microseconds=1)}, "whole number"),
        ({"duration": timedelta(days=7, seconds=1)}, "at most 604800 seconds"),
        ({"items": 0}, "items"),
        ({"items": 10**9 + 1}, "items"),
        ({"now": datetime(2026, 11, 24, 12)}, "time zone"),
    ],
)
def test_bad_request_content_is_refused_with_a_clear_error(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidAccessRequestError, match=message):
        submitted(**overrides)


def test_the_longest_allowed_fields_are_accepted() -> None:
    request = submitted(
        resource="r" * 500,
        justification="line one\nline two\t" + "j" * 1980,
        duration=timedelta(days=7),
        items=10**9,
    )
    assert request.duration == POLICY.max_grant_duration


# ---- the content hash -----------------------------------------------------------------------

BASE_CONTENT: dict[str, Any] = {
    "requester_id": REQUESTER,
    "connector_id": CONNECTOR,
    "resource": "wiki/team",
    "access_level": "read",
    "justification": "on-call for the release",
    "duration_seconds": 14400,
    "items": 1,
    "content_version": 1,
}


def test_the_content_hash_is_sha256_of_the_canonical_json_of_content_and_version() -> None:
    # JCS for these ASCII strings and small integers is sorted keys and no whitespace.
    expected_json = json.dumps(
        {k: str(v) if isinstance(v, UUID) else v for k, v in BASE_CONTENT.items()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert content_hash(**BASE_CONTENT) == hashlib.sha256(expected_json).hexdigest()
    assert submitted().content_hash == content_hash(**BASE_CONTENT)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requester_id", ALICE),
        ("connector_id", UUID(int=101)),
        ("resource", "wiki/team2"),
        ("access_level", "write"),
        ("justification", "on-call for the release."),
        ("duration_seconds", 14401),
        ("items", 2),
        ("content_version", 2),
    ],
)
def test_the_content_hash_changes_with_every_content_field(field: str, value: Any) -> None:
    assert content_hash(**(BASE_CONTENT | {field: value})) != content_hash(**BASE_CONTENT)


# ---- editing --------------------------------------------------------------------------------


def test_an_edit_makes_a_new_version_and_hash_and_recomputes_the_risk() -> None:
    request = submitted(**LOW)
    old_hash = request.content_hash
    edit(request, resource="db/prod/orders")
    (e,) = request.collect_events()
    assert isinstance(e, AccessRequest.Edited)
    assert (e.content_version, request.content_version) == (2, 2)
    assert e.content_hash == request.content_hash != old_hash
    assert request.content_hash == content_hash(
        **(BASE_CONTENT | {"resource": "db/prod/orders", "content_version": 2})
    )
    assert (request.risk, request.approvals_needed) == (RiskLevel.HIGH, 2)


def test_an_edit_voids_every_earlier_approval() -> None:
    request = submitted(**LOW)
    approve(request, ALICE)
    assert request.is_approved(NOW)
    edit(request, justification="on-call, extended")
    assert request.valid_approvals(NOW) == ()
    assert not request.is_approved(NOW)
    with pytest.raises(NotApprovedError, match="edited since"):
        request.execute(uuid4(), NOW)
    approve(request, ALICE)  # the same approver may decide on the new version
    assert [a.content_version for a in request.valid_approvals(NOW)] == [2]
    assert request.is_approved(NOW)


def test_only_the_requester_edits_and_only_with_a_change() -> None:
    request = submitted()
    with pytest.raises(NotRequesterError):
        edit(request, by=ALICE, items=2)
    with pytest.raises(InvalidAccessRequestError, match="changes nothing"):
        edit(request)
    with pytest.raises(InvalidAccessRequestError, match="items"):
        edit(request, items=0)
    assert request.collect_events() == []


def test_a_decided_or_withdrawn_request_cannot_be_edited() -> None:
    rejected = submitted()
    reject(rejected, ALICE)
    withdrawn = submitted()
    withdrawn.withdraw(by=REQUESTER, now=NOW)
    executed = submitted()
    approve(executed, ALICE)
    executed.execute(uuid4(), NOW)
    for request in (rejected, withdrawn, executed):
        with pytest.raises(AccessRequestStateError):
            edit(request, items=2)


# ---- approving and rejecting ----------------------------------------------------------------


def test_an_approval_records_the_signature_key_hash_version_and_time() -> None:
    request = submitted()
    approve(request, ALICE, NOW + timedelta(minutes=5))
    (e,) = request.collect_events()
    assert isinstance(e, AccessRequest.Approved)
    assert (e.approver_id, e.signature, e.key_id) == (ALICE, SIG, KEY_ID)
    assert (e.content_hash, e.content_version) == (request.content_hash, 1)
    assert e.decided_at == NOW + timedelta(minutes=5)


def test_a_requester_cannot_approve_or_reject_their_own_request() -> None:
    request = submitted()
    owner_like = frozenset(Permission)
    with pytest.raises(SeparationOfDutiesError):
        request.approve(
            approver_id=REQUESTER,
            approver_permissions=owner_like,
            signature=SIG,
            key_id=KEY_ID,
            now=NOW,
        )
    with pytest.raises(SeparationOfDutiesError):
        request.reject(
            approver_id=REQUESTER,
            approver_permissions=owner_like,
            signature=SIG,
            key_id=KEY_ID,
            now=NOW,
        )
    assert issubclass(SeparationOfDutiesError, ForbiddenError)
    assert request.collect_events() == []


def test_deciding_needs_the_approve_permission() -> None:
    request = submitted()
    for decide in (request.approve, request.reject):
        with pytest.raises(ForbiddenError, match="requests:approve"):
            decide(
                approver_id=ALICE,
                approver_permissions=ROLE_PERMISSIONS[Role.ADMIN],
                signature=SIG,
                key_id=KEY_ID,
                now=NOW,
            )


def test_an_approver_decides_once_per_content_version() -> None:
    request = submitted(**HIGH)
    approve(request, ALICE)
    with pytest.raises(AlreadyDecidedError):
        approve(request, ALICE, NOW + timedelta(minutes=1))
    with pytest.raises(AlreadyDecidedError):
        reject(request, ALICE)
    assert issubclass(AlreadyDecidedError, ConflictError)
    assert len(request.valid_approvals(NOW)) == 1
    assert not request.is_approved(NOW)


@pytest.mark.parametrize(
    ("signature", "key_id"),
    [(b"", KEY_ID), (bytes(513), KEY_ID), (SIG, ""), (SIG, "k" * 129), (SIG, " key")],
)
def test_a_decision_needs_a_signature_and_a_key_id(signature: bytes, key_id: str) -> None:
    request = submitted()
    with pytest.raises(InvalidAccessRequestError):
        request.approve(
            approver_id=ALICE,
            approver_permissions=APPROVE,
            signature=signature,
            key_id=key_id,
            now=NOW,
        )


def test_one_approval_is_enough_below_the_threshold() -> None:
    request = submitted(**LOW)
    assert not request.is_approved(NOW)
    approve(request, ALICE)
    assert request.is_approved(NOW)


def test_two_distinct_approvers_are_needed_at_the_threshold() -> None:
    request = submitted(**HIGH)
    approve(request, ALICE)
    assert not request.is_approved(NOW)
    with pytest.raises(NotApprovedError, match="needs 2 approvals and has 1"):
        request.execute(uuid4(), NOW)
    approve(request, BOB)
    assert request.is_approved(NOW)
    assert {a.approver_id for a in request.valid_approvals(NOW)} == {ALICE, BOB}


def test_an_item_count_above_the_threshold_needs_two_approvers() -> None:
    request = submitted(items=101, **LOW)
    approve(request, ALICE)
    assert not request.is_approved(NOW)
    approve(request, BOB)
    assert request.is_approved(NOW)


def test_the_policy_verdict_is_kept_when_the_tenant_policy_changes_later() -> None:
    request = submitted(**LOW)
    stricter = replace(POLICY, two_approvers_at=RiskLevel.LOW)
    assert stricter.approvals_needed(request) == 2
    approve(request, ALICE)
    assert request.is_approved(NOW)  # decided under the policy it was submitted under


def test_an_approval_expires_exactly_when_the_ttl_has_passed() -> None:
    request = submitted(**LOW)
    approve(request, ALICE)
    last_moment = NOW + timedelta(hours=24) - timedelta(microseconds=1)
    assert request.is_approved(last_moment)
    assert not request.is_approved(NOW + timedelta(hours=24))
    with pytest.raises(NotApprovedError, match="expired"):
        request.execute(uuid4(), NOW + timedelta(hours=24))


def test_the_approval_ttl_comes_from_the_policy() -> None:
    request = submitted(AccessPolicy(approval_ttl=timedelta(hours=1)), **LOW)
    approve(request, ALICE)
    assert request.is_approved(NOW + timedelta(minutes=59))
    assert not request.is_approved(NOW + timedelta(hours=1))


def test_with_two_needed_the_older_approval_expiring_breaks_the_pair() -> None:
    request = submitted(**HIGH)
    approve(request, ALICE, NOW)
    approve(request, BOB, NOW + timedelta(hours=2))
    assert request.is_approved(NOW + timedelta(hours=23))
    assert not request.is_approved(NOW + timedelta(hours=24))
    assert [a.approver_id for a in request.valid_approvals(NOW + timedelta(hours=24))] == [BOB]


def test_a_rejection_by_any_approver_is_terminal() -> None:
    request = submitted(**HIGH)
    approve(request, ALICE)
    reject(request, BOB)
    (e,) = request.collect_events()[1:]
    assert isinstance(e, AccessRequest.Rejected)
    assert (e.approver_id, e.signature, e.key_id) == (BOB, SIG, KEY_ID)
    assert request.status is RequestStatus.REJECTED
    assert not request.is_approved(NOW)
    with pytest.raises(AccessRequestStateError):
        approve(request, CAROL)
    with pytest.raises(AccessRequestStateError):
        reject(request, CAROL)
    with pytest.raises(AccessRequestStateError):
        request.withdraw(by=REQUESTER, now=NOW)
    with pytest.raises(AccessRequestStateError, match="rejected"):
        request.execute(uuid4(), NOW)


# ---- execution ------------------------------------------------------------------------------


def test_execution_consumes_the_approvals_and_issues_a_grant_for_the_duration() -> None:
    request = submitted(**HIGH)
    approve(request, ALICE)
    approve(request, BOB)
    request.collect_events()
    grant_id = uuid4()
    at = NOW + timedelta(hours=1)
    grant = request.execute(grant_id, at)
    (e,) = request.collect_events()
    assert isinstance(e, AccessRequest.Executed)
    assert e.grant_id == grant_id == grant.id
    assert e.approvers == [ALICE, BOB]
    assert e.approval_ids == [a.approval_id for a in request.approvals]
    assert (e.content_hash, e.content_version, e.executed_at) == (request.content_hash, 1, at)
    assert request.status is RequestStatus.EXECUTED
    (issued,) = grant.collect_events()
    assert isinstance(issued, Grant.Issued)
    assert (issued.member_id, issued.request_id, issued.connector_id) == (
        REQUESTER,
        request.id,
        CONNECTOR,
    )
    assert (issued.resource, issued.access_level) == ("db/prod/orders", "read")
    assert (issued.granted_at, issued.expires_at) == (at, at + timedelta(hours=4))
    assert grant.stream == f"grant-{grant_id}"


def test_execution_happens_exactly_once() -> None:
    request = submitted()
    approve(request, ALICE)
    request.execute(uuid4(), NOW)
    request.collect_events()
    with pytest.raises(ConflictError, match="already executed"):
        request.execute(uuid4(), NOW)
    with pytest.raises(AccessRequestStateError):
        approve(request, BOB)
    assert request.collect_events() == []


def test_execution_is_refused_without_enough_approvals() -> None:
    request = submitted()
    with pytest.raises(NotApprovedError, match="needs 1 approvals and has 0"):
        request.execute(uuid4(), NOW)
    assert request.collect_events() == []


def test_a_withdrawn_request_cannot_be_executed_or_decided() -> None:
    request = submitted()
    approve(request, ALICE)
    request.withdraw(by=REQUESTER, now=NOW)
    assert isinstance(request.collect_events()[-1], AccessRequest.Withdrawn)
    with pytest.raises(AccessRequestStateError, match="withdrawn"):
        request.execute(uuid4(), NOW)
    with pytest.raises(AccessRequestStateError):
        approve(request, BOB)
    with pytest.raises(AccessRequestStateError):
        request.withdraw(by=REQUESTER, now=NOW)


def test_only_the_requester_withdraws_and_only_before_execution() -> None:
    request = submitted()
    with pytest.raises(NotRequesterError):
        request.withdraw(by=ALICE, now=NOW)
    approve(request, ALICE)
    request.execute(uuid4(), NOW)
    with pytest.raises(AccessRequestStateError):
        request.withdraw(by=REQUESTER, now=NOW)


# ---- the manifest ---------------------------------------------------------------------------


MANIFEST_INPUT: dict[str, Any] = {
    "request_id": UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
    "content_hash": "ab" * 32,
    "content_version": 3,
    "approver_id": UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    "decision": "approve",
    "decided_at": datetime(2026, 11, 24, 12, 30, 5, tzinfo=UTC),
}


def test_the_manifest_bytes_are_canonical_and_stable() -> None:
    assert approval_manifest(**MANIFEST_INPUT) == (
        b'{"approver_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7",'
        b'"content_hash":"' + b"ab" * 32 + b'",'
        b'"content_version":3,'
        b'"decided_at":"2026-11-24T12:30:05Z",'
        b'"decision":"approve",'
        b'"request_id":"0f8fad5b-d9cb-469f-a165-70867728950e"}'
    )


def test_the_manifest_writes_times_in_utc_and_names_the_decision() -> None:
    paris = timezone(timedelta(hours=1))
    same_moment = MANIFEST_INPUT | {"decided_at": datetime(2026, 11, 24, 13, 30, 5, tzinfo=paris)}
    assert approval_manifest(**same_moment) == approval_manifest(**MANIFEST_INPUT)
    precise = MANIFEST_INPUT | {"decided_at": MANIFEST_INPUT["decided_at"].replace(microsecond=7)}
    assert b'"decided_at":"2026-11-24T12:30:05.000007Z"' in approval_manifest(**precise)
    rejecting = approval_manifest(**(MANIFEST_INPUT | {"decision": Decision.REJECT}))
    assert b'"decision":"reject"' in rejecting
    with pytest.raises(InvalidAccessRequestError):
        approval_manifest(**(MANIFEST_INPUT | {"decision": "maybe"}))
    with pytest.raises(InvalidAccessRequestError):
        approval_manifest(**(MANIFEST_INPUT | {"decided_at": datetime(2026, 11, 24)}))


def test_the_request_builds_the_manifest_for_its_current_version() -> None:
    request = submitted()
    edit(request, items=5)
    assert request.approval_manifest(ALICE, "approve", NOW) == approval_manifest(
        request_id=request.id,
        content_hash=request.content_hash,
        content_version=2,
        approver_id=ALICE,
        decision=Decision.APPROVE,
        decided_at=NOW,
    )


# ---- through the repository's event format --------------------------------------------------


def stored(registry: EventRegistry, events: Sequence[Any], *, erase: bool = False) -> list[Any]:
    """What the repository writes and reads back (leaf data canonical, personal apart)."""
    back = []
    for e in events:
        new = registry.to_new_event(e)
        data = json.loads(canonical.encode(dict(new.data)))
        personal: dict[str, Any] = {k: ERASED if erase else v for k, v in new.personal.items()}
        recorded = RecordedEvent(
            seq=e.originator_version,
            stream=new.stream,
            version=e.originator_version,
            event_id=uuid4(),
            type=new.type,
            ts=NOW,
            actor=Actor(kind="user", id=str(REQUESTER)),
            causation=None,
            correlation=uuid4(),
            data=data,
            personal=personal,
            leaf=b"",
            leaf_hash=b"",
            chain_hash=b"",
        )
        back.append(registry.to_domain_event(recorded))
    return back


@pytest.mark.parametrize("erase", [False, True])
def test_events_survive_the_event_format_and_erasure_keeps_the_hash(erase: bool) -> None:
    registry = EventRegistry([AccessRequest, Grant])
    request = AccessRequest.submit(
        requester_id=REQUESTER,
        requester_permissions=SUBMIT,
        connector_id=CONNECTOR,
        resource="db/prod/orders",
        access_level="read",
        justification="secret plans",
        duration=timedelta(hours=1),
        items=1,
        policy=POLICY,
        now=NOW,
    )
    edit(request, items=2)
    decided_at = NOW.replace(microsecond=250)
    approve(request, ALICE, decided_at)
    approve(request, BOB, decided_at)
    grant = request.execute(uuid4(), NOW + timedelta(minutes=1))
    grant.revoke(by=ALICE, reason="left the team", now=NOW + timedelta(minutes=2))
    events = request.collect_events()

    first = registry.to_new_event(events[0])
    assert "justification" not in first.data and first.personal == {"justification": "secret plans"}
    approved = registry.to_new_event(events[2]).data
    assert approved["decided_at"] == "2026-11-24T12:00:00.000250Z"
    manifest = request.approval_manifest(ALICE, "approve", decided_at)
    assert b'"decided_at":"' + approved["decided_at"].encode() + b'"' in manifest

    replayed: Any = None
    for e in stored(registry, events, erase=erase):
        replayed = e.mutate(replayed)
    assert replayed.content_hash == request.content_hash
    assert replayed.approvals == request.approvals
    assert replayed.approvals[0].signature == SIG
    assert replayed.status is RequestStatus.EXECUTED
    assert replayed.justification == (None if erase else request.justification)

    grant_again: Any = None
    for e in stored(registry, grant.collect_events(), erase=erase):
        grant_again = e.mutate(grant_again)
    assert grant_again.revoked and grant_again.expires_at == NOW + timedelta(minutes=61)


# ---- grants ---------------------------------------------------------------------------------


def issued_grant() -> Grant:
    grant = Grant.issue(
        grant_id=uuid4(),
        request_id=uuid4(),
        member_id=REQUESTER,
        connector_id=CONNECTOR,
        resource="db/prod/orders",
        access_level="read",
        granted_at=NOW,
        expires_at=NOW + timedelta(hours=4),
    )
    grant.collect_events()
    return grant


def test_a_grant_is_active_from_issue_until_its_expiry() -> None:
    grant = issued_grant()
    assert not grant.active_at(NOW - timedelta(seconds=1))
    assert grant.active_at(NOW)
    assert grant.active_at(NOW + timedelta(hours=4) - timedelta(microseconds=1))
    assert not grant.active_at(NOW + timedelta(hours=4))


def test_a_grant_expires_not_before_its_expiry_and_only_once() -> None:
    grant = issued_grant()
    with pytest.raises(GrantStateError, match="not reached"):
        grant.expire(NOW + timedelta(hours=4) - timedelta(microseconds=1))
    grant.expire(NOW + timedelta(hours=4))
    (e,) = grant.collect_events()
    assert isinstance(e, Grant.Expired) and e.expired_at == NOW + timedelta(hours=4)
    with pytest.raises(ConflictError, match="already expired"):
        grant.expire(NOW + timedelta(hours=5))
    with pytest.raises(ConflictError):
        grant.revoke(by=ALICE, reason=None, now=NOW + timedelta(hours=5))


def test_a_grant_is_revoked_once_at_any_time_before_its_expiry() -> None:
    grant = issued_grant()
    grant.revoke(by=ALICE, reason="no longer needed", now=NOW + timedelta(minutes=1))
    (e,) = grant.collect_events()
    assert isinstance(e, Grant.Revoked)
    assert (e.by, e.reason, e.revoked_at) == (ALICE, "no longer needed", NOW + timedelta(minutes=1))
    assert not grant.active_at(NOW + timedelta(minutes=2))
    with pytest.raises(GrantStateError, match="revoked"):
        grant.revoke(by=ALICE, reason=None, now=NOW + timedelta(minutes=3))
    with pytest.raises(GrantStateError, match="revoked"):
        grant.expire(NOW + timedelta(hours=5))


def test_a_grant_that_has_run_out_is_expired_not_revoked() -> None:
    grant = issued_grant()
    with pytest.raises(GrantStateError, match="run out"):
        grant.revoke(by=ALICE, reason=None, now=NOW + timedelta(hours=4))


def test_a_grant_needs_a_sane_window_and_reason() -> None:
    with pytest.raises(InvalidGrantError):
        Grant.issue(
            grant_id=uuid4(),
            request_id=uuid4(),
            member_id=REQUESTER,
            connector_id=CONNECTOR,
            resource="db",
            access_level="read",
            granted_at=NOW,
            expires_at=NOW,
        )
    with pytest.raises(InvalidGrantError):
        issued_grant().revoke(by=ALICE, reason="x" * 2001, now=NOW)


# ---- no sequence of commands executes without enough valid approvals ------------------------

MEMBERS = {
    REQUESTER: SUBMIT | APPROVE,
    ALICE: APPROVE,
    BOB: APPROVE,
    CAROL: APPROVE,
    UUID(int=5): SUBMIT,
}

HOUR = 3600
commands = st.lists(
    st.one_of(
        st.tuples(st.just("approve"), st.sampled_from(sorted(MEMBERS))),
        st.tuples(st.just("approve"), st.sampled_from([ALICE, BOB, CAROL])),
        st.tuples(st.just("reject"), st.sampled_from(sorted(MEMBERS))),
        st.tuples(st.just("edit"), st.sampled_from([1, 2, 100, 101])),
        # Waits that land on and around the 24 h TTL boundary.
        st.tuples(
            st.just("wait"), st.sampled_from([0, 1, HOUR, 12 * HOUR, 24 * HOUR - 1, 24 * HOUR])
        ),
        st.tuples(st.just("execute"), st.none()),
        st.tuples(st.just("withdraw"), st.none()),
    ),
    max_size=25,
)


def valid_from_events(events: list[Any], now: datetime) -> set[UUID]:
    """An independent count from the events alone: approvers of the latest content
    version and hash, other than the requester, whose approval is younger than the TTL."""
    requester, version, digest, ttl = None, 0, "", timedelta(0)
    approvals: list[Any] = []
    for e in events:
        if isinstance(e, AccessRequest.Submitted | AccessRequest.Edited):
            version, digest = e.content_version, e.content_hash
            ttl = timedelta(seconds=e.approval_ttl_seconds)
            if isinstance(e, AccessRequest.Submitted):
                requester = e.requester_id
        elif isinstance(e, AccessRequest.Approved):
            approvals.append(e)
    return {
        a.approver_id
        for a in approvals
        if a.content_version == version
        and a.content_hash == digest
        and a.approver_id != requester
        and now - a.decided_at < ttl
    }


def needed_from_events(events: list[Any]) -> int:
    last = [e for e in events if isinstance(e, AccessRequest.Submitted | AccessRequest.Edited)]
    risk = POLICY.risk_of(last[-1].resource, last[-1].access_level, last[-1].items)
    return POLICY.approvals_for(risk, last[-1].items)


@settings(max_examples=400, deadline=None)
@given(commands, st.sampled_from([LOW, HIGH]))
def test_no_sequence_of_commands_executes_with_fewer_valid_approvals_than_needed(
    script: list[tuple[str, Any]], content: dict[str, str]
) -> None:
    first = AccessRequest.submit(
        requester_id=REQUESTER,
        requester_permissions=SUBMIT,
        connector_id=CONNECTOR,
        justification="on-call",
        duration=timedelta(hours=1),
        items=1,
        policy=POLICY,
        now=NOW,
        **content,
    )
    request, events = first, list[Any](first.collect_events())
    now = NOW
    executions = 0
    for command, arg in script:
        try:
            if command in ("approve", "reject"):
                getattr(request, command)(
                    approver_id=arg,
                    approver_permissions=MEMBERS[arg],
                    signature=SIG,
                    key_id=KEY_ID,
                    now=now,
                )
            elif command == "edit":
                edit(request, at=now, items=arg)
            elif command == "wait":
                now += timedelta(seconds=arg)
            elif command == "withdraw":
                request.withdraw(by=REQUESTER, now=now)
            else:
                request.execute(uuid4(), now)
                executions += 1
                (executed,) = request.collect_events()
                assert isinstance(executed, AccessRequest.Executed)
                valid = valid_from_events(events, now)
                assert len(valid) >= needed_from_events(events)
                assert set(executed.approvers) == valid
                assert not any(
                    isinstance(e, AccessRequest.Rejected | AccessRequest.Withdrawn) for e in events
                )
                events.append(executed)
        except (ConflictError, ForbiddenError, InvalidError):
            pass
        events += request.collect_events()
    assert executions <= 1
    assert executions == sum(isinstance(e, AccessRequest.Executed) for e in events)


# ---- provisioning records, the tenant's policy as an aggregate ----------------------------


def test_a_grant_records_what_its_provisioner_did_and_takes_back_only_after_it_ended() -> None:
    grant = issued_grant()
    grant.record_provisioning(step="grant", ok=True, detail="role added", now=NOW)
    assert grant.provisioning == {"grant": True}
    with pytest.raises(GrantStateError, match="only after the grant ended"):
        grant.record_provisioning(step="revoke", ok=True, detail=None, now=NOW)
    grant.revoke(by=ALICE, reason=None, now=NOW + timedelta(minutes=1))
    assert (grant.revoked_by, grant.ended_at) == (ALICE, NOW + timedelta(minutes=1))
    grant.record_provisioning(step="revoke", ok=False, detail="bad\x00\nnews" * 100, now=NOW)
    [*_, recorded] = grant.collect_events()
    assert isinstance(recorded, Grant.Provisioned)
    assert recorded.detail is not None and len(recorded.detail) == 500
    assert recorded.detail.isprintable(), "control characters become spaces"
    with pytest.raises(InvalidGrantError, match="grant or revoke"):
        grant.record_provisioning(step="delete", ok=True, detail=None, now=NOW)


def test_an_expired_grant_says_when_it_ended() -> None:
    grant = issued_grant()
    grant.expire(NOW + timedelta(hours=5))
    assert grant.ended_at == NOW + timedelta(hours=5) and grant.revoked_by is None


def test_a_tenant_policy_is_adopted_changed_and_read_back_from_its_events() -> None:
    tenant = uuid4()
    registry = EventRegistry([TenantAccessPolicy])
    adopted = TenantAccessPolicy.adopt(tenant, POLICY, by=ALICE)
    assert adopted.id == tenant and adopted.policy == POLICY
    with pytest.raises(InvalidPolicyError, match="unchanged"):
        adopted.change(POLICY, by=BOB)
    looser = replace(POLICY, two_approvers_at=RiskLevel.CRITICAL)
    adopted.change(looser, by=BOB)
    replayed: Any = None
    for e in stored(registry, adopted.collect_events()):
        replayed = e.mutate(replayed)
    assert replayed.policy == looser and replayed.changed_by == BOB and replayed.version == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sensitivity": [["db/*"]]}, "pair"),
        ({"sensitivity": [["db/*", "severe"]]}, "a level in sensitivity"),
        ({"default_risk": "none"}, "default_risk"),
        ({"approval_ttl_seconds": 0}, "approval_ttl_seconds"),
        ({"approval_ttl_seconds": 60}, "5 minutes to 7 days"),
        ({"max_grant_seconds": True}, "max_grant_seconds"),
        ({"two_approvers_above_items": 0}, "item threshold"),
        ({"access_floors": [["admin", "high"], ["ADMIN", "low"]]}, "two floors"),
    ],
)
def test_a_policy_from_plain_values_is_checked(fields: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "sensitivity": [],
        "access_floors": [],
        "default_risk": "low",
        "two_approvers_at": "high",
        "two_approvers_above_items": None,
        "approval_ttl_seconds": 3600,
        "max_grant_seconds": 3600,
    }
    with pytest.raises(InvalidPolicyError, match=message):
        policy_from_fields(**{**base, **fields})
