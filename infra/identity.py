"""Tenants and members: the command handlers, and what they share with sessions and keys.

A command handler loads aggregates, lets them decide, and appends their events
with an *effect*: the identity tables (infra/sql/0013_identity.sql) change in
the same transaction as the events, so what authentication reads always agrees
with the log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from domain import membership
from domain.apikey import ApiKey
from domain.audit import AuthEvent, auth_stream
from domain.errors import ConflictError, UnauthenticatedError
from domain.member import Member, check_email
from domain.permissions import Permission, check_may_assign, permissions_of
from domain.roles import Role
from domain.tenant import Tenant, check_slug
from infra.credentials import (
    INVITE_PREFIX,
    PasswordHasher,
    derive_key,
    keyed_hash,
    new_token,
    sha256,
    token_shape,
)
from infra.db import tenant_transaction
from infra.eventstore import Actor, AppendResult, Effect, EventStore, NewEvent
from infra.keyring import Keyring
from infra.repository import EventRegistry, Repository

Clock = Callable[[], datetime]
INVITE_LIFETIME = timedelta(days=7)
_INVITE = token_shape(INVITE_PREFIX)


def utc_now() -> datetime:
    return datetime.now(UTC)


class SlugTakenError(ConflictError):
    pass


class EmailTakenError(ConflictError):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a member through a session or one of their API keys."""

    tenant_id: UUID
    member_id: UUID
    role: Role
    permissions: frozenset[Permission]
    kind: str
    """``session`` or ``api_key``."""
    credential_id: UUID
    authenticated_at: datetime | None = None
    """When the session's holder last proved who they are (sessions only)."""

    @property
    def actor(self) -> Actor:
        if self.kind == "api_key":
            return Actor("api_key", str(self.credential_id))
        return Actor("user", str(self.member_id))

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.credential_id}"


@dataclass(frozen=True, slots=True)
class Written:
    """What a command handler returns: its result and the tenant log position."""

    position: int
    values: Mapping[str, Any] = field(default_factory=dict)


def position_of(result: AppendResult | None) -> int:
    return 0 if result is None else result.last_seq


class IdentityContext:
    """What every identity handler needs; built once per process by the runtime."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        keyring: Keyring,
        master_key: bytes,
        *,
        hasher: PasswordHasher | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.pool = pool
        self.store = store
        self.keyring = keyring
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        self.repository = Repository(store, EventRegistry([Tenant, Member, ApiKey]))
        self.api_key_secret = derive_key(master_key, "strongroom api key hmac v1")
        self.platform_secret = derive_key(master_key, "strongroom platform sealing v1")

    def now(self) -> datetime:
        return self.clock()

    async def email_key(self, conn: asyncpg.Connection, tenant_id: UUID, email: str) -> bytes:
        """HMAC of the lower-cased address under a key derived from the tenant's first key."""
        tenant_key = await self.keyring.tenant_key(conn, tenant_id, 1)
        return keyed_hash(derive_key(tenant_key, "email lookup"), email.strip().lower())

    async def audit(
        self,
        tenant_id: UUID,
        event: AuthEvent,
        data: Mapping[str, Any],
        *,
        actor: Actor,
        personal: Mapping[str, str] | None = None,
        subject: str | None = None,
        effect: Effect | None = None,
    ) -> AppendResult:
        stream = auth_stream(tenant_id)
        return await self.store.append(
            tenant_id,
            [
                NewEvent(
                    stream=stream,
                    type=event.value,
                    data=dict(data),
                    personal=dict(personal or {}),
                    subject=subject if personal else None,
                )
            ],
            expected={stream: None},
            command_id=uuid4(),
            actor=actor,
            effect=effect,
        )


def _unique(error: type[ConflictError], message: str) -> Callable[[Effect], Effect]:
    """Wrap an effect so a unique violation reads as a conflict the caller understands."""

    def wrap(effect: Effect) -> Effect:
        async def run(conn: asyncpg.Connection) -> None:
            try:
                await effect(conn)
            except asyncpg.UniqueViolationError:
                raise error(message) from None

        return run

    return wrap


class Tenants:
    """Platform commands (tenant creation) and tenant settings."""

    def __init__(self, ctx: IdentityContext) -> None:
        self.ctx = ctx

    async def create(self, name: str, slug: str, owner_email: str) -> Written:
        """A tenant, and its first owner's invitation (the one-time token is returned)."""
        ctx = self.ctx
        tenant_id = uuid4()
        tenant = Tenant.create(name, check_slug(slug), tenant_id=tenant_id)
        owner = Member.invite(tenant_id, check_email(owner_email), Role.OWNER)
        if await ctx.pool.fetchval("SELECT tenant_by_slug($1)", slug) is not None:
            raise SlugTakenError("that slug is taken")
        async with tenant_transaction(ctx.pool, tenant_id) as conn:
            await ctx.keyring.primary_tenant_key(conn, tenant_id)
            email_key = await ctx.email_key(conn, tenant_id, owner_email)
        token = new_token(INVITE_PREFIX)
        now = ctx.now()

        @_unique(SlugTakenError, "that slug is taken")
        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO tenant_directory (tenant_id, slug) VALUES ($1, $2)", tenant_id, slug
            )
            await _insert_invite(conn, tenant_id, owner.id, email_key, token, now)

        result = await ctx.repository.save(
            tenant_id,
            tenant,
            owner,
            command_id=uuid4(),
            actor=Actor("platform", "admin"),
            effect=effect,
        )
        return Written(
            position_of(result),
            {"tenant_id": tenant_id, "owner_member_id": owner.id, "invite_token": token},
        )

    async def settings(self, tenant_id: UUID) -> Tenant:
        return await self.ctx.repository.get(tenant_id, Tenant, tenant_id)

    async def change_settings(
        self,
        principal: Principal,
        *,
        mfa_required: bool | None,
        session_idle_minutes: int | None,
        session_absolute_hours: int | None,
    ) -> Written:
        tenant = await self.settings(principal.tenant_id)
        tenant.change_settings(
            mfa_required=mfa_required,
            session_idle_minutes=session_idle_minutes,
            session_absolute_hours=session_absolute_hours,
        )

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE tenant_directory SET mfa_required = $2, session_idle_minutes = $3, "
                "session_absolute_hours = $4 WHERE tenant_id = $1",
                tenant.id,
                tenant.mfa_required,
                tenant.session_idle_minutes,
                tenant.session_absolute_hours,
            )

        result = await self.ctx.repository.save(
            principal.tenant_id,
            tenant,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result))


async def _insert_invite(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    member_id: UUID,
    email_key: bytes,
    token: str,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO member_email (tenant_id, email_key, member_id) VALUES ($1, $2, $3)",
        tenant_id,
        email_key,
        member_id,
    )
    await conn.execute(
        "INSERT INTO invite (tenant_id, member_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
        tenant_id,
        member_id,
        sha256(token),
        now + INVITE_LIFETIME,
    )


async def _sync_account(conn: asyncpg.Connection, member: Member) -> None:
    """The member's role and status, as the log now says, where authentication reads them."""
    await conn.execute(
        "UPDATE account SET role = $3, active = $4, updated_at = now() "
        "WHERE tenant_id = $1 AND member_id = $2",
        member.tenant_id,
        member.id,
        member.role.value,
        member.active,
    )
    if not member.active:
        await conn.execute(
            "UPDATE session SET ended_at = now() WHERE tenant_id = $1 AND member_id = $2 "
            "AND ended_at IS NULL",
            member.tenant_id,
            member.id,
        )


class Members:
    """Inviting members, their joining, roles and status."""

    def __init__(self, ctx: IdentityContext) -> None:
        self.ctx = ctx

    async def _load(self, tenant_id: UUID, member_id: UUID) -> tuple[Tenant, Member]:
        repo = self.ctx.repository
        return await repo.get(tenant_id, Tenant, tenant_id), await repo.get(
            tenant_id, Member, member_id
        )

    async def invite(self, principal: Principal, email: str, role: Role) -> Written:
        ctx = self.ctx
        check_may_assign(principal.role, None, role)
        member = Member.invite(principal.tenant_id, check_email(email), role)
        async with tenant_transaction(ctx.pool, principal.tenant_id) as conn:
            email_key = await ctx.email_key(conn, principal.tenant_id, email)
        token = new_token(INVITE_PREFIX)
        now = ctx.now()

        @_unique(EmailTakenError, "a member with that e-mail address exists")
        async def effect(conn: asyncpg.Connection) -> None:
            await _insert_invite(conn, principal.tenant_id, member.id, email_key, token, now)

        result = await ctx.repository.save(
            principal.tenant_id,
            member,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result), {"member_id": member.id, "invite_token": token})

    async def accept_invite(self, token: str, password: str) -> Written:
        """Join with a one-time invite token, setting a password."""
        ctx = self.ctx
        phc = await ctx.hasher.hash(password)  # refuses a weak password before any lookup
        if not _INVITE.fullmatch(token):
            raise UnauthenticatedError("the invitation is invalid or expired")
        token_hash = sha256(token)
        tenant_id = await ctx.pool.fetchval("SELECT credential_tenant('invite', $1)", token_hash)
        if tenant_id is None:
            raise UnauthenticatedError("the invitation is invalid or expired")
        async with tenant_transaction(ctx.pool, tenant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                "SELECT member_id FROM invite WHERE tenant_id = $1 AND token_hash = $2 "
                "AND used_at IS NULL AND expires_at > $3",
                tenant_id,
                token_hash,
                ctx.now(),
            )
        if row is None:
            raise UnauthenticatedError("the invitation is invalid or expired")
        tenant, member = await self._load(tenant_id, row["member_id"])
        membership.join(tenant, member)

        async def effect(conn: asyncpg.Connection) -> None:
            used = await conn.execute(
                "UPDATE invite SET used_at = $3 WHERE tenant_id = $1 AND member_id = $2 "
                "AND used_at IS NULL",
                tenant_id,
                member.id,
                ctx.now(),
            )
            if used != "UPDATE 1":
                raise UnauthenticatedError("the invitation is invalid or expired")
            await conn.execute(
                "INSERT INTO account (tenant_id, member_id, role, active, password_phc) "
                "VALUES ($1, $2, $3, $4, $5)",
                tenant_id,
                member.id,
                member.role.value,
                member.active,
                phc,
            )

        result = await ctx.repository.save(
            tenant_id,
            tenant,
            member,
            command_id=uuid4(),
            actor=Actor("user", str(member.id)),
            effect=effect,
        )
        return Written(position_of(result), {"tenant_id": tenant_id, "member_id": member.id})

    async def change_role(self, principal: Principal, member_id: UUID, role: Role) -> Written:
        tenant, member = await self._load(principal.tenant_id, member_id)
        membership.change_role(tenant, member, role, by=principal.role)
        return await self._save(principal, tenant, member)

    async def deactivate(self, principal: Principal, member_id: UUID) -> Written:
        tenant, member = await self._load(principal.tenant_id, member_id)
        membership.deactivate(tenant, member, by=principal.role)
        return await self._save(principal, tenant, member)

    async def reactivate(self, principal: Principal, member_id: UUID) -> Written:
        tenant, member = await self._load(principal.tenant_id, member_id)
        membership.reactivate(tenant, member, by=principal.role)
        return await self._save(principal, tenant, member)

    async def _save(self, principal: Principal, tenant: Tenant, member: Member) -> Written:
        async def effect(conn: asyncpg.Connection) -> None:
            await _sync_account(conn, member)

        result = await self.ctx.repository.save(
            principal.tenant_id,
            tenant,
            member,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result))


def effective_permissions(
    role: Role, scopes: frozenset[Permission] | None
) -> frozenset[Permission]:
    """A session holds its role's permissions; an API key, its scopes within them."""
    granted = permissions_of(role)
    return granted if scopes is None else granted & scopes
