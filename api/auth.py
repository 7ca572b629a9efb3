"""Logging in, the second factor, step-up, sessions, and the caller's own account."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import JSONBody

from api.access import PUBLIC, SESSION_COOKIE, client_ip, principal_of, requires
from api.positions import positioned
from api.schemas import (
    Login,
    MfaCompletion,
    MfaConfirm,
    MfaEnrollment,
    PasswordChange,
    RecoveryCodes,
    Revoked,
    SessionIssued,
    SessionView,
    StepUp,
)
from domain.permissions import Permission
from infra.runtime import Runtime
from infra.sessions import LoginOutcome

SELF = Permission.ACCOUNT_SELF


def _issued(outcome: LoginOutcome, *, cookie: bool) -> Response[SessionIssued]:
    if outcome.session is None:
        body = SessionIssued(status="mfa_required", token=outcome.challenge)
        return positioned(body, outcome.position)
    session = outcome.session
    body = SessionIssued(
        status="authenticated",
        token=session.token,
        session_id=session.session_id,
        expires_at=session.expires_at,
        idle_timeout_seconds=int(session.idle_timeout.total_seconds()),
    )
    response = positioned(body, outcome.position)
    if cookie:
        response.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}={session.token}; Path=/; Secure; HttpOnly; SameSite=Strict"
        )
    return response


def _user_agent(request: Request[Any, Any, Any]) -> str | None:
    agent = request.headers.get("user-agent")
    return agent[:256] if agent else None


class AuthController(Controller):
    path = "/v1/auth"
    tags = ["authentication"]

    @post(
        "/login",
        operation_id="login",
        summary="Log in with e-mail and password; may ask for a second factor",
        opt=PUBLIC,
        status_code=200,
    )
    async def login(
        self, request: Request[Any, Any, Any], data: JSONBody[Login]
    ) -> Response[SessionIssued]:
        runtime: Runtime = request.app.state.runtime
        identity = runtime.identity
        identity.limits.login_ip.take(client_ip(request.scope))
        outcome = await identity.sessions.login(
            data.tenant,
            data.email,
            data.password,
            ip=client_ip(request.scope),
            user_agent=_user_agent(request),
        )
        return _issued(outcome, cookie=data.cookie)

    @post(
        "/mfa",
        operation_id="completeMfa",
        summary="Complete a login with a TOTP code or a recovery code",
        opt=PUBLIC,
        status_code=200,
    )
    async def mfa(
        self, request: Request[Any, Any, Any], data: JSONBody[MfaCompletion]
    ) -> Response[SessionIssued]:
        runtime: Runtime = request.app.state.runtime
        runtime.identity.limits.login_ip.take(client_ip(request.scope))
        outcome = await runtime.identity.sessions.complete_mfa(
            data.challenge,
            code=data.code,
            recovery_code=data.recovery_code,
            ip=client_ip(request.scope),
            user_agent=_user_agent(request),
        )
        return _issued(outcome, cookie=data.cookie)

    @post(
        "/step-up",
        operation_id="stepUp",
        summary="Authenticate again: a new session token, valid for sensitive routes",
        opt=requires(SELF, session_only=True),
        status_code=200,
    )
    async def step_up(
        self, request: Request[Any, Any, Any], data: JSONBody[StepUp]
    ) -> Response[SessionIssued]:
        runtime: Runtime = request.app.state.runtime
        runtime.identity.limits.login_ip.take(client_ip(request.scope))
        outcome = await runtime.identity.sessions.step_up(
            principal_of(request.scope),
            password=data.password,
            code=data.code,
            ip=client_ip(request.scope),
        )
        return _issued(outcome, cookie=data.cookie)

    @post(
        "/logout",
        operation_id="logout",
        summary="End this session",
        opt=requires(SELF, session_only=True),
        status_code=204,
    )
    async def logout(self, request: Request[Any, Any, Any]) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.logout(principal_of(request.scope))
        response = positioned(None, written.position, 204)
        response.headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
        )
        return response

    @get(
        "/sessions",
        operation_id="listSessions",
        summary="The caller's live sessions",
        opt=requires(SELF),
    )
    async def sessions(self, request: Request[Any, Any, Any]) -> list[SessionView]:
        runtime: Runtime = request.app.state.runtime
        rows = await runtime.identity.sessions.list_sessions(principal_of(request.scope))
        return [
            SessionView(
                session_id=r["session_id"],
                created_at=r["created_at"],
                last_seen_at=r["last_seen_at"],
                authenticated_at=r["authenticated_at"],
                expires_at=r["expires_at"],
                idle_timeout_seconds=int(r["idle_timeout"].total_seconds()),
                user_agent=r["user_agent"],
                current=r["current"],
            )
            for r in rows
        ]

    @post(
        "/sessions/revoke-others",
        operation_id="revokeOtherSessions",
        summary="Log out every other session of the caller",
        opt=requires(SELF, session_only=True),
        status_code=200,
    )
    async def revoke_others(self, request: Request[Any, Any, Any]) -> Response[Revoked]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.revoke_other_sessions(principal_of(request.scope))
        return positioned(Revoked(revoked=written.values["revoked"]), written.position)


class AccountController(Controller):
    path = "/v1/account"
    tags = ["account"]

    @put(
        "/password",
        operation_id="changePassword",
        summary="Change the caller's password; other sessions end (needs step-up)",
        opt=requires(SELF, step_up=True),
        status_code=204,
    )
    async def password(
        self, request: Request[Any, Any, Any], data: JSONBody[PasswordChange]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.change_password(
            principal_of(request.scope), data.password
        )
        return positioned(None, written.position, 204)

    @post(
        "/mfa",
        operation_id="startMfaEnrollment",
        summary="Start TOTP enrollment: the secret, shown once (needs step-up)",
        opt=requires(SELF, step_up=True),
        status_code=200,
    )
    async def enroll(self, request: Request[Any, Any, Any]) -> MfaEnrollment:
        runtime: Runtime = request.app.state.runtime
        shown = await runtime.identity.sessions.start_mfa_enrollment(
            principal_of(request.scope), issuer=f"Strongroom {runtime.settings.log_host}"
        )
        return MfaEnrollment(secret=shown["secret"], otpauth_uri=shown["otpauth_uri"])

    @post(
        "/mfa/confirm",
        operation_id="confirmMfa",
        summary="Turn TOTP on with a first code; returns recovery codes, shown once",
        opt=requires(SELF, session_only=True),
        status_code=200,
    )
    async def confirm(
        self, request: Request[Any, Any, Any], data: JSONBody[MfaConfirm]
    ) -> Response[RecoveryCodes]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.confirm_mfa(
            principal_of(request.scope), data.code
        )
        return positioned(
            RecoveryCodes(recovery_codes=written.values["recovery_codes"]), written.position
        )

    @delete(
        "/mfa",
        operation_id="disableMfa",
        summary="Turn TOTP off (needs step-up; owners cannot)",
        opt=requires(SELF, step_up=True),
        status_code=204,
    )
    async def disable(self, request: Request[Any, Any, Any]) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.disable_mfa(principal_of(request.scope))
        return positioned(None, written.position, 204)

    @post(
        "/recovery-codes",
        operation_id="regenerateRecoveryCodes",
        summary="Ten new recovery codes; the old set stops working (needs step-up)",
        opt=requires(SELF, step_up=True),
        status_code=200,
    )
    async def recovery_codes(self, request: Request[Any, Any, Any]) -> Response[RecoveryCodes]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.sessions.regenerate_recovery_codes(
            principal_of(request.scope)
        )
        return positioned(
            RecoveryCodes(recovery_codes=written.values["recovery_codes"]), written.position
        )
