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
