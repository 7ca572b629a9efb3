"""Every route of the app in one table: what it needs, and how to call it so it succeeds.

The access matrix (tests/e2e/test_access_matrix.py) is driven by :data:`ROUTES`.
Each :class:`Route` says the permission it needs (or that it is public or for the
platform administrator only), whether it needs a recent authentication (step-up)
or an interactive session, the status it answers when it works, and a *prepare*
function. Given a :class:`Cell` (a tenant, the caller's role and credential, and
whether the cell is expected to be allowed), ``prepare`` returns the
:class:`Call` that would succeed: path parameters naming this tenant's objects,
a valid body, and, when the route changes the caller's own account or session,
a credential of a member created for that cell so cells never interfere.
Expensive preconditions (joining, MFA) are prepared only for allowed cells; a
denied cell is refused before any of them would matter.

A new route must join this table: the matrix fails when a route of the app is
missing here, or declares other access than the table says.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyotp

from api.access import Access
from api.positions import MIN_POSITION
from domain.permissions import Permission
from domain.roles import Role
from tests.e2e.conftest import PASSWORD, Api, Member, TenantWorld, enroll_totp, join, login

_serial = itertools.count(1)
_PARAM = re.compile(r"\{(\w+):\w+\}")


@dataclass
class World:
    """A tenant with one joined member per role, and an API key of its owner."""

    tenant: TenantWorld
    owner_key_id: str
    checkpoint_size: int = 0
    """The size of the tenant's signed checkpoint (the ledger routes read it)."""

    @property
    def owner(self) -> Member:
        return self.tenant.owner

    def member(self, role: Role) -> Member:
        return self.tenant.members[role]


@dataclass(frozen=True)
class Cell:
    api: Api
    world: World
    role: Role
    """The caller's current role."""
    holder: Member
    """The member whose credential the cell uses."""
    credential: str | None
    """A session token or an API key of ``holder`` (None: no credential at all)."""
    allowed: bool


@dataclass(frozen=True)
class Call:
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None
    """Replaces the cell's credential (a fresh session, or a fresh member's)."""
    status: int | None = None
    """Replaces the route's success status where the domain forbids the act for this role."""
    reason: str | None = None
    """The problem detail expected with such a status."""


Prepare = Callable[[Cell], Awaitable[Call]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    """The path template as litestar reports it, e.g. ``/v1/members/{member_id:uuid}``."""
    status: int
    prepare: Prepare
    permission: Permission | None = None
    step_up: bool = False
    session_only: bool = False
    public: bool = False
    platform: bool = False
    probe: bool = False
    """A health or metrics probe: public and not rate-limited."""
    endless: bool = False
    """A stream that never ends, which the test client would wait for forever: the matrix
    only calls it in ways that end (refused). tests/e2e/test_events_api.py streams it."""

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def needs_session(self) -> bool:
        return self.session_only or self.step_up

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(_PARAM.findall(self.template))

    @property
    def access(self) -> Access:
        return Access(
            permission=self.permission,
            public=self.public,
            platform=self.platform,
            step_up=self.step_up,
            session_only=self.needs_session,
            rate_limited=not self.probe,
        )

    def path(self, params: Mapping[str, str]) -> str:
        return _PARAM.sub(lambda m: params[m.group(1)], self.template)


# ---- helpers ----------------------------------------------------------------------------


def unique_email(world: World, label: str = "member") -> str:
    """An address no other helper hands out (conftest numbers its own as ``<role><n>@``)."""
    return f"matrix.{label}.{next(_serial)}@{world.tenant.slug}.example"


@dataclass(frozen=True)
class Invited:
    member_id: str
    email: str
    invite_token: str
    position: str


async def invite(api: Api, world: World, role: Role) -> Invited:
    """A member invited by the owner (not joined: no password hashing, so cheap)."""
    email = unique_email(world, role.value)
    response = await api.request(
        "POST", "/v1/members", world.owner.token, json={"email": email, "role": role.value}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Invited(
        body["member_id"], email, body["invite_token"], response.headers["strongroom-position"]
    )


async def fresh_member(api: Api, world: World, role: Role) -> Member:
    """A member of ``role`` who joined and logged in just now (for one cell only)."""
    invited = await invite(api, world, role)
    return await join(api, world.tenant.slug, invited.invite_token, invited.email, role)


async def issue_key(api: Api, member: Member, scopes: list[str]) -> dict[str, Any]:
    response = await api.request(
        "POST", "/v1/api-keys", member.token, json={"name": "matrix", "scopes": scopes}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def deactivate(api: Api, world: World, member_id: str) -> None:
    response = await api.request("POST", f"/v1/members/{member_id}/deactivate", world.owner.token)
    assert response.status_code == 204, response.text


# ---- prepare functions ------------------------------------------------------------------


async def _as_is(cell: Cell) -> Call:
    return Call()


async def _first_event(cell: Cell) -> Call:
    """The world's checkpoint (signed when the world was made) covers its first event."""
    return Call(params={"seq": "1"})


async def _stream_refused_after_access(cell: Cell) -> Call:
    """Past the access check, the handler refuses a Last-Event-ID that is no position."""
    return Call(
        headers={"Last-Event-ID": "none"},
        status=400,
        reason="Last-Event-ID must be a log position (a whole number)",
    )


async def _checkpoint_size(cell: Cell) -> Call:
    return Call(params={"size": str(cell.world.checkpoint_size)})


async def _consistency(cell: Cell) -> Call:
    return Call(query={"from": "1", "to": str(cell.world.checkpoint_size)})


async def _settings(cell: Cell) -> Call:
    return Call(json={"session_idle_minutes": 30})


async def _new_tenant(cell: Cell) -> Call:
    slug = f"m{next(_serial)}-{cell.world.tenant.slug}"[:63]
    body = {"name": "Matrix", "slug": slug, "owner_email": f"owner@{slug}.example"}
    return Call(json=body, token=cell.api.platform_token)


async def _invitation(cell: Cell) -> Call:
    return Call(json={"email": unique_email(cell.world), "role": Role.READONLY.value})


async def _member_to_read(cell: Cell) -> Call:
    invited = await invite(cell.api, cell.world, Role.READONLY)
    return Call(params={"member_id": invited.member_id}, headers={MIN_POSITION: invited.position})


async def _member_to_promote(cell: Cell) -> Call:
    invited = await invite(cell.api, cell.world, Role.READONLY)
    return Call(params={"member_id": invited.member_id}, json={"role": Role.AUDITOR.value})


async def _member_to_deactivate(cell: Cell) -> Call:
    invited = await invite(cell.api, cell.world, Role.READONLY)
    return Call(params={"member_id": invited.member_id})


async def _member_to_reactivate(cell: Cell) -> Call:
    invited = await invite(cell.api, cell.world, Role.READONLY)
    await deactivate(cell.api, cell.world, invited.member_id)
    return Call(params={"member_id": invited.member_id})


async def _accept(cell: Cell) -> Call:
    invited = await invite(cell.api, cell.world, Role.READONLY)
    return Call(json={"token": invited.invite_token, "password": PASSWORD})


async def _login(cell: Cell) -> Call:
    member = cell.world.member(Role.READONLY)
    return Call(
        json={"tenant": cell.world.tenant.slug, "email": member.email, "password": PASSWORD}
    )


async def _mfa_completion(cell: Cell) -> Call:
    member = await fresh_member(cell.api, cell.world, Role.READONLY)
    recovery = await enroll_totp(cell.api, member)
    started = await cell.api.request(
        "POST",
        "/v1/auth/login",
        json={"tenant": cell.world.tenant.slug, "email": member.email, "password": PASSWORD},
    )
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "mfa_required"
    return Call(json={"challenge": started.json()["token"], "recovery_code": recovery[0]})


async def _fresh_session(cell: Cell) -> str | None:
    """A new session of the holder: for routes that end or replace the caller's session."""
    if not cell.allowed:
        return None
    return await login(cell.api, cell.world.tenant.slug, cell.holder.email)


async def _fresh_member_token(cell: Cell) -> Member | None:
    """A member of the cell's role made for this cell: the route changes their account."""
    if not cell.allowed:
        return None
    return await fresh_member(cell.api, cell.world, cell.role)


async def _step_up(cell: Cell) -> Call:
    return Call(json={"password": PASSWORD}, token=await _fresh_session(cell))


async def _logout(cell: Cell) -> Call:
    return Call(token=await _fresh_session(cell))


async def _revoke_others(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    return Call(token=member.token if member else None)


async def _password(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    return Call(
        json={"password": "another correct horse battery staple"},
        token=member.token if member else None,
    )


async def _mfa_start(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    return Call(token=member.token if member else None)


async def _mfa_confirm(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    if member is None:
        return Call(json={"code": "000000"})
    started = await cell.api.request("POST", "/v1/account/mfa", member.token)
    assert started.status_code == 200, started.text
    code = pyotp.TOTP(started.json()["secret"]).at(cell.api.clock())
    return Call(json={"code": code}, token=member.token)


async def _mfa_disable(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    if member is None:
        return Call()
    await enroll_totp(cell.api, member)
    if cell.role is Role.OWNER:
        return Call(token=member.token, status=409, reason="an owner's MFA stays on once enrolled")
    return Call(token=member.token)


async def _recovery_codes(cell: Cell) -> Call:
    member = await _fresh_member_token(cell)
    if member is None:
        return Call()
    await enroll_totp(cell.api, member)
    return Call(token=member.token)


async def _key_creation(cell: Cell) -> Call:
    return Call(json={"name": "cell", "scopes": [Permission.ACCOUNT_SELF.value]})


async def _holders_key(cell: Cell) -> str:
    """A new key of the holder (allowed cells), else any key of the tenant."""
    if not cell.allowed:
        return cell.world.owner_key_id
    issued = await issue_key(cell.api, cell.holder, [Permission.ACCOUNT_SELF.value])
    return str(issued["key_id"])


async def _key_to_revoke(cell: Cell) -> Call:
    return Call(params={"key_id": await _holders_key(cell)})


async def _key_to_rotate(cell: Cell) -> Call:
    return Call(params={"key_id": await _holders_key(cell)}, json={"overlap_seconds": 60})


P = Permission
SELF = Permission.ACCOUNT_SELF

ROUTES: tuple[Route, ...] = (
    # public and platform
    Route("GET", "/health/live", 200, _as_is, public=True, probe=True),
    Route("GET", "/health/ready", 200, _as_is, public=True, probe=True),
    Route("GET", "/metrics", 200, _as_is, public=True, probe=True),
    Route("POST", "/v1/invites/accept", 200, _accept, public=True),
    Route("POST", "/v1/auth/login", 200, _login, public=True),
    Route("POST", "/v1/auth/mfa", 200, _mfa_completion, public=True),
    Route("POST", "/v1/tenants", 201, _new_tenant, platform=True),
    # the tenant
    Route("GET", "/v1/tenant", 200, _as_is, P.TENANT_READ),
    Route("PUT", "/v1/tenant/settings", 200, _settings, P.TENANT_MANAGE, step_up=True),
    # members
    Route("GET", "/v1/members", 200, _as_is, P.MEMBERS_READ),
    Route("POST", "/v1/members", 201, _invitation, P.MEMBERS_INVITE),
    Route("GET", "/v1/members/{member_id:uuid}", 200, _member_to_read, P.MEMBERS_READ),
    Route(
        "PUT",
        "/v1/members/{member_id:uuid}/role",
        204,
        _member_to_promote,
        P.MEMBERS_MANAGE,
        step_up=True,
    ),
    Route(
        "POST",
        "/v1/members/{member_id:uuid}/deactivate",
        204,
        _member_to_deactivate,
        P.MEMBERS_MANAGE,
    ),
    Route(
        "POST",
        "/v1/members/{member_id:uuid}/reactivate",
        204,
        _member_to_reactivate,
        P.MEMBERS_MANAGE,
    ),
    # sessions
    Route("POST", "/v1/auth/step-up", 200, _step_up, SELF, session_only=True),
    Route("POST", "/v1/auth/logout", 204, _logout, SELF, session_only=True),
    Route("GET", "/v1/auth/sessions", 200, _as_is, SELF),
    Route("POST", "/v1/auth/sessions/revoke-others", 200, _revoke_others, SELF, session_only=True),
    # the caller's account
    Route("PUT", "/v1/account/password", 204, _password, SELF, step_up=True),
    Route("POST", "/v1/account/mfa", 200, _mfa_start, SELF, step_up=True),
    Route("POST", "/v1/account/mfa/confirm", 200, _mfa_confirm, SELF, session_only=True),
    Route("DELETE", "/v1/account/mfa", 204, _mfa_disable, SELF, step_up=True),
    Route("POST", "/v1/account/recovery-codes", 200, _recovery_codes, SELF, step_up=True),
    # API keys
    Route("GET", "/v1/api-keys", 200, _as_is, P.APIKEYS_ISSUE),
    Route("POST", "/v1/api-keys", 201, _key_creation, P.APIKEYS_ISSUE, step_up=True),
    Route("DELETE", "/v1/api-keys/{key_id:uuid}", 204, _key_to_revoke, P.APIKEYS_ISSUE),
    Route(
        "POST",
        "/v1/api-keys/{key_id:uuid}/rotate",
        201,
        _key_to_rotate,
        P.APIKEYS_ISSUE,
        step_up=True,
    ),
    # the ledger (the world's tenant has a signed checkpoint)
    Route("GET", "/v1/ledger/keys", 200, _as_is, P.LEDGER_READ),
    Route("GET", "/v1/ledger/checkpoint", 200, _as_is, P.LEDGER_READ),
    Route("GET", "/v1/ledger/checkpoints", 200, _as_is, P.LEDGER_READ),
    Route("GET", "/v1/ledger/checkpoints/{size:int}", 200, _checkpoint_size, P.LEDGER_READ),
    Route("GET", "/v1/ledger/consistency", 200, _consistency, P.LEDGER_READ),
    Route("GET", "/v1/events/{seq:int}/receipt", 200, _first_event, P.LEDGER_READ),
    Route("GET", "/v1/events/{seq:int}/receipt.tlog-proof", 200, _first_event, P.LEDGER_READ),
    Route("GET", "/v1/events/{seq:int}/leaf", 200, _first_event, P.LEDGER_READ),
    # the tenant log
    Route("GET", "/v1/events", 200, _as_is, P.EVENTS_READ),
    Route(
        "GET",
        "/v1/events/stream",
        200,
        _stream_refused_after_access,
        P.EVENTS_READ,
        endless=True,
    ),
)

TENANT_ROUTES = tuple(r for r in ROUTES if not (r.public or r.platform))
POSITION_PARAMS = frozenset({"seq", "size"})
"""The routes a member's credential opens: the columns of the roles matrix."""
