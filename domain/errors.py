"""The error hierarchy. Every error we raise on purpose is a :class:`StrongroomError`.

The HTTP layer maps these classes to RFC 9457 problems in one place; the
messages are written to be shown to a caller, so they never carry secrets or
personal data.
"""

from __future__ import annotations


class StrongroomError(Exception):
    """Base of every deliberate error."""


class InvalidError(StrongroomError):
    """The input is not acceptable (422)."""


class NotFoundError(StrongroomError):
    """No such thing, or not visible to this tenant (404)."""


class ConflictError(StrongroomError):
    """The state moved under the caller: retry with fresh state (409)."""


class ForbiddenError(StrongroomError):
    """Authenticated, but not allowed (403)."""


class UnavailableError(StrongroomError):
    """Temporarily unable to answer, e.g. a read model still catching up (503)."""


class UnauthenticatedError(StrongroomError):
    """No valid credential (401). Says nothing about which part was wrong."""


class StepUpRequiredError(StrongroomError):
    """The route needs a recent authentication (401, insufficient_user_authentication)."""


class RateLimitedError(StrongroomError):
    """Too many attempts (429); ``retry_after`` seconds until the next is allowed."""

    def __init__(self, message: str, *, retry_after: int, policy: str, remaining: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.policy = policy
        self.remaining = remaining
