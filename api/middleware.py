"""Security headers and a request id on every response, errors and 404s included.

Implemented as litestar's ``before_send`` hook, which sees every ASGI message
the app sends, including responses produced before any route matched.
"""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("cache-control", "no-store"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def request_id(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` when it is sane, else a new one; fixed per request."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        incoming = dict(scope.get("headers", ())).get(b"x-request-id", b"").decode("latin-1")
        state["request_id"] = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    value: str = state["request_id"]
    return value


async def add_security_headers(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in SECURITY_HEADERS:
        if name not in headers:
            headers[name] = value
    headers["x-request-id"] = request_id(scope)
