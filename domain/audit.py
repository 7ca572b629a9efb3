"""Security events that no aggregate decides: authentication and sessions.

They go to the tenant's ``auth-<tenant id>`` stream in any order (no expected
version), each before the response that reports it is sent. Their data holds
ids and reasons; the e-mail address and IP address of an attempt are personal
fields, encrypted and erasable.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID


class AuthEvent(StrEnum):
    LOGIN_SUCCEEDED = "auth.login_succeeded"
    LOGIN_FAILED = "auth.login_failed"
    MFA_FAILED = "auth.mfa_failed"
    STEPPED_UP = "auth.stepped_up"
    LOGGED_OUT = "auth.logged_out"
    SESSIONS_REVOKED = "auth.sessions_revoked"


class FailureReason(StrEnum):
    CREDENTIALS = "credentials"
    """Unknown e-mail or wrong password: the caller is never told which."""
    INACTIVE = "inactive"
    THROTTLED = "throttled"
    CODE = "code"


def auth_stream(tenant_id: UUID) -> str:
    return f"auth-{tenant_id}"


def anonymous_subject(tenant_id: UUID) -> str:
    """The data subject of attempts by addresses that are no member's."""
    return f"anonymous-{tenant_id}"
