"""`strongroom up --demo`: a demo tenant with one member per role, to try everything at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from uuid import UUID

from domain.permissions import permissions_of
from domain.roles import Role
from infra.identity import Principal
from infra.runtime import Endpoints, Runtime
from infra.settings import Settings

DEMO_SLUG = "demo"


@dataclass(frozen=True, slots=True)
class DemoMember:
    role: Role
    email: str
    password: str


@dataclass(frozen=True, slots=True)
class Demo:
    tenant_id: UUID
    members: list[DemoMember]
    owner_api_key: str


async def create_demo(settings: Settings, endpoints: Endpoints) -> Demo | None:
    """The demo tenant, or None if it exists already (its passwords were shown then)."""
    runtime = await Runtime.open(settings, endpoints)
    try:
        identity = runtime.identity
        if await runtime.pool.fetchval("SELECT tenant_by_slug($1)", DEMO_SLUG) is not None:
            return None
        domain_part = f"{DEMO_SLUG}.strongroom.localhost"
        created = await identity.tenants.create("Demo", DEMO_SLUG, f"owner@{domain_part}")
        members = [DemoMember(Role.OWNER, f"owner@{domain_part}", _password())]
        joined = await identity.members.accept_invite(
            created.values["invite_token"], members[0].password
        )
        tenant_id: UUID = joined.values["tenant_id"]
        owner = Principal(
            tenant_id=tenant_id,
            member_id=joined.values["member_id"],
            role=Role.OWNER,
            permissions=permissions_of(Role.OWNER),
            kind="session",
            credential_id=joined.values["member_id"],
        )
        for role in Role:
            if role is Role.OWNER:
                continue
            member = DemoMember(role, f"{role.value}@{domain_part}", _password())
            invited = await identity.members.invite(owner, member.email, role)
            await identity.members.accept_invite(invited.values["invite_token"], member.password)
            members.append(member)
        key = await identity.api_keys.create(
            owner, name="demo", scopes=permissions_of(Role.OWNER), expires_at=None
        )
        return Demo(tenant_id, members, key.values["key"])
    finally:
        await runtime.close()


def _password() -> str:
    return secrets.token_urlsafe(12)
