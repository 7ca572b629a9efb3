"""The one map from errors to RFC 9457 problem+json responses.

Problem bodies say what the caller can act on; they never echo internals,
stack traces or secrets. Anything unexpected is a generic 500 with the
request id, and the details go to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from domain.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    RateLimitedError,
    StepUpRequiredError,
    StrongroomError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_BY_CLASS: list[tuple[type[StrongroomError], int, str]] = [
    (UnauthenticatedError, 401, "unauthenticated"),
    (StepUpRequiredError, 401, "step-up-required"),
    (RateLimitedError, 429, "rate-limited"),
    (InvalidError, 422, "invalid"),
    (NotFoundError, 404, "not-found"),
    (ConflictError, 409, "conflict"),
    (ForbiddenError, 403, "forbidden"),
    (UnavailableError, 503, "unavailable"),
]

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 problem details body (extension members may follow)."""

    type: str
    title: str
    status: int
    detail: str


def problem(
    status: int, detail: str, *, slug: str | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"https://strongroom.dev/problems/{slug or status}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON)


def handle_domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    for cls, status, slug in _BY_CLASS:
        if isinstance(exc, cls):
            response = problem(status, str(exc), slug=slug)
            if status == 503:
                response.headers["Retry-After"] = "1"
            if isinstance(exc, UnauthenticatedError):
                response.headers["WWW-Authenticate"] = 'Bearer realm="strongroom"'
            if isinstance(exc, StepUpRequiredError):
                response.headers["WWW-Authenticate"] = (
                    'Bearer realm="strongroom", error="insufficient_user_authentication", '
                    'error_description="a recent authentication is required"'
                )
            if isinstance(exc, RateLimitedError):
                response.headers["Retry-After"] = str(exc.retry_after)
                response.headers["RateLimit-Policy"] = exc.policy
                name = exc.policy.split(";", 1)[0]
                response.headers["RateLimit"] = f"{name};r={exc.remaining};t={exc.retry_after}"
            return response
    return handle_unexpected(_, exc)


def handle_http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        extra["errors"] = [
            {"message": e.get("message"), "key": e.get("key")}
            for e in exc.extra
            if isinstance(e, dict)
        ]
    detail = exc.detail if exc.status_code < 500 else "the service failed; try again later"
    response = problem(exc.status_code, detail, **extra)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled %s on %s", type(exc).__name__, request.scope.get("path"), exc_info=exc)
    return problem(500, "the service failed; the request id identifies it in our logs")


EXCEPTION_HANDLERS = {
    StrongroomError: handle_domain_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}
