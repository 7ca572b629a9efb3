"""The identity services of one process, built once by the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from infra.apikeys import ApiKeys
from infra.credentials import PLATFORM_PREFIX, new_token, sha256, token_shape
from infra.eventstore import EventStore
from infra.idempotency import IdempotencyStore
from infra.identity import Clock, IdentityContext, Members, Tenants, utc_now
from infra.keyring import Keyring
from infra.ratelimit import RateLimits
from infra.sessions import Sessions

_PLATFORM = token_shape(PLATFORM_PREFIX)


@dataclass(slots=True)
class IdentityServices:
    ctx: IdentityContext
    tenants: Tenants
    members: Members
    sessions: Sessions
    api_keys: ApiKeys
    idempotency: IdempotencyStore
    limits: RateLimits

    @classmethod
    def build(
        cls,
        pool: asyncpg.Pool,
        store: EventStore,
        keyring: Keyring,
        master_key: bytes,
        *,
        clock: Clock = utc_now,
        rate_limit_per_minute: int = 6000,
    ) -> IdentityServices:
        ctx = IdentityContext(pool, store, keyring, master_key, clock=clock)
        return cls(
            ctx=ctx,
            tenants=Tenants(ctx),
            members=Members(ctx),
            sessions=Sessions(ctx),
            api_keys=ApiKeys(ctx),
            idempotency=IdempotencyStore(pool, keyring, ctx.platform_secret),
            limits=RateLimits.default(rate_limit_per_minute),
        )

    async def platform_token_valid(self, token: str) -> bool:
        if not _PLATFORM.fullmatch(token):
            return False
        found = await self.ctx.pool.fetchval(
            "SELECT true FROM platform_token WHERE token_hash = $1 AND revoked_at IS NULL",
            sha256(token),
        )
        return bool(found)


async def create_platform_token(owner: asyncpg.Connection, *, only_if_none: bool) -> str | None:
    """A new platform administrator token (its hash stored; the token returned once).

    With ``only_if_none``, nothing is created when a live token exists (``up``'s
    first start). ``owner``: a connection as the owner role.
    """
    async with owner.transaction():
        await owner.execute("LOCK TABLE platform_token IN EXCLUSIVE MODE")
        if only_if_none and await owner.fetchval(
            "SELECT true FROM platform_token WHERE revoked_at IS NULL LIMIT 1"
        ):
            return None
        token = new_token(PLATFORM_PREFIX)
        await owner.execute("INSERT INTO platform_token (token_hash) VALUES ($1)", sha256(token))
    return token
