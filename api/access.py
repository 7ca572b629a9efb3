"""Who may call a route: every route declares its access; one middleware enforces it.

Each handler's ``opt`` carries an :class:`Access`: the permission it needs (or
``public`` / ``platform``), and whether it needs a recent authentication
(step-up) or an interactive session. ``create_app`` refuses to start if a route
declares none: deny by default. The middleware, per request and in order:
authenticates (``Authorization: Bearer`` session token or API key, or the
``__Host-strongroom_session`` cookie), rate-limits, authorizes, applies
``Idempotency-Key`` on command routes and records request metrics per route
template. A role change, a deactivation or a revoked key is read from
PostgreSQL on every request, so it takes effect on the next one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import request_id
from domain.errors import (
    ForbiddenError,
    StepUpRequiredError,
    UnauthenticatedError,
)
from domain.permissions import Permission
from infra.credentials import API_KEY_PREFIX, PLATFORM_PREFIX, SESSION_PREFIX
from infra.idempotency import MAX_KEY_LENGTH, StoredResponse, fingerprint
from infra.identity import Principal
from infra.logcontext import REQUEST_ID
from infra.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

STEP_UP_WINDOW = timedelta(minutes=5)
SESSION_COOKIE = "__Host-strongroom_session"
COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REPLAYABLE = frozenset(range(200, 300)) | (frozenset(range(400, 500)) - {401, 409, 429})


@dataclass(frozen=True, slots=True)
class Access:
    permission: Permission | None = None
    public: bool = False
    platform: bool = False
    step_up: bool = False
    session_only: bool = False
    rate_limited: bool = True
    """False only for probes (health, metrics), which load balancers call often."""


def requires(
    permission: Permission, *, step_up: bool = False, session_only: bool = False
) -> dict[str, Any]:
    return {
        "access": Access(
            permission=permission, step_up=step_up or False, session_only=session_only or step_up
        )
    }


PUBLIC: dict[str, Any] = {"access": Access(public=True)}
PROBE: dict[str, Any] = {"access": Access(public=True, rate_limited=False)}
PLATFORM: dict[str, Any] = {"access": Access(platform=True)}


class PlatformPrincipal:
    """The platform administrator (creates tenants, nothing else)."""

    id = "platform"


def principal_of(scope: Scope) -> Principal:
    principal = scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise UnauthenticatedError("authentication required")
    return principal


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def credential_of(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("use Authorization: Bearer <token>")
        return token.strip()
    cookie = _header(scope, b"cookie")
    if cookie:
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                return value
    return None


class AccessMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        REQUEST_ID.set(request_id(scope))
        template = str(scope.get("path_template") or "unmatched")
        method = str(scope.get("method", "GET"))
        status_seen = [500]

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = int(message["status"])
            await send(message)

        try:
            await self._handle(scope, receive, measured_send)
        finally:
            HTTP_REQUESTS.labels(method, template, str(status_seen[0])).inc()
            HTTP_REQUEST_SECONDS.labels(method, template).observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        access = getattr(handler, "opt", {}).get("access")
        if not isinstance(access, Access):
            raise ForbiddenError("this route is not open to anyone")
        runtime = scope["litestar_app"].state.runtime
        identity = runtime.identity
        state = scope.setdefault("state", {})
        tenant_id = None
        principal_id = "anonymous"
        if access.platform:
            token = credential_of(scope)
            if not token or not token.startswith(PLATFORM_PREFIX):
                raise UnauthenticatedError("the platform administrator's token is required")
            identity.limits.anonymous_ip.take(client_ip(scope))
            if not await identity.platform_token_valid(token):
                raise UnauthenticatedError("the platform administrator's token is required")
            state["principal"] = PlatformPrincipal()
            principal_id = PlatformPrincipal.id
        elif access.public:
            if access.rate_limited:
                identity.limits.anonymous_ip.take(client_ip(scope))
        else:
            principal = await self._authenticate(scope, identity)
            identity.limits.principal.take(f"{principal.tenant_id}:{principal.id}")
            self._authorize(principal, access, identity.ctx.now())
            state["principal"] = principal
            tenant_id = principal.tenant_id
            principal_id = f"{principal.kind}:{principal.credential_id}"
            if principal.kind == "session":
                principal_id = f"member:{principal.member_id}"
        key = _header(scope, b"idempotency-key")
        if key is None or scope.get("method") not in COMMAND_METHODS:
            await self.app(scope, receive, send)
            return
        if access.public:
            # Anonymous routes (login, MFA, invite acceptance) have no principal to key
            # the claim on; their effects are one-time by nature, so a key is ignored.
            await self.app(scope, receive, send)
            return
        if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            raise _bad_key()
        await self._idempotent(scope, receive, send, identity, tenant_id, principal_id, key)

    async def _authenticate(self, scope: Scope, identity: Any) -> Principal:
        token = credential_of(scope)
        if token is None:
            raise UnauthenticatedError("authentication required")
        if token.startswith(API_KEY_PREFIX):
            principal: Principal = await identity.api_keys.authenticate(token)
        elif token.startswith(SESSION_PREFIX):
            principal = await identity.sessions.authenticate(token)
        else:
            raise UnauthenticatedError("no valid credential")
        return principal

    @staticmethod
    def _authorize(principal: Principal, access: Access, now: Any) -> None:
        assert access.permission is not None
        if access.permission not in principal.permissions:
            raise ForbiddenError(f"this needs the {access.permission.value} permission")
        if access.session_only and principal.kind != "session":
            raise ForbiddenError("this needs an interactive session, not an API key")
        if access.step_up and (
            principal.authenticated_at is None or now - principal.authenticated_at > STEP_UP_WINDOW
        ):
            raise StepUpRequiredError("authenticate again (POST /v1/auth/step-up) to do this")

    async def _idempotent(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        identity: Any,
        tenant_id: Any,
        principal_id: str,
        key: str,
    ) -> None:
        body = bytearray()
        messages: list[Any] = []
        handler = scope["route_handler"]
        limit = (
            handler.resolve_request_max_body_size()
            if isinstance(handler, HTTPRouteHandler)
            else None
        ) or math.inf
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > limit:
                raise RequestEntityTooLarge  # before buffering more than the app would read
            if not message.get("more_body", False):
                break
        print_ = fingerprint(str(scope.get("method")), str(scope["path"]), bytes(body))
        store = identity.idempotency
        stored = await store.claim(tenant_id, principal_id, key, print_)
        if stored is not None:
            await _replay(send, stored)
            return

        async def replay_receive() -> Any:
            return messages.pop(0) if messages else await receive()

        status = 500
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await store.release(tenant_id, principal_id, key)
            raise
        if status in _REPLAYABLE:
            kept = [(k, v) for k, v in headers if k.lower() not in {"x-request-id", "date"}]
            await store.complete(
                tenant_id, principal_id, key, StoredResponse(status, kept, b"".join(chunks))
            )
        else:
            await store.release(tenant_id, principal_id, key)


def _bad_key() -> Exception:
    return ClientException("Idempotency-Key is 1 to 255 printable characters")


async def _replay(send: Send, stored: StoredResponse) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
    headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})
