"""API keys: issue (shown once), rotate with an overlap, revoke, list, authenticate.

A key is ``sr_live_<192 random bits, base62>_<crc32, base62>``; its checksum is
checked before any database lookup, and only its HMAC-SHA256 under a key
derived from the master key is stored. Revocation and the member's role are
read on every request, so both take effect on the next one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson

from domain.apikey import ApiKey, ApiKeyStateError
from domain.errors import NotFoundError, UnauthenticatedError
from domain.permissions import Permission, permissions_of
from domain.roles import Role
from infra.credentials import (
    api_key_checksum_ok,
    api_key_display_prefix,
    keyed_hash,
    new_api_key,
)
from infra.db import call_for_credential, tenant_transaction
from infra.eventstore import Effect
from infra.identity import IdentityContext, Principal, Written, effective_permissions, position_of

LAST_USED_GRANULARITY = timedelta(seconds=60)
_KNOWN_SCOPES = frozenset(p.value for p in Permission)


class ApiKeys:
    def __init__(self, ctx: IdentityContext) -> None:
        self.ctx = ctx

    def _hmac(self, key: str) -> bytes:
        return keyed_hash(self.ctx.api_key_secret, key)

    async def authenticate(self, key: str) -> Principal:
        """The principal of an API key; the checksum is checked before any query, then
        one statement (infra/sql/0015) finds, checks and touches the key."""
        if not api_key_checksum_ok(key):
            raise UnauthenticatedError("no valid API key")
        tenant_id, raw = await call_for_credential(
            self.ctx.pool, "apikey", self._hmac(key), self.ctx.now(), LAST_USED_GRANULARITY
        )
        if tenant_id is None or raw is None:
            raise UnauthenticatedError("no valid API key")
        found = orjson.loads(str(raw))
        role = Role(found["role"])
        scopes = frozenset(Permission(s) for s in found["scopes"] if s in _KNOWN_SCOPES)
        permissions = effective_permissions(role, scopes)
        if found["mfa_required"] and not found["totp_confirmed"]:
            permissions = frozenset()
        return Principal(
            tenant_id=tenant_id,
            member_id=UUID(found["member_id"]),
            role=role,
            permissions=permissions,
            kind="api_key",
            credential_id=UUID(found["credential_id"]),
        )

    async def issue(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: frozenset[Permission],
        expires_at: datetime | None,
        rotated_from: UUID | None = None,
    ) -> tuple[ApiKey, str]:
        key = new_api_key()
        aggregate = ApiKey.issue(
            member_id=principal.member_id,
            issuer_role=principal.role,
            name=name,
            prefix=api_key_display_prefix(key),
            scopes=scopes,
            expires_at=expires_at,
            now=self.ctx.now(),
            rotated_from=rotated_from,
        )
        return aggregate, key

    def _insert(self, principal: Principal, aggregate: ApiKey, key: str) -> Effect:
        now = self.ctx.now()

        async def insert(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO api_key (tenant_id, key_id, member_id, token_hmac, name, prefix, "
                "scopes, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                principal.tenant_id,
                aggregate.id,
                aggregate.member_id,
                self._hmac(key),
                aggregate.name,
                aggregate.prefix,
                sorted(aggregate.scopes),
                now,
                aggregate.expires_at,
            )

        return insert

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: frozenset[Permission],
        expires_at: datetime | None,
    ) -> Written:
        aggregate, key = await self.issue(
            principal, name=name, scopes=scopes, expires_at=expires_at
        )
        result = await self.ctx.repository.save(
            principal.tenant_id,
            aggregate,
            command_id=uuid4(),
            actor=principal.actor,
            effect=self._insert(principal, aggregate, key),
        )
        return Written(position_of(result), {"key": key, "aggregate": aggregate})

    async def _own(self, principal: Principal, key_id: UUID, *, any_member: bool) -> ApiKey:
        try:
            aggregate = await self.ctx.repository.get(principal.tenant_id, ApiKey, key_id)
        except NotFoundError:
            raise NotFoundError(f"no API key {key_id}") from None
        if aggregate.member_id != principal.member_id and not any_member:
            raise NotFoundError(f"no API key {key_id}")
        return aggregate

    async def rotate(self, principal: Principal, key_id: UUID, overlap: timedelta) -> Written:
        """A successor key with the same scopes; this one stops after ``overlap``."""
        old = await self._own(principal, key_id, any_member=False)
        if not old.usable_at(self.ctx.now()):  # before the successor inherits a past expiry
            raise ApiKeyStateError("a revoked or expired key cannot be rotated")
        successor, key = await self.issue(
            principal,
            name=old.name,
            scopes=old.scopes & permissions_of(principal.role),
            expires_at=old.expires_at,
            rotated_from=old.id,
        )
        old.rotate(successor.id, overlap=overlap, now=self.ctx.now())
        insert = self._insert(principal, successor, key)

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE api_key SET expires_at = $3 WHERE tenant_id = $1 AND key_id = $2",
                principal.tenant_id,
                old.id,
                old.expires_at,
            )
            await insert(conn)

        result = await self.ctx.repository.save(
            principal.tenant_id,
            old,
            successor,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result), {"key": key, "aggregate": successor})

    async def revoke(self, principal: Principal, key_id: UUID) -> Written:
        any_member = Permission.APIKEYS_MANAGE in principal.permissions
        aggregate = await self._own(principal, key_id, any_member=any_member)
        aggregate.revoke()
        now = self.ctx.now()

        async def effect(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE api_key SET revoked_at = $3 WHERE tenant_id = $1 AND key_id = $2",
                principal.tenant_id,
                aggregate.id,
                now,
            )

        result = await self.ctx.repository.save(
            principal.tenant_id,
            aggregate,
            command_id=uuid4(),
            actor=principal.actor,
            effect=effect,
        )
        return Written(position_of(result))

    async def list(
        self, principal: Principal, *, every_member: bool = False
    ) -> list[dict[str, Any]]:
        async with tenant_transaction(self.ctx.pool, principal.tenant_id, readonly=True) as conn:
            rows = await conn.fetch(
                "SELECT key_id, member_id, name, prefix, scopes, created_at, expires_at, "
                "revoked_at, last_used_at FROM api_key WHERE tenant_id = $1 "
                "AND ($2 OR member_id = $3) ORDER BY created_at, key_id",
                principal.tenant_id,
                every_member,
                principal.member_id,
            )
        return [dict(r) for r in rows]
