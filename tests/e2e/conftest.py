"""The HTTP API over the real embedded stack, with helpers to build tenants and members.

One app (and its runtime: pool, event store, publisher, the members projection
runner) serves the whole module; every test makes its own tenants, so tests
never see each other's data. ``Clock`` lets a test move the identity services'
time (session expiry) without sleeping.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pyotp
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.roles import Role
from infra.eventstore import EventStore
from infra.notary import Notary
from infra.notes import Signer
from infra.ratelimit import Gcra, RateLimits
from infra.runtime import Endpoints, Runtime, Workers
from infra.services import create_platform_token
from infra.settings import Settings
from projections import ALL as ALL_PROJECTIONS
from tests.conftest import LOG_HOST, Database

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


class Clock:
    """The identity services' clock: real time plus an offset a test can move."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class Api:
    client: AsyncTestClient  # type: ignore[type-arg]
    app: Litestar
    platform_token: str
    clock: Clock

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, path, headers=headers, **kwargs)


NOTARY_KEY = Signer.generate(LOG_HOST)
"""The notary key of the e2e tests' checkpoints (the apps under test run no notary)."""


async def sign_checkpoint(pool: asyncpg.Pool, store: EventStore, tenant_id: str) -> int:
    """Sign a checkpoint of the tenant's log now, as the notary's next round would."""
    outcome = await Notary(pool, store, [NOTARY_KEY]).sign_tenant(UUID(tenant_id))
    assert outcome.refused is None and outcome.size is not None, outcome
    return outcome.size


@dataclass
class Member:
    member_id: str
    email: str
    role: Role
    token: str
    """A session token, authenticated at login (so step-up routes work for 5 minutes)."""
    password: str = PASSWORD
    totp_secret: str | None = None


@dataclass
class TenantWorld:
    tenant_id: str
    slug: str
    members: dict[Role, Member] = field(default_factory=dict)

    @property
    def owner(self) -> Member:
        return self.members[Role.OWNER]


@pytest.fixture(scope="module")
async def api(database: Database, nats_url: str, master_key: bytes) -> AsyncIterator[Api]:
    settings = Settings.from_env({}, log_host=LOG_HOST)
    endpoints = Endpoints(database.app_url, nats_url, master_key)
    clock = Clock()

    async def open_runtime() -> Runtime:
        runtime = await Runtime.open(settings, endpoints, Workers(projections=ALL_PROJECTIONS))
        runtime.identity.ctx.clock = clock
        return runtime

    conn = await asyncpg.connect(database.owner_url)
    try:
        token = await create_platform_token(conn, only_if_none=False)
    finally:
        await conn.close()
    assert token is not None
    app = create_app(open_runtime)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        yield Api(client, app, token, clock)


@pytest.fixture(scope="module")
def generous_rate_limits(api: Api) -> Iterator[None]:
    """The test client sends every request from one address and one principal per
    member; a module that is not testing the limits raises them (they keep their own
    tests in test_auth_security and test_http_problems)."""
    identity = api.runtime.identity
    saved = identity.limits
    identity.limits = RateLimits(
        principal=Gcra("principal", rate=100_000, period=60),
        anonymous_ip=Gcra("ip", rate=100_000, period=60),
        login_ip=Gcra("login-ip", rate=100_000, period=60),
    )
    yield
    identity.limits = saved


async def create_tenant(api: Api, *, with_roles: tuple[Role, ...] = tuple(Role)) -> TenantWorld:
    """A tenant whose owner joined and logged in, and one member per role in ``with_roles``."""
    n = next(_counter)
    slug = f"t{n}-{datetime.now(UTC).strftime('%H%M%S%f')}"
    response = await api.request(
        "POST",
        "/v1/tenants",
        api.platform_token,
        json={"name": f"Tenant {n}", "slug": slug, "owner_email": f"owner@{slug}.example"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    world = TenantWorld(created["tenant_id"], slug)
    owner = await join(api, slug, created["invite_token"], f"owner@{slug}.example", Role.OWNER)
    world.members[Role.OWNER] = owner
    for role in with_roles:
        if role is Role.OWNER:
            continue
        world.members[role] = await invite_and_join(api, world, role)
    return world


async def join(api: Api, slug: str, invite_token: str, email: str, role: Role) -> Member:
    accepted = await api.request(
        "POST", "/v1/invites/accept", json={"token": invite_token, "password": PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    token = await login(api, slug, email)
    return Member(accepted.json()["member_id"], email, role, token)


async def invite_and_join(
    api: Api, world: TenantWorld, role: Role, email: str | None = None
) -> Member:
    email = email or f"{role.value}{next(_counter)}@{world.slug}.example"
    invited = await api.request(
        "POST", "/v1/members", world.owner.token, json={"email": email, "role": role.value}
    )
    assert invited.status_code == 201, invited.text
    return await join(api, world.slug, invited.json()["invite_token"], email, role)


async def login(api: Api, slug: str, email: str, password: str = PASSWORD) -> str:
    response = await api.request(
        "POST", "/v1/auth/login", json={"tenant": slug, "email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "authenticated", body
    return str(body["token"])


async def issue_api_key(api: Api, member: Member, scopes: list[str]) -> dict[str, Any]:
    response = await api.request(
        "POST", "/v1/api-keys", member.token, json={"name": "ci", "scopes": scopes}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def enroll_totp(api: Api, member: Member) -> list[str]:
    """Turn TOTP on for ``member``; returns the recovery codes."""
    started = await api.request("POST", "/v1/account/mfa", member.token)
    assert started.status_code == 200, started.text
    member.totp_secret = started.json()["secret"]
    code = pyotp.TOTP(member.totp_secret).at(api.clock())
    confirmed = await api.request(
        "POST", "/v1/account/mfa/confirm", member.token, json={"code": code}
    )
    assert confirmed.status_code == 200, confirmed.text
    codes: list[str] = confirmed.json()["recovery_codes"]
    return codes
