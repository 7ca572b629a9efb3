"""Logging in, the second factor, sessions, step-up, and the account's own secrets.

Sessions are opaque tokens (``srs_`` + 192 random bits) stored as SHA-256. A
password login for a member with TOTP gives a short-lived *challenge* token
(stage ``mfa``); the code turns it into a session with a new token. Every
session has an idle timeout and an absolute expiry, fixed from the tenant's
settings when it starts; step-up re-authenticates and replaces the token.
Failures count per account (the e-mail lookup key) in ``auth_failure``: the
101st in an hour is refused before any password is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson

from domain.audit import AuthEvent, FailureReason, anonymous_subject
from domain.errors import (
    ConflictError,
    ForbiddenError,
    RateLimitedError,
    UnauthenticatedError,
)
from domain.member import Member
from domain.permissions import Permission
from domain.roles import Role
from infra.credentials import (
    SESSION_PREFIX,
    new_recovery_codes,
    new_token,
    new_totp_secret,
    recovery_code_hash,
    sha256,
    token_shape,
    totp_match,
    totp_uri,
)
from infra.db import call_for_credential, tenant_transaction
from infra.eventstore import Actor, Effect
from infra.identity import (
    IdentityContext,
    Principal,
    Written,
    effective_permissions,
    position_of,
)
from infra.keyring import object_aad, open_sealed, seal

FAILURES_PER_HOUR = 100
CHALLENGE_LIFETIME = timedelta(minutes=5)
LAST_SEEN_GRANULARITY = timedelta(seconds=15)
"""last_seen_at is written at most this often per session (idle timeouts are minutes)."""
GENERIC_LOGIN_FAILURE = "the e-mail address, password or code is not right"
_SESSION = token_shape(SESSION_PREFIX)


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    session_id: UUID
    expires_at: datetime
    idle_timeout: timedelta


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    position: int
    session: NewSession | None = None
    challenge: str | None = None
    """Set instead of ``session`` when a second factor is needed."""


@dataclass(frozen=True, slots=True)
class _Account:
    member_id: UUID
    email_key: bytes
    active: bool
    role: Role
    password_phc: str
    totp_confirmed: bool
    idle: timedelta
    absolute: timedelta


_ACCOUNT_SQL = (
    "SELECT a.member_id, e.email_key, a.active, a.role, a.password_phc, a.totp_confirmed, "
    "d.session_idle_minutes, d.session_absolute_hours FROM account a "
    "JOIN member_email e ON e.tenant_id = a.tenant_id AND e.member_id = a.member_id "
    "JOIN tenant_directory d ON d.tenant_id = a.tenant_id WHERE a.tenant_id = $1 AND "
)


def _account(row: asyncpg.Record) -> _Account:
    return _Account(
        member_id=row["member_id"],
        email_key=row["email_key"],
        active=row["active"],
        role=Role(row["role"]),
        password_phc=row["password_phc"],
        totp_confirmed=row["totp_confirmed"],
        idle=timedelta(minutes=row["session_idle_minutes"]),
        absolute=timedelta(hours=row["session_absolute_hours"]),
    )


class Sessions:
    def __init__(self, ctx: IdentityContext) -> None:
        self.ctx = ctx

    # ---- failures ---------------------------------------------------------------------

    async def _check_throttle(
        self, conn: asyncpg.Connection, tenant_id: UUID, account_key: bytes
    ) -> None:
        now = self.ctx.now()
        rows = await conn.fetch(
            "SELECT failed_at FROM auth_failure WHERE tenant_id = $1 AND account_key = $2 "
            "AND failed_at > $3 ORDER BY failed_at DESC LIMIT $4",
            tenant_id,
            account_key,
            now - timedelta(hours=1),
            FAILURES_PER_HOUR,
        )
        if len(rows) >= FAILURES_PER_HOUR:
            oldest: datetime = rows[-1]["failed_at"]
            retry = max(1, int((oldest + timedelta(hours=1) - now).total_seconds()) + 1)
            raise RateLimitedError(
                "too many failed attempts for this account; try again later",
                retry_after=retry,
                policy=f'"account";q={FAILURES_PER_HOUR};w=3600',
            )

    async def _fail(
        self,
        tenant_id: UUID,
        account_key: bytes,
        event: AuthEvent,
        reason: FailureReason,
        *,
        member_id: UUID | None,
        kind: str,
        personal: dict[str, str],
    ) -> None:
        """Record the failure (counted, and an event) and raise the generic error."""
        now = self.ctx.now()

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO auth_failure (tenant_id, account_key, failed_at, kind) "
                "VALUES ($1, $2, $3, $4)",
                tenant_id,
                account_key,
                now,
                kind,
            )
            await conn.execute(
                "DELETE FROM auth_failure WHERE tenant_id = $1 AND account_key = $2 "
                "AND failed_at < $3",
                tenant_id,
                account_key,
                now - timedelta(hours=2),
            )

        subject = _subject(tenant_id, member_id)
        await self.ctx.audit(
            tenant_id,
            event,
            {"member_id": str(member_id) if member_id else None, "reason": reason.value},
            actor=Actor("user", str(member_id)) if member_id else Actor("system", "anonymous"),
            personal={k: v for k, v in personal.items() if v},
            subject=subject,
            effect=effect,
        )
        raise UnauthenticatedError(GENERIC_LOGIN_FAILURE)

    # ---- login ----------------------------------------------------------------------------

    async def login(
        self, slug: str, email: str, password: str, *, ip: str, user_agent: str | None
    ) -> LoginOutcome:
        ctx = self.ctx
        tenant_id = await ctx.pool.fetchval("SELECT tenant_by_slug($1)", slug)
        if tenant_id is None:
            await ctx.hasher.verify(None, password)
            raise UnauthenticatedError(GENERIC_LOGIN_FAILURE)
        async with tenant_transaction(ctx.pool, tenant_id, readonly=True) as conn:
            email_key = await ctx.email_key(conn, tenant_id, email)
            row = await conn.fetchrow(_ACCOUNT_SQL + "e.email_key = $2", tenant_id, email_key)
            throttled: RateLimitedError | None = None
            try:
                await self._check_throttle(conn, tenant_id, email_key)
            except RateLimitedError as refused:
                throttled = refused
        account = _account(row) if row else None
        member_id = account.member_id if account else None
        personal = {"email": email.strip()[:254], "ip": ip}
        if throttled is not None:
            await ctx.audit(
                tenant_id,
                AuthEvent.LOGIN_FAILED,
                {"member_id": str(member_id) if member_id else None, "reason": "throttled"},
                actor=Actor("system", "anonymous"),
                personal=personal,
                subject=_subject(tenant_id, member_id),
            )
            raise throttled
        ok = await ctx.hasher.verify(account.password_phc if account else None, password)
        if not ok or account is None or not account.active:
            reason = FailureReason.INACTIVE if ok else FailureReason.CREDENTIALS
            await self._fail(
                tenant_id,
                email_key,
                AuthEvent.LOGIN_FAILED,
                reason,
                member_id=member_id,
                kind="password",
                personal=personal,
            )
        assert account is not None
        rehash = (
            await ctx.hasher.hash(password)
            if ctx.hasher.needs_rehash(account.password_phc)
            else None
        )
        if account.totp_confirmed:
            return await self._challenge(tenant_id, account, rehash, user_agent)
        new = self._new_session(account, user_agent)
        result = await ctx.audit(
            tenant_id,
            AuthEvent.LOGIN_SUCCEEDED,
            {
                "member_id": str(account.member_id),
                "session_id": str(new.session_id),
                "method": "password",
            },
            actor=Actor("user", str(account.member_id)),
            personal={"ip": ip},
            subject=Member.stream_for(account.member_id),
            effect=self._start_effect(tenant_id, account, new, user_agent, rehash=rehash),
        )
        return LoginOutcome(position_of(result), session=new)

    async def _challenge(
        self, tenant_id: UUID, account: _Account, rehash: str | None, user_agent: str | None
    ) -> LoginOutcome:
        """A password-verified login waiting for its code: no event until it completes."""
        token = new_token(SESSION_PREFIX)
        now = self.ctx.now()
        async with tenant_transaction(self.ctx.pool, tenant_id) as conn:
            await conn.execute(
                "INSERT INTO session (tenant_id, session_id, member_id, token_hash, stage, "
                "created_at, last_seen_at, authenticated_at, idle_timeout, expires_at, "
                "user_agent) VALUES ($1, $2, $3, $4, 'mfa', $5, $5, $5, $6, $7, $8)",
                tenant_id,
                uuid4(),
                account.member_id,
                sha256(token),
                now,
                CHALLENGE_LIFETIME,
                now + CHALLENGE_LIFETIME,
                user_agent,
            )
            if rehash:
                await _store_password(conn, tenant_id, account.member_id, rehash)
        return LoginOutcome(0, challenge=token)

    def _new_session(self, account: _Account, user_agent: str | None) -> NewSession:
        return NewSession(
            token=new_token(SESSION_PREFIX),
            session_id=uuid4(),
            expires_at=self.ctx.now() + account.absolute,
            idle_timeout=account.idle,
        )

    def _start_effect(
        self,
        tenant_id: UUID,
        account: _Account,
        new: NewSession,
        user_agent: str | None,
        *,
        rehash: str | None = None,
        ends: UUID | None = None,
        authenticated_at: datetime | None = None,
    ) -> Effect:
        now = self.ctx.now()

        async def effect(conn: asyncpg.Connection) -> None:
            if ends is not None:
                await _end_session(conn, tenant_id, ends, now)
            await conn.execute(
                "INSERT INTO session (tenant_id, session_id, member_id, token_hash, stage, "
                "created_at, last_seen_at, authenticated_at, idle_timeout, expires_at, "
                "user_agent) VALUES ($1, $2, $3, $4, 'full', $5, $5, $6, $7, $8, $9)",
                tenant_id,
                new.session_id,
                account.member_id,
                sha256(new.token),
                now,
                authenticated_at or now,
                new.idle_timeout,
                new.expires_at,
                (user_agent or "")[:256] or None,
            )
            if rehash:
                await _store_password(conn, tenant_id, account.member_id, rehash)

        return effect

    async def complete_mfa(
        self,
        challenge: str,
        *,
        code: str | None,
        recovery_code: str | None,
        ip: str,
        user_agent: str | None,
    ) -> LoginOutcome:
        ctx = self.ctx
        tenant_id, row = await self._find_session(challenge, stage="mfa")
        now = ctx.now()
        async with tenant_transaction(ctx.pool, tenant_id, readonly=True) as conn:
            found = await conn.fetchrow(
                _ACCOUNT_SQL + "a.member_id = $2", tenant_id, row["member_id"]
            )
            if found is None:
                raise UnauthenticatedError(GENERIC_LOGIN_FAILURE)
            account = _account(found)
            await self._check_throttle(conn, tenant_id, account.email_key)
            matched = await self._second_factor(conn, tenant_id, account, code, recovery_code)
        if matched is None or not account.active:
            await self._fail(
                tenant_id,
                account.email_key,
                AuthEvent.MFA_FAILED,
                FailureReason.CODE,
                member_id=account.member_id,
                kind="recovery" if recovery_code else "mfa",
                personal={"ip": ip},
            )
        assert matched is not None
        new = self._new_session(account, user_agent)
        start = self._start_effect(tenant_id, account, new, user_agent, ends=row["session_id"])

        async def effect(conn: asyncpg.Connection) -> None:
            await _consume_factor(conn, tenant_id, account.member_id, matched, now)
            await start(conn)

        result = await ctx.audit(
            tenant_id,
            AuthEvent.LOGIN_SUCCEEDED,
            {
                "member_id": str(account.member_id),
                "session_id": str(new.session_id),
                "method": "recovery_code" if isinstance(matched, bytes) else "totp",
            },
            actor=Actor("user", str(account.member_id)),
            personal={"ip": ip},
            subject=Member.stream_for(account.member_id),
            effect=effect,
        )
        return LoginOutcome(position_of(result), session=new)

    async def _second_factor(
        self,
        conn: asyncpg.Connection,
        tenant_id: UUID,
        account: _Account,
        code: str | None,
        recovery_code: str | None,
    ) -> int | bytes | None:
        """The TOTP step or the recovery code hash that matched, if any (not yet used)."""
        if recovery_code:
            code_hash = recovery_code_hash(recovery_code)
            unused = await conn.fetchval(
                "SELECT true FROM recovery_code WHERE tenant_id = $1 AND member_id = $2 "
                "AND code_hash = $3 AND used_at IS NULL",
                tenant_id,
                account.member_id,
                code_hash,
            )
            return code_hash if unused else None
        if not code:
            return None
        secret_row = await conn.fetchrow(
            "SELECT totp_sealed, totp_key_version, totp_last_step FROM account "
            "WHERE tenant_id = $1 AND member_id = $2",
            tenant_id,
            account.member_id,
        )
        if secret_row is None or secret_row["totp_sealed"] is None:
            return None
        secret = await self._open_totp(conn, tenant_id, account.member_id, secret_row)
        return totp_match(secret, code, at=self.ctx.now(), after_step=secret_row["totp_last_step"])

    async def _open_totp(
        self, conn: asyncpg.Connection, tenant_id: UUID, member_id: UUID, row: asyncpg.Record
    ) -> str:
        version = row["totp_key_version"]
        key = await self.ctx.keyring.tenant_key(conn, tenant_id, version)
        aad = object_aad(tenant_id, f"totp:{member_id}", version)
        return open_sealed(key, row["totp_sealed"], aad).decode()

    async def _find_session(self, token: str, *, stage: str) -> tuple[UUID, asyncpg.Record]:
        if not _SESSION.fullmatch(token):
            raise UnauthenticatedError("no valid session")
        token_hash = sha256(token)
        tenant_id = await self.ctx.pool.fetchval(
            "SELECT credential_tenant('session', $1)", token_hash
        )
        if tenant_id is None:
            raise UnauthenticatedError("no valid session")
        now = self.ctx.now()
        async with tenant_transaction(self.ctx.pool, tenant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT session_id, member_id FROM session WHERE tenant_id = $1 "
                "AND token_hash = $2 AND stage = $3 AND ended_at IS NULL AND expires_at > $4",
                tenant_id,
                token_hash,
                stage,
                now,
            )
        if row is None:
            raise UnauthenticatedError("no valid session")
        return tenant_id, row

    # ---- every request -------------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """The principal of a session token, or UnauthenticatedError. Moves last_seen.

        One statement (infra/sql/0015): the token's tenant, the session joined to
        the account and the tenant's settings, and the last_seen update.
        """
        if not _SESSION.fullmatch(token):
            raise UnauthenticatedError("no valid session")
        tenant_id, raw = await call_for_credential(
            self.ctx.pool, "session", sha256(token), self.ctx.now(), LAST_SEEN_GRANULARITY
        )
        if tenant_id is None or raw is None:
            raise UnauthenticatedError("no valid session")
        found = orjson.loads(str(raw))
        role = Role(found["role"])
        permissions = effective_permissions(role, None)
        if found["mfa_required"] and not found["totp_confirmed"]:
            permissions = frozenset({Permission.ACCOUNT_SELF})
        return Principal(
            tenant_id=tenant_id,
            member_id=UUID(found["member_id"]),
            role=role,
            permissions=permissions,
            kind="session",
            credential_id=UUID(found["credential_id"]),
            authenticated_at=datetime.fromisoformat(found["authenticated_at"]),
        )

    # ---- the session's own commands ------------------------------------------------------

    async def step_up(
        self, principal: Principal, *, password: str, code: str | None, ip: str
    ) -> LoginOutcome:
        """Prove again who you are: a new session token, authenticated now."""
        self._require_session(principal)
        ctx = self.ctx
        tenant_id = principal.tenant_id
        async with tenant_transaction(ctx.pool, tenant_id, readonly=True) as conn:
            found = await conn.fetchrow(
                _ACCOUNT_SQL + "a.member_id = $2", tenant_id, principal.member_id
            )
            assert found is not None
            account = _account(found)
            await self._check_throttle(conn, tenant_id, account.email_key)
            old = await conn.fetchrow(
                "SELECT expires_at, idle_timeout, user_agent FROM session "
                "WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                principal.credential_id,
            )
            matched: int | bytes | None = 0
            if account.totp_confirmed:
                matched = await self._second_factor(conn, tenant_id, account, code, None)
        ok = await ctx.hasher.verify(account.password_phc, password)
        if not ok or matched is None:
            await self._fail(
                tenant_id,
                account.email_key,
                AuthEvent.LOGIN_FAILED,
                FailureReason.CREDENTIALS,
                member_id=account.member_id,
                kind="password",
                personal={"ip": ip},
            )
        new = NewSession(
            token=new_token(SESSION_PREFIX),
            session_id=uuid4(),
            expires_at=old["expires_at"],
            idle_timeout=old["idle_timeout"],
        )
        now = ctx.now()
        start = self._start_effect(
            tenant_id, account, new, old["user_agent"], ends=principal.credential_id
        )

        async def effect(conn: asyncpg.Connection) -> None:
            if isinstance(matched, int) and matched > 0:
                await _consume_factor(conn, tenant_id, account.member_id, matched, now)
            await start(conn)

        result = await ctx.audit(
            tenant_id,
            AuthEvent.STEPPED_UP,
            {
                "member_id": str(account.member_id),
                "session_id": str(new.session_id),
                "replaces": str(principal.credential_id),
            },
            actor=principal.actor,
            personal={"ip": ip},
            subject=Member.stream_for(account.member_id),
            effect=effect,
        )
        return LoginOutcome(position_of(result), session=new)

    async def logout(self, principal: Principal) -> Written:
        self._require_session(principal)
        now = self.ctx.now()

        async def effect(conn: asyncpg.Connection) -> None:
            await _end_session(conn, principal.tenant_id, principal.credential_id, now)

        result = await self.ctx.audit(
            principal.tenant_id,
            AuthEvent.LOGGED_OUT,
            {"member_id": str(principal.member_id), "session_id": str(principal.credential_id)},
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result))

    async def revoke_other_sessions(self, principal: Principal) -> Written:
        self._require_session(principal)
        now = self.ctx.now()
        async with tenant_transaction(self.ctx.pool, principal.tenant_id, readonly=True) as conn:
            others = await conn.fetchval(
                "SELECT count(*) FROM session WHERE tenant_id = $1 AND member_id = $2 "
                "AND session_id <> $3 AND ended_at IS NULL",
                principal.tenant_id,
                principal.member_id,
                principal.credential_id,
            )

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE session SET ended_at = $4 WHERE tenant_id = $1 AND member_id = $2 "
                "AND session_id <> $3 AND ended_at IS NULL",
                principal.tenant_id,
                principal.member_id,
                principal.credential_id,
                now,
            )

        result = await self.ctx.audit(
            principal.tenant_id,
            AuthEvent.SESSIONS_REVOKED,
            {
                "member_id": str(principal.member_id),
                "kept": str(principal.credential_id),
                "count": others,
            },
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result), {"revoked": others})

    async def list_sessions(self, principal: Principal) -> list[dict[str, Any]]:
        now = self.ctx.now()
        async with tenant_transaction(self.ctx.pool, principal.tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT session_id, created_at, last_seen_at, authenticated_at, expires_at, "
                "idle_timeout, user_agent FROM session WHERE tenant_id = $1 AND member_id = $2 "
                "AND stage = 'full' AND ended_at IS NULL AND expires_at > $3 "
                "AND last_seen_at + idle_timeout > $3 ORDER BY created_at",
                principal.tenant_id,
                principal.member_id,
                now,
            )
        return [{**dict(r), "current": r["session_id"] == principal.credential_id} for r in rows]

    @staticmethod
    def _require_session(principal: Principal) -> None:
        if principal.kind != "session":
            raise ForbiddenError("this needs an interactive session, not an API key")

    # ---- password, MFA and recovery codes ---------------------------------------------------

    async def change_password(self, principal: Principal, new_password: str) -> Written:
        """(step-up) A new password; every other session of the member ends."""
        self._require_session(principal)
        ctx = self.ctx
        phc = await ctx.hasher.hash(new_password)
        member = await ctx.repository.get(principal.tenant_id, Member, principal.member_id)
        member.change_password()
        now = ctx.now()

        async def effect(conn: asyncpg.Connection) -> None:
            await _store_password(conn, principal.tenant_id, principal.member_id, phc)
            await conn.execute(
                "UPDATE session SET ended_at = $4 WHERE tenant_id = $1 AND member_id = $2 "
                "AND session_id <> $3 AND ended_at IS NULL",
                principal.tenant_id,
                principal.member_id,
                principal.credential_id,
                now,
            )

        result = await ctx.repository.save(
            principal.tenant_id, member, command_id=uuid4(), actor=principal.actor, effect=effect
        )
        return Written(position_of(result))

    async def start_mfa_enrollment(self, principal: Principal, *, issuer: str) -> dict[str, str]:
        """(step-up) A new TOTP secret, stored sealed until confirmed; shown once."""
        self._require_session(principal)
        ctx = self.ctx
        member = await ctx.repository.get(principal.tenant_id, Member, principal.member_id)
        if member.mfa_enabled:
            raise ConflictError("MFA is already enabled; disable it first")
        secret = new_totp_secret()
        async with tenant_transaction(ctx.pool, principal.tenant_id) as conn:
            version, key = await ctx.keyring.primary_tenant_key(conn, principal.tenant_id)
            sealed = seal(
                key,
                secret.encode(),
                object_aad(principal.tenant_id, f"totp:{principal.member_id}", version),
            )
            await conn.execute(
                "UPDATE account SET totp_sealed = $3, totp_key_version = $4, "
                "totp_confirmed = false, totp_last_step = 0 "
                "WHERE tenant_id = $1 AND member_id = $2",
                principal.tenant_id,
                principal.member_id,
                sealed,
                version,
            )
        account = member.email or str(principal.member_id)
        return {"secret": secret, "otpauth_uri": totp_uri(secret, account=account, issuer=issuer)}

    async def confirm_mfa(self, principal: Principal, code: str) -> Written:
        """Turn MFA on with a first code; returns the first set of recovery codes."""
        self._require_session(principal)
        ctx = self.ctx
        tenant_id = principal.tenant_id
        member = await ctx.repository.get(tenant_id, Member, principal.member_id)
        async with tenant_transaction(ctx.pool, tenant_id, readonly=True) as conn:
            found = await conn.fetchrow(_ACCOUNT_SQL + "a.member_id = $2", tenant_id, member.id)
            assert found is not None
            account = _account(found)
            await self._check_throttle(conn, tenant_id, account.email_key)
            row = await conn.fetchrow(
                "SELECT totp_sealed, totp_key_version, totp_last_step FROM account "
                "WHERE tenant_id = $1 AND member_id = $2",
                tenant_id,
                member.id,
            )
            step = None
            if row is not None and row["totp_sealed"] is not None:
                secret = await self._open_totp(conn, tenant_id, member.id, row)
                step = totp_match(secret, code, at=ctx.now(), after_step=row["totp_last_step"])
        if step is None:
            await self._fail(
                tenant_id,
                account.email_key,
                AuthEvent.MFA_FAILED,
                FailureReason.CODE,
                member_id=member.id,
                kind="mfa",
                personal={},
            )
        assert step is not None
        member.enroll_mfa()
        codes = new_recovery_codes()
        member.generate_recovery_codes(len(codes))

        async def effect(conn: asyncpg.Connection) -> None:
            moved = await conn.execute(
                "UPDATE account SET totp_confirmed = true, totp_last_step = $3 "
                "WHERE tenant_id = $1 AND member_id = $2 AND totp_last_step < $3 "
                "AND totp_sealed IS NOT NULL",
                tenant_id,
                member.id,
                step,
            )
            if moved != "UPDATE 1":
                raise UnauthenticatedError(GENERIC_LOGIN_FAILURE)
            await _replace_recovery_codes(conn, tenant_id, member.id, codes)

        result = await ctx.repository.save(
            tenant_id, member, command_id=uuid4(), actor=principal.actor, effect=effect
        )
        return Written(position_of(result), {"recovery_codes": codes})

    async def disable_mfa(self, principal: Principal) -> Written:
        """(step-up) MFA off: the secret and the recovery codes are deleted."""
        self._require_session(principal)
        ctx = self.ctx
        member = await ctx.repository.get(principal.tenant_id, Member, principal.member_id)
        member.disable_mfa()

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE account SET totp_sealed = NULL, totp_key_version = NULL, "
                "totp_confirmed = false WHERE tenant_id = $1 AND member_id = $2",
                principal.tenant_id,
                member.id,
            )
            await conn.execute(
                "DELETE FROM recovery_code WHERE tenant_id = $1 AND member_id = $2",
                principal.tenant_id,
                member.id,
            )

        result = await ctx.repository.save(
            principal.tenant_id, member, command_id=uuid4(), actor=principal.actor, effect=effect
        )
        return Written(position_of(result))

    async def regenerate_recovery_codes(self, principal: Principal) -> Written:
        """(step-up) Ten new codes; the old set stops working."""
        self._require_session(principal)
        ctx = self.ctx
        member = await ctx.repository.get(principal.tenant_id, Member, principal.member_id)
        if not member.mfa_enabled:
            raise ConflictError("recovery codes come with MFA; enable MFA first")
        codes = new_recovery_codes()
        member.generate_recovery_codes(len(codes))

        async def effect(conn: asyncpg.Connection) -> None:
            await _replace_recovery_codes(conn, principal.tenant_id, member.id, codes)

        result = await ctx.repository.save(
            principal.tenant_id, member, command_id=uuid4(), actor=principal.actor, effect=effect
        )
        return Written(position_of(result), {"recovery_codes": codes})


def _subject(tenant_id: UUID, member_id: UUID | None) -> str:
    """The data subject of an attempt's personal fields: the member, or the anonymous one."""
    return Member.stream_for(member_id) if member_id else anonymous_subject(tenant_id)


async def _store_password(
    conn: asyncpg.Connection, tenant_id: UUID, member_id: UUID, phc: str
) -> None:
    await conn.execute(
        "UPDATE account SET password_phc = $3, updated_at = now() "
        "WHERE tenant_id = $1 AND member_id = $2",
        tenant_id,
        member_id,
        phc,
    )


async def _end_session(
    conn: asyncpg.Connection, tenant_id: UUID, session_id: UUID, now: datetime
) -> None:
    await conn.execute(
        "UPDATE session SET ended_at = $3 WHERE tenant_id = $1 AND session_id = $2 "
        "AND ended_at IS NULL",
        tenant_id,
        session_id,
        now,
    )


async def _consume_factor(
    conn: asyncpg.Connection, tenant_id: UUID, member_id: UUID, matched: int | bytes, now: datetime
) -> None:
    """Use a TOTP step or a recovery code exactly once, even under concurrent attempts."""
    if isinstance(matched, bytes):
        status = await conn.execute(
            "UPDATE recovery_code SET used_at = $4 WHERE tenant_id = $1 AND member_id = $2 "
            "AND code_hash = $3 AND used_at IS NULL",
            tenant_id,
            member_id,
            matched,
            now,
        )
    else:
        status = await conn.execute(
            "UPDATE account SET totp_last_step = $3 WHERE tenant_id = $1 AND member_id = $2 "
            "AND totp_last_step < $3",
            tenant_id,
            member_id,
            matched,
        )
    if status != "UPDATE 1":
        raise UnauthenticatedError(GENERIC_LOGIN_FAILURE)


async def _replace_recovery_codes(
    conn: asyncpg.Connection, tenant_id: UUID, member_id: UUID, codes: list[str]
) -> None:
    await conn.execute(
        "DELETE FROM recovery_code WHERE tenant_id = $1 AND member_id = $2", tenant_id, member_id
    )
    await conn.executemany(
        "INSERT INTO recovery_code (tenant_id, member_id, code_hash) VALUES ($1, $2, $3)",
        [(tenant_id, member_id, recovery_code_hash(c)) for c in codes],
    )
