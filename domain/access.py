"""Access requests, their signed approvals, and the time-boxed grants they produce.

A member with ``requests:submit`` asks for an access level on a connector's
resource, for a while. The tenant's :class:`AccessPolicy` rates the risk and
so how many approvers it takes (one, or two distinct ones). An approval is
bound to the request's content hash and content version, so an edit voids
every approval given before; it also runs out after the policy's TTL.
Execution consumes the approvals once and issues a :class:`Grant`.

The policy's verdict (risk, approvals needed, approval TTL) is recorded in the
submitted or edited event, so a later change of the tenant's policy never
reinterprets a request already in flight, and replay needs no policy.

Each decision carries a signature over :func:`approval_manifest` made by the
tenant's approval key. Signing and verifying are infrastructure; the domain
only records the signature and key id next to the bytes' ingredients, so
anyone can rebuild the manifest from the event alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Protocol
from uuid import UUID, uuid4

import rfc8785
from eventsourcing.domain import event

from domain.errors import ConflictError, ForbiddenError, InvalidError
from domain.permissions import Permission, PermissionDeniedError
from domain.recorded import RecordedAggregate

MAX_RESOURCE = 500
MAX_JUSTIFICATION = 2000
MAX_KEY_ID = 128
MAX_SIGNATURE = 512
MAX_ITEMS = 1_000_000_000
MAX_RULES = 1000
MAX_DETAIL = 500
PROVISIONING_STEPS = frozenset({"grant", "revoke"})
MIN_APPROVAL_TTL = timedelta(minutes=5)
MAX_APPROVAL_TTL = timedelta(days=7)
MAX_GRANT_LIMIT = timedelta(days=366)
_ACCESS_LEVEL = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")


class InvalidAccessRequestError(InvalidError):
    pass


class InvalidPolicyError(InvalidError):
    pass


class InvalidGrantError(InvalidError):
    pass


class SeparationOfDutiesError(ForbiddenError):
    """A requester cannot decide on their own request."""


class NotRequesterError(ForbiddenError):
    """Only the requester edits or withdraws a request."""


class AccessRequestStateError(ConflictError):
    """The request is not in a state that allows this (decided, withdrawn, executed)."""


class AlreadyDecidedError(ConflictError):
    """This approver already decided on this content version."""


class NotApprovedError(ConflictError):
    """Not enough valid approvals now; the message says why."""


class GrantStateError(ConflictError):
    pass


class RiskLevel(StrEnum):
    """Ordered: low < medium < high < critical (not alphabetically)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)

    def __lt__(self, other: str) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: str) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: str) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: str) -> bool:
        if not isinstance(other, RiskLevel):
            return NotImplemented
        return self.rank >= other.rank


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class RequestStatus(StrEnum):
    PENDING = "pending"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXECUTED = "executed"


# ---- checks and canonical forms -------------------------------------------------------


def _risk(level: str, what: str, error: type[InvalidError]) -> RiskLevel:
    try:
        return RiskLevel(level)
    except (TypeError, ValueError):
        raise error(f"{what} must be one of {', '.join(RiskLevel)}") from None


def _aware(now: datetime, what: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidAccessRequestError(f"{what} needs a time zone")
    return now.astimezone(UTC)


def check_access_level(level: str, error: type[InvalidError] = InvalidAccessRequestError) -> str:
    level = level.strip().lower()
    if not _ACCESS_LEVEL.fullmatch(level):
        raise error("an access level is 1 to 64 characters: a letter, then letters, digits or _.:-")
    return level


def check_resource(resource: str, error: type[InvalidError] = InvalidAccessRequestError) -> str:
    resource = resource.strip()
    if not 1 <= len(resource) <= MAX_RESOURCE or not resource.isprintable():
        raise error(f"a resource is 1 to {MAX_RESOURCE} printable characters")
    return resource


def check_justification(justification: str) -> str:
    justification = justification.strip()
    if not 1 <= len(justification) <= MAX_JUSTIFICATION:
        raise InvalidAccessRequestError(f"a justification is 1 to {MAX_JUSTIFICATION} characters")
    if not all(c.isprintable() or c in "\n\t" for c in justification):
        raise InvalidAccessRequestError("a justification holds no control characters")
    return justification


def _whole_seconds(duration: timedelta, what: str, error: type[InvalidError]) -> int:
    if duration.microseconds:
        raise error(f"{what} is a whole number of seconds")
    return int(duration.total_seconds())


def utc_text(moment: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; microseconds only when not zero.

    The same text msgspec writes for an aware UTC datetime, so a decision's
    ``decided_at`` reads the same in the event data and in the manifest.
    """
    moment = _aware(moment, "a time")
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def content_hash(
    *,
    requester_id: UUID,
    connector_id: UUID,
    resource: str,
    access_level: str,
    justification: str,
    duration_seconds: int,
    items: int,
    content_version: int,
) -> str:
    """SHA-256 (hex) of the RFC 8785 JSON of a request's content and its version."""
    content: dict[str, str | int] = {
        "requester_id": str(requester_id),
        "connector_id": str(connector_id),
        "resource": resource,
        "access_level": access_level,
        "justification": justification,
        "duration_seconds": duration_seconds,
        "items": items,
        "content_version": content_version,
    }
    return hashlib.sha256(rfc8785.dumps(content)).hexdigest()


def approval_manifest(
    *,
    request_id: UUID,
    content_hash: str,
    content_version: int,
    approver_id: UUID,
    decision: Decision | str,
    decided_at: datetime,
) -> bytes:
    """The RFC 8785 bytes an approval key signs for one decision.

    Every input is in the approved or rejected event (plus the stream's id),
    so a verifier rebuilds the bytes from the event alone.
    """
    try:
        decision = Decision(decision)
    except ValueError:
        raise InvalidAccessRequestError("a decision is approve or reject") from None
    return rfc8785.dumps(
        {
            "request_id": str(request_id),
            "content_hash": content_hash,
            "content_version": content_version,
            "approver_id": str(approver_id),
            "decided_at": utc_text(decided_at),
            "decision": decision.value,
        }
    )


# ---- the tenant's policy ----------------------------------------------------------------


class _Assessed(Protocol):
    @property
    def risk(self) -> RiskLevel: ...

    @property
    def items(self) -> int: ...


@dataclass(frozen=True)
class AccessPolicy:
    """How a tenant rates requests and how many approvers each needs.

    ``sensitivity`` is a tuple of ``(glob, level)``: every rule whose glob
    (``fnmatch``, case-sensitive; ``*`` also crosses ``/``) matches the
    resource counts and the highest level wins, so rule order never matters.
    ``access_floors`` maps an access level to a minimum risk. Requests rated
    at or above ``two_approvers_at``, or affecting more than
    ``two_approvers_above_items`` items, need two distinct approvers; such an
    item count also raises the risk to at least ``two_approvers_at``.
    """

    sensitivity: tuple[tuple[str, RiskLevel], ...] = ()
    access_floors: tuple[tuple[str, RiskLevel], ...] = (("admin", RiskLevel.HIGH),)
    default_risk: RiskLevel = RiskLevel.LOW
    two_approvers_at: RiskLevel = RiskLevel.HIGH
    two_approvers_above_items: int | None = None
    approval_ttl: timedelta = timedelta(hours=24)
    max_grant_duration: timedelta = timedelta(days=7)
    _floors: dict[str, RiskLevel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = InvalidPolicyError
        if len(self.sensitivity) > MAX_RULES or len(self.access_floors) > MAX_RULES:
            raise bad(f"a policy has at most {MAX_RULES} rules of each kind")
        rules = []
        for rule in self.sensitivity:
            if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
                raise bad("a sensitivity rule is a (resource glob, risk level) pair")
            rules.append((check_resource(rule[0], bad), _risk(rule[1], "a rule's level", bad)))
        floors: dict[str, RiskLevel] = {}
        for floor in self.access_floors:
            if not (isinstance(floor, tuple) and len(floor) == 2 and isinstance(floor[0], str)):
                raise bad("an access floor is an (access level, risk level) pair")
            level = check_access_level(floor[0], bad)
            if level in floors:
                raise bad(f"access level {level!r} has two floors")
            floors[level] = _risk(floor[1], "a floor's level", bad)
        items = self.two_approvers_above_items
        if items is not None and (
            isinstance(items, bool) or not isinstance(items, int) or not 1 <= items <= MAX_ITEMS
        ):
            raise bad(f"the item threshold is empty or 1 to {MAX_ITEMS}")
        if not MIN_APPROVAL_TTL <= self.approval_ttl <= MAX_APPROVAL_TTL:
            raise bad("the approval TTL is 5 minutes to 7 days")
        _whole_seconds(self.approval_ttl, "the approval TTL", bad)
        if not timedelta(minutes=1) <= self.max_grant_duration <= MAX_GRANT_LIMIT:
            raise bad("the maximum grant duration is 1 minute to 366 days")
        _whole_seconds(self.max_grant_duration, "the maximum grant duration", bad)
        object.__setattr__(self, "sensitivity", tuple(rules))
        object.__setattr__(self, "access_floors", tuple(floors.items()))
        object.__setattr__(self, "_floors", floors)
        object.__setattr__(self, "default_risk", _risk(self.default_risk, "default_risk", bad))
        object.__setattr__(
            self, "two_approvers_at", _risk(self.two_approvers_at, "two_approvers_at", bad)
        )

    def _many_items(self, items: int) -> bool:
        return self.two_approvers_above_items is not None and items > self.two_approvers_above_items

    def risk_of(self, resource: str, access_level: str, items: int) -> RiskLevel:
        levels = [self.default_risk]
        levels += [level for glob, level in self.sensitivity if fnmatchcase(resource, glob)]
        levels.append(self._floors.get(access_level.strip().lower(), RiskLevel.LOW))
        if self._many_items(items):
            levels.append(self.two_approvers_at)
        return max(levels)

    def approvals_for(self, risk: RiskLevel, items: int) -> int:
        return 2 if risk >= self.two_approvers_at or self._many_items(items) else 1

    def approvals_needed(self, request: _Assessed) -> int:
        return self.approvals_for(request.risk, request.items)


# ---- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """One recorded approval, as the approved event carries it."""

    approval_id: UUID
    approver_id: UUID
    content_hash: str
    content_version: int
    decided_at: datetime
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class _Content:
    connector_id: UUID
    resource: str
    access_level: str
    justification: str
    duration_seconds: int
    items: int


def _check_content(
    connector_id: UUID,
    resource: str,
    access_level: str,
    justification: str,
    duration: timedelta,
    items: int,
    policy: AccessPolicy,
) -> _Content:
    if not isinstance(connector_id, UUID):
        raise InvalidAccessRequestError("connector_id is a UUID")
    if isinstance(items, bool) or not isinstance(items, int) or not 1 <= items <= MAX_ITEMS:
        raise InvalidAccessRequestError(f"items is a count from 1 to {MAX_ITEMS}")
    seconds = _whole_seconds(duration, "the duration", InvalidAccessRequestError)
    if seconds <= 0:
        raise InvalidAccessRequestError("the duration must be positive")
    if duration > policy.max_grant_duration:
        raise InvalidAccessRequestError(
            f"the duration is at most {int(policy.max_grant_duration.total_seconds())} seconds"
        )
    return _Content(
        connector_id=connector_id,
        resource=check_resource(resource),
        access_level=check_access_level(access_level),
        justification=check_justification(justification),
        duration_seconds=seconds,
        items=items,
    )


def _check_key_id(key_id: str) -> str:
    if not 1 <= len(key_id) <= MAX_KEY_ID or not key_id.isprintable() or key_id != key_id.strip():
        raise InvalidAccessRequestError(f"a key id is 1 to {MAX_KEY_ID} printable characters")
    return key_id


def _check_signature(signature: bytes) -> bytes:
    if not isinstance(signature, bytes) or not 1 <= len(signature) <= MAX_SIGNATURE:
        raise InvalidAccessRequestError(f"a signature is 1 to {MAX_SIGNATURE} bytes")
    return signature


class AccessRequest(RecordedAggregate):
    category: ClassVar[str] = "access_request"

    class Submitted(RecordedAggregate.Created):
        personal: ClassVar[tuple[str, ...]] = ("justification",)
        requester_id: UUID
        connector_id: UUID
        resource: str
        access_level: str
        justification: str | None
        duration_seconds: int
        items: int
        content_version: int
        content_hash: str
        risk: RiskLevel
        approvals_needed: int
        approval_ttl_seconds: int
        submitted_at: datetime

    class Edited(RecordedAggregate.Event):
        """New content: a new version and hash, so earlier approvals no longer count."""

        personal: ClassVar[tuple[str, ...]] = ("justification",)
        connector_id: UUID
        resource: str
        access_level: str
        justification: str | None
        duration_seconds: int
        items: int
        content_version: int
        content_hash: str
        risk: RiskLevel
        approvals_needed: int
        approval_ttl_seconds: int
        edited_at: datetime

    class Approved(RecordedAggregate.Event):
        approval_id: UUID
        approver_id: UUID
        content_hash: str
        content_version: int
        decided_at: datetime
        signature: bytes
        key_id: str

    class Rejected(RecordedAggregate.Event):
        approver_id: UUID
        content_hash: str
        content_version: int
        decided_at: datetime
        signature: bytes
        key_id: str

    class Executed(RecordedAggregate.Event):
        grant_id: UUID
        approval_ids: list[UUID]
        approvers: list[UUID]
        content_hash: str
        content_version: int
        executed_at: datetime

    class Withdrawn(RecordedAggregate.Event):
        withdrawn_at: datetime

    @classmethod
    def submit(
        cls,
        *,
        requester_id: UUID,
        requester_permissions: Collection[Permission],
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str,
        duration: timedelta,
        items: int,
        policy: AccessPolicy,
        now: datetime,
    ) -> AccessRequest:
        if Permission.REQUESTS_SUBMIT not in requester_permissions:
            raise PermissionDeniedError("submitting an access request needs requests:submit")
        content = _check_content(
            connector_id, resource, access_level, justification, duration, items, policy
        )
        return cls._create(
            cls.Submitted,
            requester_id=requester_id,
            submitted_at=_aware(now),
            **_assessed(requester_id, content, 1, policy),
        )

    def __init__(
        self,
        requester_id: UUID,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str | None,
        duration_seconds: int,
        items: int,
        content_version: int,
        content_hash: str,
        risk: RiskLevel,
        approvals_needed: int,
        approval_ttl_seconds: int,
        submitted_at: datetime,
    ) -> None:
        self.requester_id = requester_id
        self.submitted_at = submitted_at
        self.status = RequestStatus.PENDING
        self.approvals: list[Approval] = []
        self.rejected_by: UUID | None = None
        self.grant_id: UUID | None = None
        self.consumed: tuple[UUID, ...] = ()
        self._decided: set[tuple[UUID, int]] = set()
        self._set_content(
            connector_id,
            resource,
            access_level,
            justification,
            duration_seconds,
            items,
            content_version,
            content_hash,
            risk,
            approvals_needed,
            approval_ttl_seconds,
        )

    def _set_content(
        self,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str | None,
        duration_seconds: int,
        items: int,
        content_version: int,
        content_hash: str,
        risk: RiskLevel,
        approvals_needed: int,
        approval_ttl_seconds: int,
    ) -> None:
        self.connector_id = connector_id
        self.resource = resource
        self.access_level = access_level
        self.justification = justification
        self.duration = timedelta(seconds=duration_seconds)
        self.items = items
        self.content_version = content_version
        # Recorded, not recomputed: the justification may since have been erased.
        self._content_hash = content_hash
        self.risk = RiskLevel(risk)
        self.approvals_needed = approvals_needed
        self.approval_ttl = timedelta(seconds=approval_ttl_seconds)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the current content and version, as recorded when it was set."""
        return self._content_hash

    def approval_manifest(
        self, approver_id: UUID, decision: Decision | str, decided_at: datetime
    ) -> bytes:
        """The bytes to sign for a decision on the current content version."""
        return approval_manifest(
            request_id=self.id,
            content_hash=self.content_hash,
            content_version=self.content_version,
            approver_id=approver_id,
            decision=decision,
            decided_at=decided_at,
        )

    # ---- commands ----

    def edit(
        self,
        *,
        by: UUID,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str,
        duration: timedelta,
        items: int,
        policy: AccessPolicy,
        now: datetime,
    ) -> None:
        if by != self.requester_id:
            raise NotRequesterError("only the requester can edit a request")
        self._require_pending("edited")
        content = _check_content(
            connector_id, resource, access_level, justification, duration, items, policy
        )
        if content == self._content():
            raise InvalidAccessRequestError("the edit changes nothing")
        self._edited(
            edited_at=_aware(now),
            **_assessed(self.requester_id, content, self.content_version + 1, policy),
        )

    @event(Edited)
    def _edited(
        self,
        connector_id: UUID,
        resource: str,
        access_level: str,
        justification: str | None,
        duration_seconds: int,
        items: int,
        content_version: int,
        content_hash: str,
        risk: RiskLevel,
        approvals_needed: int,
        approval_ttl_seconds: int,
        edited_at: datetime,
    ) -> None:
        self._set_content(
            connector_id,
            resource,
            access_level,
            justification,
            duration_seconds,
            items,
            content_version,
            content_hash,
            risk,
            approvals_needed,
            approval_ttl_seconds,
        )

    def approve(
        self,
        *,
        approver_id: UUID,
        approver_permissions: Collection[Permission],
        signature: bytes,
        key_id: str,
        now: datetime,
        approval_id: UUID | None = None,
    ) -> None:
        """Record a signed approval of the current content version (not verified here)."""
        self._check_decider(approver_id, approver_permissions)
        self._approved(
            approval_id=approval_id or uuid4(),
            approver_id=approver_id,
            content_hash=self.content_hash,
            content_version=self.content_version,
            decided_at=_aware(now),
            signature=_check_signature(signature),
            key_id=_check_key_id(key_id),
        )

    @event(Approved)
    def _approved(
        self,
        approval_id: UUID,
        approver_id: UUID,
        content_hash: str,
        content_version: int,
        decided_at: datetime,
        signature: bytes,
        key_id: str,
    ) -> None:
        self._decided.add((approver_id, content_version))
        self.approvals.append(
            Approval(
                approval_id=approval_id,
                approver_id=approver_id,
                content_hash=content_hash,
                content_version=content_version,
                decided_at=decided_at,
                signature=signature,
                key_id=key_id,
            )
        )

    def reject(
        self,
        *,
        approver_id: UUID,
        approver_permissions: Collection[Permission],
        signature: bytes,
        key_id: str,
        now: datetime,
    ) -> None:
        """A signed rejection; one is enough to end the request."""
        self._check_decider(approver_id, approver_permissions)
        self._rejected(
            approver_id=approver_id,
            content_hash=self.content_hash,
            content_version=self.content_version,
            decided_at=_aware(now),
            signature=_check_signature(signature),
            key_id=_check_key_id(key_id),
        )

    @event(Rejected)
    def _rejected(
        self,
        approver_id: UUID,
        content_hash: str,
        content_version: int,
        decided_at: datetime,
        signature: bytes,
        key_id: str,
    ) -> None:
        self._decided.add((approver_id, content_version))
        self.rejected_by = approver_id
        self.status = RequestStatus.REJECTED

    def valid_approvals(self, now: datetime) -> tuple[Approval, ...]:
        """Approvals of the current content, not expired at ``now``, one per approver."""
        now = _aware(now)
        chosen: dict[UUID, Approval] = {}
        for a in self.approvals:
            if (
                a.content_version == self.content_version
                and a.content_hash == self.content_hash
                and a.approver_id != self.requester_id
                and now < a.decided_at + self.approval_ttl
            ):
                chosen.setdefault(a.approver_id, a)
        return tuple(chosen.values())

    def is_approved(self, now: datetime) -> bool:
        return (
            self.status is RequestStatus.PENDING
            and len(self.valid_approvals(now)) >= self.approvals_needed
        )

    def execute(self, grant_id: UUID, now: datetime) -> Grant:
        """Consume the valid approvals once and issue the grant (save both together)."""
        now = _aware(now)
        if self.status is RequestStatus.EXECUTED:
            raise AccessRequestStateError("the request was already executed")
        self._require_pending("executed")
        valid = self.valid_approvals(now)
        if len(valid) < self.approvals_needed:
            raise NotApprovedError(self._why_not_approved(valid, now))
        self._executed(
            grant_id=grant_id,
            approval_ids=[a.approval_id for a in valid],
            approvers=[a.approver_id for a in valid],
            content_hash=self.content_hash,
            content_version=self.content_version,
            executed_at=now,
        )
        return Grant.issue(
            grant_id=grant_id,
            request_id=self.id,
            member_id=self.requester_id,
            connector_id=self.connector_id,
            resource=self.resource,
            access_level=self.access_level,
            granted_at=now,
            expires_at=now + self.duration,
        )

    @event(Executed)
    def _executed(
        self,
        grant_id: UUID,
        approval_ids: list[UUID],
        approvers: list[UUID],
        content_hash: str,
        content_version: int,
        executed_at: datetime,
    ) -> None:
        self.status = RequestStatus.EXECUTED
        self.grant_id = grant_id
        self.consumed = tuple(approval_ids)

    def withdraw(self, *, by: UUID, now: datetime) -> None:
        if by != self.requester_id:
            raise NotRequesterError("only the requester can withdraw a request")
        self._require_pending("withdrawn")
        self._withdrawn(withdrawn_at=_aware(now))

    @event(Withdrawn)
    def _withdrawn(self, withdrawn_at: datetime) -> None:
        self.status = RequestStatus.WITHDRAWN

    # ---- helpers ----

    def _content(self) -> _Content:
        return _Content(
            connector_id=self.connector_id,
            resource=self.resource,
            access_level=self.access_level,
            justification=self.justification or "",
            duration_seconds=int(self.duration.total_seconds()),
            items=self.items,
        )

    def _require_pending(self, verb: str) -> None:
        if self.status is not RequestStatus.PENDING:
            raise AccessRequestStateError(f"a {self.status.value} request cannot be {verb}")

    def _check_decider(self, approver_id: UUID, permissions: Collection[Permission]) -> None:
        self._require_pending("decided on")
        if approver_id == self.requester_id:
            raise SeparationOfDutiesError("a requester cannot decide on their own request")
        if Permission.REQUESTS_APPROVE not in permissions:
            raise PermissionDeniedError("deciding on an access request needs requests:approve")
        if (approver_id, self.content_version) in self._decided:
            raise AlreadyDecidedError("this approver already decided on this version")

    def _why_not_approved(self, valid: tuple[Approval, ...], now: datetime) -> str:
        current = [a for a in self.approvals if a.content_version == self.content_version]
        if len(current) > len(valid):
            return "approvals have expired; the request needs fresh approvals"
        if len(self.approvals) > len(current):
            return "the request was edited since it was approved; earlier approvals are void"
        return f"the request needs {self.approvals_needed} approvals and has {len(valid)}"


def _assessed(
    requester_id: UUID, content: _Content, version: int, policy: AccessPolicy
) -> dict[str, Any]:
    """The event fields for a content version: the content, its hash and the policy's verdict."""
    risk = policy.risk_of(content.resource, content.access_level, content.items)
    return {
        "connector_id": content.connector_id,
        "resource": content.resource,
        "access_level": content.access_level,
        "justification": content.justification,
        "duration_seconds": content.duration_seconds,
        "items": content.items,
        "content_version": version,
        "content_hash": content_hash(
            requester_id=requester_id,
            connector_id=content.connector_id,
            resource=content.resource,
            access_level=content.access_level,
            justification=content.justification,
            duration_seconds=content.duration_seconds,
            items=content.items,
            content_version=version,
        ),
        "risk": risk,
        "approvals_needed": policy.approvals_for(risk, content.items),
        "approval_ttl_seconds": int(policy.approval_ttl.total_seconds()),
    }


# ---- the grant -----------------------------------------------------------------------------


class Grant(RecordedAggregate):
    """Time-boxed access issued by executing a request; it expires or is revoked once."""

    category: ClassVar[str] = "grant"

    class Issued(RecordedAggregate.Created):
        request_id: UUID
        member_id: UUID
        connector_id: UUID
        resource: str
        access_level: str
        granted_at: datetime
        expires_at: datetime

    class Expired(RecordedAggregate.Event):
        expired_at: datetime

    class Revoked(RecordedAggregate.Event):
        personal: ClassVar[tuple[str, ...]] = ("reason",)
        by: UUID
        reason: str | None
        revoked_at: datetime

    class Provisioned(RecordedAggregate.Event):
        """What the connector's provisioner did for this grant (``step``: grant or revoke)."""

        step: str
        ok: bool
        detail: str | None
        at: datetime

    @classmethod
    def issue(
        cls,
        *,
        grant_id: UUID,
        request_id: UUID,
        member_id: UUID,
        connector_id: UUID,
        resource: str,
        access_level: str,
        granted_at: datetime,
        expires_at: datetime,
    ) -> Grant:
        granted_at, expires_at = _aware(granted_at), _aware(expires_at, "expires_at")
        if expires_at <= granted_at:
            raise InvalidGrantError("a grant expires after it is granted")
        return cls._create(
            cls.Issued,
            id=grant_id,
            request_id=request_id,
            member_id=member_id,
            connector_id=connector_id,
            resource=check_resource(resource, InvalidGrantError),
            access_level=check_access_level(access_level, InvalidGrantError),
            granted_at=granted_at,
            expires_at=expires_at,
        )

    def __init__(
        self,
        request_id: UUID,
        member_id: UUID,
        connector_id: UUID,
        resource: str,
        access_level: str,
        granted_at: datetime,
        expires_at: datetime,
    ) -> None:
        self.request_id = request_id
        self.member_id = member_id
        self.connector_id = connector_id
        self.resource = resource
        self.access_level = access_level
        self.granted_at = granted_at
        self.expires_at = expires_at
        self.expired = False
        self.revoked = False
        self.ended_at: datetime | None = None
        self.revoked_by: UUID | None = None
        self.provisioning: dict[str, bool] = {}

    def active_at(self, now: datetime) -> bool:
        return (
            not self.expired
            and not self.revoked
            and self.granted_at <= _aware(now) < self.expires_at
        )

    def expire(self, now: datetime) -> None:
        now = _aware(now)
        self._require_open()
        if now < self.expires_at:
            raise GrantStateError("the grant has not reached its expiry yet")
        self._expired(expired_at=now)

    @event(Expired)
    def _expired(self, expired_at: datetime) -> None:
        self.expired = True
        self.ended_at = expired_at

    def revoke(self, *, by: UUID, reason: str | None, now: datetime) -> None:
        now = _aware(now)
        self._require_open()
        if now >= self.expires_at:
            raise GrantStateError("the grant has run out; record its expiry instead")
        if reason is not None:
            reason = reason.strip()
            if not 1 <= len(reason) <= MAX_JUSTIFICATION or not reason.isprintable():
                raise InvalidGrantError(
                    f"a reason is 1 to {MAX_JUSTIFICATION} printable characters"
                )
        self._revoked(by=by, reason=reason, revoked_at=now)

    @event(Revoked)
    def _revoked(self, by: UUID, reason: str | None, revoked_at: datetime) -> None:
        self.revoked = True
        self.revoked_by = by
        self.ended_at = revoked_at

    def record_provisioning(
        self, *, step: str, ok: bool, detail: str | None, now: datetime
    ) -> None:
        """Record the outcome of granting (after issue) or taking back (after the end) access
        in the target system; a failure is recorded, not raised, so the log says it."""
        if step not in PROVISIONING_STEPS:
            raise InvalidGrantError("a provisioning step is grant or revoke")
        if step == "revoke" and not (self.expired or self.revoked):
            raise GrantStateError("access is taken back only after the grant ended")
        if detail is not None:
            detail = "".join(c if c.isprintable() else " " for c in detail)[:MAX_DETAIL]
        self._provisioned(step=step, ok=bool(ok), detail=detail, at=_aware(now))

    @event(Provisioned)
    def _provisioned(self, step: str, ok: bool, detail: str | None, at: datetime) -> None:
        self.provisioning[step] = ok

    def _require_open(self) -> None:
        if self.expired:
            raise GrantStateError("the grant already expired")
        if self.revoked:
            raise GrantStateError("the grant was revoked")


# ---- the tenant's policy, as a record of its changes --------------------------------------


def _policy_fields(policy: AccessPolicy) -> dict[str, Any]:
    return {
        "sensitivity": [[glob, level.value] for glob, level in policy.sensitivity],
        "access_floors": [[level, risk.value] for level, risk in policy.access_floors],
        "default_risk": policy.default_risk.value,
        "two_approvers_at": policy.two_approvers_at.value,
        "two_approvers_above_items": policy.two_approvers_above_items,
        "approval_ttl_seconds": int(policy.approval_ttl.total_seconds()),
        "max_grant_seconds": int(policy.max_grant_duration.total_seconds()),
    }


def policy_from_fields(
    *,
    sensitivity: Collection[Collection[str]],
    access_floors: Collection[Collection[str]],
    default_risk: str,
    two_approvers_at: str,
    two_approvers_above_items: int | None,
    approval_ttl_seconds: int,
    max_grant_seconds: int,
) -> AccessPolicy:
    """An :class:`AccessPolicy` from plain values (a request body, an event), checked."""

    def pairs(rules: Collection[Collection[str]], what: str) -> tuple[tuple[str, RiskLevel], ...]:
        out = []
        for rule in rules:
            if not isinstance(rule, list | tuple) or len(rule) != 2:
                raise InvalidPolicyError(f"each of {what} is a [text, risk level] pair")
            first, level = rule
            out.append((first, _risk(level, f"a level in {what}", InvalidPolicyError)))
        return tuple(out)

    for name, value in (
        ("approval_ttl_seconds", approval_ttl_seconds),
        ("max_grant_seconds", max_grant_seconds),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidPolicyError(f"{name} is a positive whole number of seconds")
    return AccessPolicy(
        sensitivity=pairs(sensitivity, "sensitivity"),
        access_floors=pairs(access_floors, "access_floors"),
        default_risk=_risk(default_risk, "default_risk", InvalidPolicyError),
        two_approvers_at=_risk(two_approvers_at, "two_approvers_at", InvalidPolicyError),
        two_approvers_above_items=two_approvers_above_items,
        approval_ttl=timedelta(seconds=approval_ttl_seconds),
        max_grant_duration=timedelta(seconds=max_grant_seconds),
    )


class TenantAccessPolicy(RecordedAggregate):
    """The access policy a tenant adopted, one stream per tenant (id = the tenant id).

    A tenant that never set one uses ``AccessPolicy()``. A change applies to requests
    submitted or edited afterwards: those in flight keep the verdict they recorded.
    """

    category: ClassVar[str] = "access_policy"

    class Adopted(RecordedAggregate.Created):
        sensitivity: list[list[str]]
        access_floors: list[list[str]]
        default_risk: str
        two_approvers_at: str
        two_approvers_above_items: int | None
        approval_ttl_seconds: int
        max_grant_seconds: int
        by: UUID

    class Changed(RecordedAggregate.Event):
        sensitivity: list[list[str]]
        access_floors: list[list[str]]
        default_risk: str
        two_approvers_at: str
        two_approvers_above_items: int | None
        approval_ttl_seconds: int
        max_grant_seconds: int
        by: UUID

    @classmethod
    def adopt(cls, tenant_id: UUID, policy: AccessPolicy, *, by: UUID) -> TenantAccessPolicy:
        return cls._create(cls.Adopted, id=tenant_id, by=by, **_policy_fields(policy))

    def __init__(
        self,
        by: UUID,
        sensitivity: list[list[str]],
        access_floors: list[list[str]],
        default_risk: str,
        two_approvers_at: str,
        two_approvers_above_items: int | None,
        approval_ttl_seconds: int,
        max_grant_seconds: int,
    ) -> None:
        self.policy = policy_from_fields(
            sensitivity=sensitivity,
            access_floors=access_floors,
            default_risk=default_risk,
            two_approvers_at=two_approvers_at,
            two_approvers_above_items=two_approvers_above_items,
            approval_ttl_seconds=approval_ttl_seconds,
            max_grant_seconds=max_grant_seconds,
        )
        self.changed_by = by

    def change(self, policy: AccessPolicy, *, by: UUID) -> None:
        if policy == self.policy:
            raise InvalidPolicyError("the policy is unchanged")
        self._changed(by=by, **_policy_fields(policy))

    @event(Changed)
    def _changed(
        self,
        by: UUID,
        sensitivity: list[list[str]],
        access_floors: list[list[str]],
        default_risk: str,
        two_approvers_at: str,
        two_approvers_above_items: int | None,
        approval_ttl_seconds: int,
        max_grant_seconds: int,
    ) -> None:
        self.policy = policy_from_fields(
            sensitivity=sensitivity,
            access_floors=access_floors,
            default_risk=default_risk,
            two_approvers_at=two_approvers_at,
            two_approvers_above_items=two_approvers_above_items,
            approval_ttl_seconds=approval_ttl_seconds,
            max_grant_seconds=max_grant_seconds,
        )
        self.changed_by = by
