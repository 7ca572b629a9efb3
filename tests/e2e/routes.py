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
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

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
    connector_id: str | None = None
    """A connector of the tenant (access requests name one), made on first use."""

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


# ---- prepare: access requests, decisions, grants ----------------------------------------


async def world_connector(api: Api, world: World) -> str:
    """The world's connector (registered once by its owner)."""
    if world.connector_id is None:
        created = await api.request(
            "POST",
            "/v1/connectors",
            world.owner.token,
            json={"kind": "generic", "name": "matrix", "config": {}},
        )
        assert created.status_code == 201, created.text
        world.connector_id = str(created.json()["connector_id"])
    return world.connector_id


async def access_request(api: Api, world: World, token: str) -> dict[str, Any]:
    """A request submitted with ``token`` on the world's connector."""
    body = {
        "connector_id": await world_connector(api, world),
        "resource": f"matrix/{next(_serial)}",
        "access_level": "read",
        "justification": "the access matrix",
        "duration_seconds": 3600,
    }
    response = await api.request("POST", "/v1/access-requests", token, json=body)
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    made["position"] = response.headers["strongroom-position"]
    return made


async def approve_request(api: Api, world: World, request_id: str) -> None:
    response = await api.request(
        "POST",
        f"/v1/access-requests/{request_id}/decisions",
        world.member(Role.APPROVER).token,
        json={"decision": "approve"},
    )
    assert response.status_code == 201, response.text


async def issued_grant(api: Api, world: World) -> tuple[str, str]:
    """A grant of the world's requester, and the position it reached."""
    requester = world.member(Role.REQUESTER).token
    made = await access_request(api, world, requester)
    await approve_request(api, world, made["request_id"])
    executed = await api.request(
        "POST", f"/v1/access-requests/{made['request_id']}/execution", requester
    )
    assert executed.status_code == 201, executed.text
    return str(executed.json()["grant_id"]), executed.headers["strongroom-position"]


async def _access_policy(cell: Cell) -> Call:
    """A changed policy each time (an unchanged one is refused), from a fresh session."""
    body = {"approval_ttl_seconds": 300 + next(_serial)}
    return Call(json=body, token=await _fresh_session(cell))


async def _request_body(cell: Cell) -> dict[str, Any]:
    return {
        "connector_id": await world_connector(cell.api, cell.world),
        "resource": f"matrix/{next(_serial)}",
        "access_level": "read",
        "justification": "the access matrix",
        "duration_seconds": 600,
    }


async def _new_request(cell: Cell) -> Call:
    return Call(json=await _request_body(cell))


async def _others_request(cell: Cell) -> dict[str, Any]:
    """A request of the world's requester (so the holder may decide on it)."""
    return await access_request(cell.api, cell.world, cell.world.member(Role.REQUESTER).token)


async def _holders_request(cell: Cell) -> dict[str, Any]:
    """Allowed cells: a request the holder submitted with this very credential."""
    if cell.allowed and cell.credential is not None:
        return await access_request(cell.api, cell.world, cell.credential)
    return await _others_request(cell)


async def _request_to_read(cell: Cell) -> Call:
    made = await _others_request(cell)
    return Call(params={"request_id": made["request_id"]}, headers={MIN_POSITION: made["position"]})


async def _request_to_edit(cell: Cell) -> Call:
    made = await _holders_request(cell)
    return Call(params={"request_id": made["request_id"]}, json=await _request_body(cell))


async def _request_to_withdraw(cell: Cell) -> Call:
    made = await _holders_request(cell)
    return Call(params={"request_id": made["request_id"]})


async def _request_to_decide(cell: Cell) -> Call:
    made = await _others_request(cell)
    return Call(params={"request_id": made["request_id"]}, json={"decision": "approve"})


async def _request_to_execute(cell: Cell) -> Call:
    made = await _holders_request(cell)
    if cell.allowed:
        await approve_request(cell.api, cell.world, made["request_id"])
    return Call(params={"request_id": made["request_id"]})


async def _grant_id(cell: Cell) -> tuple[str, str]:
    if not cell.allowed:
        return str(uuid4()), "0"
    return await issued_grant(cell.api, cell.world)


async def _grant_to_read(cell: Cell) -> Call:
    grant_id, position = await _grant_id(cell)
    return Call(params={"grant_id": grant_id}, headers={MIN_POSITION: position})


async def _grant_to_revoke(cell: Cell) -> Call:
    grant_id, _ = await _grant_id(cell)
    return Call(params={"grant_id": grant_id}, json={"reason": "the access matrix"})


# ---- prepare: audit events from other systems -------------------------------------------


def _audit_event() -> dict[str, str]:
    occurred = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "actor": "matrix",
        "action": "matrix.called",
        "resource": "matrix/cell",
        "outcome": "success",
        "occurred_at": occurred,
    }


async def _audit_record(cell: Cell) -> Call:
    return Call(json=_audit_event())


async def _audit_batch(cell: Cell) -> Call:
    return Call(json={"events": [_audit_event(), _audit_event()]})


async def _audit_export(cell: Cell) -> Call:
    """A session that has just authenticated (the export needs a step-up)."""
    return Call(query={"format": "jsonl"}, token=await _fresh_session(cell))


# ---- prepare: connectors and the vault ---------------------------------------------------


async def new_connector(api: Api, world: World) -> tuple[str, str]:
    """A connector registered by the owner just now, and the position it reached."""
    body = {"kind": "generic", "name": f"matrix {next(_serial)}", "config": {"org": "matrix"}}
    created = await api.request("POST", "/v1/connectors", world.owner.token, json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["connector_id"]), created.headers["strongroom-position"]


async def _cells_connector(cell: Cell) -> str:
    """Allowed cells change a connector of their own; denied ones name the world's."""
    if not cell.allowed:
        return await world_connector(cell.api, cell.world)
    connector_id, _ = await new_connector(cell.api, cell.world)
    return connector_id


async def _connector_creation(cell: Cell) -> Call:
    return Call(json={"kind": "generic", "name": "cell", "config": {"region": "eu"}})


async def _connector_to_read(cell: Cell) -> Call:
    connector_id, position = await new_connector(cell.api, cell.world)
    return Call(params={"connector_id": connector_id}, headers={MIN_POSITION: position})


async def _connector_to_configure(cell: Cell) -> Call:
    config = {"org": "matrix", "n": next(_serial)}
    return Call(params={"connector_id": await _cells_connector(cell)}, json={"config": config})


async def _connector_to_pause(cell: Cell) -> Call:
    return Call(params={"connector_id": await _cells_connector(cell)})


async def _connector_to_resume(cell: Cell) -> Call:
    connector_id = await _cells_connector(cell)
    if cell.allowed:
        path = f"/v1/connectors/{connector_id}/pause"
        paused = await cell.api.request("POST", path, cell.world.owner.token)
        assert paused.status_code == 204, paused.text
    return Call(params={"connector_id": connector_id})


async def _connector_credential(cell: Cell) -> Call:
    """A credential for a connector of the cell's own, from a session just authenticated."""
    body = {"kind": "api_key", "secret": "matrix-credential"}
    return Call(
        params={"connector_id": await _cells_connector(cell)},
        json=body,
        token=await _fresh_session(cell),
    )


async def _tenant_key_rotation(cell: Cell) -> Call:
    return Call(token=await _fresh_session(cell))


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
    # access requests, decisions and grants
    Route("GET", "/v1/access/policy", 200, _as_is, P.REQUESTS_READ),
    Route("PUT", "/v1/access/policy", 200, _access_policy, P.TENANT_MANAGE, step_up=True),
    Route("GET", "/v1/access/approval-keys", 200, _as_is, P.REQUESTS_READ),
    Route(
        "POST",
        "/v1/access/approval-keys/rotation",
        200,
        _tenant_key_rotation,  # a fresh session, no body
        P.TENANT_MANAGE,
        step_up=True,
    ),
    Route("POST", "/v1/access-requests", 201, _new_request, P.REQUESTS_SUBMIT),
    Route("GET", "/v1/access-requests", 200, _as_is, P.REQUESTS_READ),
    Route("GET", "/v1/access-requests/mine", 200, _as_is, P.REQUESTS_SUBMIT),
    Route("GET", "/v1/access-requests/waiting", 200, _as_is, P.REQUESTS_APPROVE),
    Route("GET", "/v1/access-requests/{request_id:uuid}", 200, _request_to_read, P.REQUESTS_READ),
    Route("PUT", "/v1/access-requests/{request_id:uuid}", 200, _request_to_edit, P.REQUESTS_SUBMIT),
    Route(
        "POST",
        "/v1/access-requests/{request_id:uuid}/withdraw",
        204,
        _request_to_withdraw,
        P.REQUESTS_SUBMIT,
    ),
    Route(
        "POST",
        "/v1/access-requests/{request_id:uuid}/decisions",
        201,
        _request_to_decide,
        P.REQUESTS_APPROVE,
        session_only=True,
    ),
    Route(
        "POST",
        "/v1/access-requests/{request_id:uuid}/execution",
        201,
        _request_to_execute,
        P.REQUESTS_SUBMIT,
    ),
    Route("GET", "/v1/grants", 200, _as_is, P.REQUESTS_READ),
    Route("GET", "/v1/grants/{grant_id:uuid}", 200, _grant_to_read, P.REQUESTS_READ),
    Route("POST", "/v1/grants/{grant_id:uuid}/revoke", 204, _grant_to_revoke, P.GRANTS_REVOKE),
    # audit events from other systems
    Route("POST", "/v1/audit-events", 201, _audit_record, P.AUDIT_INGEST),
    Route("POST", "/v1/audit-events/batch", 201, _audit_batch, P.AUDIT_INGEST),
    Route("GET", "/v1/audit-events", 200, _as_is, P.AUDIT_READ),
    Route("GET", "/v1/audit-events/export", 200, _audit_export, P.AUDIT_READ, step_up=True),
    # connectors and the vault
    Route("POST", "/v1/connectors", 201, _connector_creation, P.CONNECTORS_MANAGE),
    Route("GET", "/v1/connectors", 200, _as_is, P.CONNECTORS_READ),
    Route("GET", "/v1/connectors/{connector_id:uuid}", 200, _connector_to_read, P.CONNECTORS_READ),
    Route(
        "PUT",
        "/v1/connectors/{connector_id:uuid}/config",
        204,
        _connector_to_configure,
        P.CONNECTORS_MANAGE,
    ),
    Route(
        "POST",
        "/v1/connectors/{connector_id:uuid}/pause",
        204,
        _connector_to_pause,
        P.CONNECTORS_MANAGE,
    ),
    Route(
        "POST",
        "/v1/connectors/{connector_id:uuid}/resume",
        204,
        _connector_to_resume,
        P.CONNECTORS_MANAGE,
    ),
    Route(
        "PUT",
        "/v1/connectors/{connector_id:uuid}/credential",
        204,
        _connector_credential,
        P.CONNECTORS_MANAGE,
        step_up=True,
    ),
    Route(
        "POST",
        "/v1/tenant/key-rotation",
        200,
        _tenant_key_rotation,
        P.TENANT_MANAGE,
        step_up=True,
    ),
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
