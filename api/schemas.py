"""Request and response bodies. Requests reject unknown fields and bound every size."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

Email = Annotated[str, Meta(min_length=3, max_length=254)]
Password = Annotated[str, Meta(min_length=1, max_length=1024)]
Slug = Annotated[str, Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Token = Annotated[str, Meta(min_length=1, max_length=200)]
Code = Annotated[str, Meta(min_length=1, max_length=64)]
RoleName = Literal["owner", "admin", "approver", "requester", "auditor", "readonly"]


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Body(msgspec.Struct, kw_only=True):
    pass


# ---- tenants ----------------------------------------------------------------------------


class TenantCreate(Request):
    name: Name
    slug: Slug
    owner_email: Email


class TenantCreated(Body):
    tenant_id: UUID
    slug: str
    owner_member_id: UUID
    invite_token: str
    """One-time: shown here only. The owner accepts it at POST /v1/invites/accept."""


class TenantSettings(Body):
    mfa_required: bool
    session_idle_minutes: int
    session_absolute_hours: int


class TenantView(Body):
    tenant_id: UUID
    name: str
    slug: str
    settings: TenantSettings


class SettingsChange(Request):
    mfa_required: bool | None = None
    session_idle_minutes: Annotated[int, Meta(ge=5, le=1440)] | None = None
    session_absolute_hours: Annotated[int, Meta(ge=1, le=720)] | None = None


# ---- members ----------------------------------------------------------------------------


class MemberInvite(Request):
    email: Email
    role: RoleName


class MemberInvited(Body):
    member_id: UUID
    invite_token: str
    """One-time: shown here only."""


class RoleChange(Request):
    role: RoleName


class MemberView(Body):
    member_id: UUID
    email: str | None
    role: str
    active: bool
    invited_at: datetime
    updated_at: datetime
    version: int


class MemberPage(Body):
    items: list[MemberView]
    next_after: UUID | None


class InviteAccept(Request):
    token: Token
    password: Password


class Joined(Body):
    tenant_id: UUID
    member_id: UUID


# ---- authentication ---------------------------------------------------------------------


class Login(Request):
    tenant: Slug
    email: Email
    password: Password
    cookie: bool = False
    """Also set the session as an ``__Host-strongroom_session`` cookie."""


class MfaCompletion(Request):
    challenge: Token
    code: Code | None = None
    recovery_code: Code | None = None
    cookie: bool = False


class StepUp(Request):
    password: Password
    code: Code | None = None
    cookie: bool = False


class SessionIssued(Body):
    status: Literal["authenticated", "mfa_required"]
    token: str | None = None
    """The session token (or, with mfa_required, the challenge for POST /v1/auth/mfa)."""
    session_id: UUID | None = None
    expires_at: datetime | None = None
    idle_timeout_seconds: int | None = None


class SessionView(Body):
    session_id: UUID
    created_at: datetime
    last_seen_at: datetime
    authenticated_at: datetime
    expires_at: datetime
    idle_timeout_seconds: int
    user_agent: str | None
    current: bool


class Revoked(Body):
    revoked: int


class PasswordChange(Request):
    password: Password


class MfaEnrollment(Body):
    secret: str
    otpauth_uri: str


class MfaConfirm(Request):
    code: Code


class RecoveryCodes(Body):
    recovery_codes: list[str]
    """Shown once. Each works once; generating a new set voids this one."""


# ---- API keys ---------------------------------------------------------------------------


class ApiKeyCreate(Request):
    name: Name
    scopes: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(min_length=1, max_length=32)]
    expires_at: datetime | None = None


class ApiKeyRotate(Request):
    overlap_seconds: Annotated[int, Meta(ge=0, le=30 * 24 * 3600)] = 3600


class ApiKeyIssued(Body):
    key_id: UUID
    key: str
    """Shown once. Store it in a secret manager."""
    prefix: str
    scopes: list[str]
    expires_at: datetime | None


class ApiKeyView(Body):
    key_id: UUID
    member_id: UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


# ---- access requests, approvals, grants ---------------------------------------------------

RiskName = Literal["low", "medium", "high", "critical"]
Resource = Annotated[str, Meta(min_length=1, max_length=500)]
AccessLevel = Annotated[str, Meta(min_length=1, max_length=64)]
Justification = Annotated[str, Meta(min_length=1, max_length=2000)]
Rule = Annotated[list[Resource], Meta(min_length=2, max_length=2)]
"""A policy rule: two strings (OpenAPI 3.1 has no tuple items a fuzzer understands)."""


class AccessPolicyBody(Request):
    """Resource globs and access levels rated by risk; when two approvers are needed."""

    sensitivity: Annotated[list[Rule], Meta(max_length=1000)] = []
    """``[resource glob, risk level]`` pairs."""
    access_floors: Annotated[list[Rule], Meta(max_length=1000)] = msgspec.field(
        default_factory=lambda: [["admin", "high"]]
    )
    """``[access level, minimum risk level]`` pairs."""
    default_risk: RiskName = "low"
    two_approvers_at: RiskName = "high"
    two_approvers_above_items: Annotated[int, Meta(ge=1, le=1_000_000_000)] | None = None
    approval_ttl_seconds: Annotated[int, Meta(ge=300, le=7 * 24 * 3600)] = 24 * 3600
    max_grant_seconds: Annotated[int, Meta(ge=60, le=366 * 24 * 3600)] = 7 * 24 * 3600


class AccessPolicyView(Body):
    sensitivity: list[list[str]]
    access_floors: list[list[str]]
    default_risk: str
    two_approvers_at: str
    two_approvers_above_items: int | None
    approval_ttl_seconds: int
    max_grant_seconds: int
    version: int
    """0: the tenant never set a policy; these are the defaults."""


class ApprovalKeyView(Body):
    key_id: str
    algorithm: str
    public_key: str
    """The raw 32-byte Ed25519 public key, base64."""
    public_key_pem: str
    """The same key as SubjectPublicKeyInfo PEM, for `openssl pkeyutl -verify -rawin`."""
    created_at: datetime
    retired_at: datetime | None


class ApprovalKeyRotatedView(Body):
    key: ApprovalKeyView
    """The key that signs from now on."""
    retired_key_id: str | None
    """The key it replaces, still listed (with its ``retired_at``) to verify what it
    signed; None when the tenant had no key yet."""


class AccessRequestSubmit(Request):
    connector_id: UUID
    resource: Resource
    access_level: AccessLevel
    justification: Justification
    duration_seconds: Annotated[int, Meta(ge=1, le=366 * 24 * 3600)]
    items: Annotated[int, Meta(ge=1, le=1_000_000_000)] = 1


class AccessRequestView(Body):
    request_id: UUID
    requester_id: UUID
    connector_id: UUID
    resource: str
    access_level: str
    justification: str | None
    """None once the requester's personal data was erased."""
    duration_seconds: int
    items: int
    risk: str
    approvals_needed: int
    approval_ttl_seconds: int
    content_version: int
    content_hash: str
    status: str
    submitted_at: datetime
    updated_at: datetime
    grant_id: UUID | None
    version: int


class AccessRequestPage(Body):
    items: list[AccessRequestView]
    next_after: UUID | None


class DecisionBody(Request):
    decision: Literal["approve", "reject"]


class DecisionView(Body):
    request_id: UUID
    decision: str
    approval_id: UUID | None
    approver_id: UUID
    decided_at: datetime
    key_id: str
    signature: str
    """Ed25519 over ``manifest``, base64."""
    manifest: str
    """The RFC 8785 bytes that were signed, base64."""


class HistoryEntry(Body):
    seq: int
    type: str
    actor_id: UUID | None
    at: datetime
    content_version: int | None
    content_hash: str | None
    approval_id: UUID | None
    grant_id: UUID | None
    key_id: str | None
    signature: str | None
    manifest: str | None
    """For a decision: the signed bytes, rebuilt from the recorded fields, base64."""
    signature_valid: bool | None
    """For a decision: whether the signature verifies under the published key."""


class AccessRequestHistory(Body):
    request: AccessRequestView
    history: list[HistoryEntry]


class GrantView(Body):
    grant_id: UUID
    request_id: UUID
    member_id: UUID
    connector_id: UUID
    resource: str
    access_level: str
    granted_at: datetime
    expires_at: datetime
    status: str
    ended_at: datetime | None
    revoked_by: UUID | None
    provisioned: bool | None
    """Whether the connector's provisioner granted the access in the target system;
    None: no provisioner for the connector's kind (recorded only)."""
    deprovisioned: bool | None
    """The same for taking it back once the grant ended."""
    version: int


class GrantPage(Body):
    items: list[GrantView]
    next_after: UUID | None


class GrantRevoke(Request):
    reason: Justification | None = None


# ---- connectors -------------------------------------------------------------------------

ConnectorKind = Annotated[str, Meta(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_-]*$")]
ConnectorConfig = Annotated[dict[str, object], Meta(max_length=64)]
"""Non-secret settings: a JSON object, at most 4 KiB, no fractions, no key naming a secret."""
CredentialKindName = Literal["api_key", "client_secret", "oauth_token", "password"]


class ConnectorCreate(Request):
    kind: ConnectorKind
    name: Name
    config: ConnectorConfig = msgspec.field(default_factory=dict)


class ConnectorCreated(Body):
    connector_id: UUID


class ConnectorConfigChange(Request):
    config: ConnectorConfig


class ConnectorCredentialSet(Request):
    kind: CredentialKindName
    secret: Annotated[str, Meta(min_length=1, max_length=8192)]
    """Write-only: stored sealed, never returned, logged or put in an event."""


class ConnectorView(Body):
    connector_id: UUID
    kind: str
    name: str
    config: dict[str, object]
    status: Literal["active", "paused"]
    rotating: bool
    credential_kind: str | None
    credential_version: int | None
    fingerprint: str | None
    """HMAC-SHA256 of the credential under a tenant key (16 hex digits): equal credentials
    have equal fingerprints, and nothing else can be told from it."""
    rotated_at: datetime | None
    registered_at: datetime
    updated_at: datetime
    version: int


class ConnectorPage(Body):
    items: list[ConnectorView]
    next_after: UUID | None


class TenantKeyRotated(Body):
    from_version: int
    to_version: int
    subject_keys: int
    """Personal-data subject keys re-wrapped under the new tenant key."""
    vault_keys: int
    """Vault data keys re-wrapped under the new tenant key."""
