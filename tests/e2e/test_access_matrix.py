"""Who may call what: the roles x routes matrix, API key scopes, tenant isolation by id,
and role changes that take effect on the very next request.

The expectations are derived from ``domain.permissions.ROLE_PERMISSIONS`` and the
route table in tests/e2e/routes.py, never written per role. One tenant (one
joined member per role) serves the matrix; a cell that changes state works on
members, sessions and keys made for that cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from api.app import OPENAPI_PATH
from api.positions import MIN_POSITION
from domain.permissions import ROLE_PERMISSIONS, Permission
from domain.roles import Role
from infra.eventstore import EventStore
from tests.conftest import Database
from tests.e2e.conftest import (
    PASSWORD,
    Api,
    Member,
    TenantWorld,
    create_tenant,
    issue_api_key,
    join,
    login,
    sign_checkpoint,
)
from tests.e2e.routes import (
    POSITION_PARAMS,
    ROUTES,
    TENANT_ROUTES,
    Call,
    Cell,
    Route,
    World,
    deactivate,
    fresh_member,
    invite,
    issue_key,
)

pytestmark = pytest.mark.usefixtures("generous_rate_limits")
PROBLEM_JSON = "application/problem+json"
EVERY_SCOPE = sorted(p.value for p in Permission)


# ---- expectations, from the one permission catalogue ------------------------------------


def session_may(role: Role, route: Route) -> bool:
    return route.permission in ROLE_PERMISSIONS[role]


def key_may(role: Role, scopes: frozenset[Permission], route: Route) -> bool:
    return route.permission in scopes & ROLE_PERMISSIONS[role] and not route.needs_session


def denial_reason(granted: frozenset[Permission], route: Route) -> str:
    """The access check refuses a missing permission first, then a key on a session route."""
    assert route.permission is not None
    if route.permission not in granted:
        return f"this needs the {route.permission.value} permission"
    return "this needs an interactive session, not an API key"


KEY_KINDS = ("the role's scopes", "half the role's scopes", "every scope")


def scopes_of(role: Role, kind: str) -> frozenset[Permission]:
    """What a key is issued with. Every key is issued while its member is an owner and the
    member is then given ``role``, so "every scope" exceeds the member's current role."""
    if kind == "every scope":
        return frozenset(Permission)
    ordered = sorted(ROLE_PERMISSIONS[role])
    return frozenset(ordered if kind == "the role's scopes" else ordered[::2])


# ---- helpers ----------------------------------------------------------------------------


def assert_problem(response: Any, status: int, detail: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status, body
    if detail is not None:
        assert body["detail"] == detail, body


def assert_unauthenticated(response: Any) -> None:
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers


async def perform(api: Api, route: Route, call: Call, credential: str | None) -> Any:
    return await api.request(
        route.method,
        route.path(call.params),
        call.token or credential,
        json=call.json,
        params=dict(call.query),
        headers=dict(call.headers),
    )


async def change_role(api: Api, actor: Member, member_id: str, role: Role) -> Any:
    return await api.request(
        "PUT", f"/v1/members/{member_id}/role", actor.token, json={"role": role.value}
    )


async def all_members(api: Api, token: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {"limit": "500", **({"after": after} if after else {})}
        response = await api.request("GET", "/v1/members", token, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        after = page["next_after"]
        if after is None:
            return items


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def world(
    api: Api, generous_rate_limits: None, pool: asyncpg.Pool, store: EventStore
) -> World:
    tenant = await create_tenant(api)
    key = await issue_api_key(api, tenant.owner, [Permission.MEMBERS_READ.value])
    size = await sign_checkpoint(pool, store, tenant.tenant_id)
    return World(tenant, str(key["key_id"]), checkpoint_size=size)


@dataclass
class KeyHolder:
    member: Member
    keys: dict[str, str]
    """Key by kind (see KEY_KINDS)."""


@pytest.fixture(scope="module")
async def key_holders(api: Api, world: World) -> dict[Role, KeyHolder]:
    """Per role, a member who issued one key of each kind as an owner, then got that role."""
    holders: dict[Role, KeyHolder] = {}
    for role in Role:
        member = await fresh_member(api, world, Role.OWNER)
        keys = {}
        for kind in KEY_KINDS:
            issued = await issue_key(api, member, sorted(scopes_of(role, kind)))
            keys[kind] = str(issued["key"])
        if role is not Role.OWNER:
            changed = await change_role(api, world.owner, member.member_id, role)
            assert changed.status_code == 204, changed.text
            member.role = role
        holders[role] = KeyHolder(member, keys)
    return holders


@dataclass
class OtherTenant:
    world: TenantWorld
    member_ids: list[str]
    key_ids: list[str]
    key: str
    connector_ids: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    grant_ids: tuple[str, ...] = ()

    @property
    def markers(self) -> list[str]:
        """Every identifier of this tenant that must never appear in another's answers."""
        emails = [m.email for m in self.world.members.values()]
        return [
            self.world.tenant_id,
            self.world.slug,
            *self.member_ids,
            *self.key_ids,
            *self.connector_ids,
            *self.request_ids,
            *self.grant_ids,
            *emails,
        ]


@pytest.fixture(scope="module")
async def tenant_b(
    api: Api, generous_rate_limits: None, pool: asyncpg.Pool, store: EventStore
) -> OtherTenant:
    b = await create_tenant(api, with_roles=(Role.ADMIN, Role.READONLY))
    gone = await invite(api, World(b, ""), Role.AUDITOR)
    await deactivate(api, World(b, ""), gone.member_id)
    owner_key = await issue_api_key(api, b.owner, EVERY_SCOPE)
    admin_key = await issue_api_key(api, b.members[Role.ADMIN], ["members:read"])
    connector_ids = await b_connectors(api, b)
    request_ids, grant_ids = await b_requests(api, b, connector_ids[0])
    await sign_checkpoint(pool, store, b.tenant_id)  # B's ledger exists, for A to miss
    return OtherTenant(
        b,
        [*(m.member_id for m in b.members.values()), gone.member_id],
        [str(owner_key["key_id"]), str(admin_key["key_id"])],
        str(owner_key["key"]),
        connector_ids,
        request_ids,
        grant_ids,
    )


async def b_requests(
    api: Api, b: TenantWorld, connector_id: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """B's access requests (one pending, one executed by its admin after the owner's
    approval) and the grant the executed one issued."""
    admin = b.members[Role.ADMIN].token
    body = {
        "connector_id": connector_id,
        "resource": "db/b",
        "access_level": "read",
        "justification": "tenant B's own work",
        "duration_seconds": 3600,
    }
    ids = []
    for _ in range(2):
        made = await api.request("POST", "/v1/access-requests", admin, json=body)
        assert made.status_code == 201, made.text
        ids.append(str(made.json()["request_id"]))
    decided = await api.request(
        "POST",
        f"/v1/access-requests/{ids[0]}/decisions",
        b.owner.token,
        json={"decision": "approve"},
    )
    assert decided.status_code == 201, decided.text
    executed = await api.request("POST", f"/v1/access-requests/{ids[0]}/execution", admin)
    assert executed.status_code == 201, executed.text
    return tuple(ids), (str(executed.json()["grant_id"]),)


async def b_connectors(api: Api, b: TenantWorld) -> tuple[str, ...]:
    """B's connectors: one with a credential, one paused."""
    ids = []
    for name in ("b-with-credential", "b-paused"):
        created = await api.request(
            "POST",
            "/v1/connectors",
            b.owner.token,
            json={"kind": "generic", "name": name, "config": {"org": name}},
        )
        assert created.status_code == 201, created.text
        ids.append(str(created.json()["connector_id"]))
    path = f"/v1/connectors/{ids[0]}/credential"
    body = {"kind": "api_key", "secret": "b-connector-credential"}
    credential = await api.request("PUT", path, b.owner.token, json=body)
    assert credential.status_code == 204, credential.text
    paused = await api.request("POST", f"/v1/connectors/{ids[1]}/pause", b.owner.token)
    assert paused.status_code == 204, paused.text
    return tuple(ids)


@pytest.fixture(scope="module")
async def a_owner_key(api: Api, world: World) -> str:
    """Tenant A's API key with every scope an owner can have."""
    issued = await issue_api_key(api, world.owner, EVERY_SCOPE)
    return str(issued["key"])


# ---- the table is complete --------------------------------------------------------------


def test_the_matrix_lists_every_route_of_the_app_with_the_access_it_declares(api: Api) -> None:
    declared = {}
    for route in api.app.routes:
        if route.path.startswith(OPENAPI_PATH):
            continue
        for handler in getattr(route, "route_handlers", ()):
            for method in handler.http_methods - {"OPTIONS"}:
                declared[(method, route.path)] = handler.opt.get("access")
    table = {(r.method, r.template): r.access for r in ROUTES}
    assert len(table) == len(ROUTES), "a route is listed twice"
    assert sorted(declared.keys() - table.keys()) == [], "routes missing from tests/e2e/routes.py"
    assert sorted(table.keys() - declared.keys()) == [], "routes the app no longer has"
    differing = {k: (table[k], declared[k]) for k in table if table[k] != declared[k]}
    assert differing == {}, "(the table says, the route declares)"


# ---- roles x routes, with sessions ------------------------------------------------------


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: r.id)
@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_a_members_session_may_call_exactly_the_routes_its_role_grants(
    api: Api, world: World, role: Role, route: Route
) -> None:
    member = world.member(role)
    allowed = session_may(role, route)
    call = await route.prepare(Cell(api, world, role, member, member.token, allowed))
    response = await perform(api, route, call, member.token)
    if not allowed:
        assert_problem(response, 403, denial_reason(ROLE_PERMISSIONS[role], route))
    elif call.status is not None:
        assert_problem(response, call.status, call.reason)
    else:
        assert response.status_code == route.status, response.text


# ---- the same for API keys --------------------------------------------------------------


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: r.id)
@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize("role", list(Role), ids=str)
async def test_an_api_key_may_call_exactly_the_routes_of_its_scopes_within_its_members_role(
    api: Api,
    world: World,
    key_holders: dict[Role, KeyHolder],
    role: Role,
    kind: str,
    route: Route,
) -> None:
    holder = key_holders[role]
    key = holder.keys[kind]
    scopes = scopes_of(role, kind)
    allowed = key_may(role, scopes, route)
    call = await route.prepare(Cell(api, world, role, holder.member, key, allowed))
    response = await perform(api, route, call, key)
    if not allowed:
        assert_problem(response, 403, denial_reason(scopes & ROLE_PERMISSIONS[role], route))
    elif call.status is not None:
        assert_problem(response, call.status, call.reason)
    else:
        assert response.status_code == route.status, response.text


# ---- no credential, public routes, the platform route -----------------------------------


@pytest.mark.parametrize("route", [r for r in ROUTES if not r.public], ids=lambda r: r.id)
async def test_a_route_called_without_a_credential_answers_401_with_www_authenticate(
    api: Api, world: World, route: Route
) -> None:
    call = await route.prepare(Cell(api, world, Role.OWNER, world.owner, None, allowed=False))
    response = await api.request(
        route.method,
        route.path(call.params),
        json=call.json,
        params=dict(call.query),
        headers=dict(call.headers),
    )
    assert_unauthenticated(response)


@pytest.mark.parametrize("route", [r for r in ROUTES if r.public], ids=lambda r: r.id)
async def test_a_public_route_works_without_a_credential(
    api: Api, world: World, route: Route
) -> None:
    call = await route.prepare(Cell(api, world, Role.OWNER, world.owner, None, allowed=True))
    response = await perform(api, route, call, None)
    assert response.status_code == route.status, response.text


async def test_no_member_credential_opens_the_platform_route(
    api: Api, world: World, a_owner_key: str
) -> None:
    """Creating tenants is for the platform token alone: a member's session or key is not a
    platform credential (401, as for no credential), whatever the member's role."""
    (route,) = [r for r in ROUTES if r.platform]
    call = await route.prepare(Cell(api, world, Role.OWNER, world.owner, None, allowed=True))
    for token in [m.token for m in world.tenant.members.values()] + [a_owner_key]:
        response = await api.request(route.method, route.path(call.params), token, json=call.json)
        assert_unauthenticated(response)
    created = await perform(api, route, call, None)
    assert created.status_code == route.status, "the refused calls created nothing"


# ---- tenant isolation through HTTP ------------------------------------------------------


async def log_size(database: Database, tenant_id: str) -> int:
    """The number of events in a tenant's log, read as the app role under row-level security."""
    conn = await asyncpg.connect(database.app_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            size = await conn.fetchval(
                "SELECT size FROM tenant_log WHERE tenant_id = $1", UUID(tenant_id)
            )
    finally:
        await conn.close()
    assert isinstance(size, int) and size > 0
    return size


async def snapshot(api: Api, database: Database, other: OtherTenant) -> tuple[Any, ...]:
    """Tenant B as B's owner sees it, and the size of B's log."""
    size = await log_size(database, other.world.tenant_id)
    owner = other.world.owner.token
    members = await api.request(
        "GET",
        "/v1/members",
        owner,
        params={"limit": "500"},
        headers={MIN_POSITION: str(size)},
    )
    keys = await api.request("GET", "/v1/api-keys", owner, params={"all": "true"})
    assert members.status_code == 200, members.text
    assert keys.status_code == 200, keys.text
    return size, members.json(), keys.json()


@pytest.mark.parametrize("credential", ["owner session", "owner API key"])
async def test_tenant_a_reaching_for_tenant_b_ids_gets_404_and_changes_nothing_of_b(
    api: Api,
    database: Database,
    world: World,
    a_owner_key: str,
    tenant_b: OtherTenant,
    credential: str,
) -> None:
    token = world.owner.token if credential == "owner session" else a_owner_key
    is_key = credential == "owner API key"
    b_ids = {
        "member_id": tenant_b.member_ids,
        "key_id": tenant_b.key_ids,
        "connector_id": list(tenant_b.connector_ids),
        "request_id": list(tenant_b.request_ids),
        "grant_id": list(tenant_b.grant_ids),
    }
    before = await snapshot(api, database, tenant_b)
    # Log positions (seq, size) are coordinates within the caller's own log, not ids:
    # tests/e2e/test_ledger.py shows a position never reaches another tenant's log.
    id_routes = [r for r in TENANT_ROUTES if set(r.params) - POSITION_PARAMS]
    assert {p for r in id_routes for p in r.params} == set(b_ids), "an id kind without B ids"
    calls, wrong = 0, {}
    for route in id_routes:
        cell = Cell(api, world, Role.OWNER, world.owner, token, allowed=False)
        call = await route.prepare(cell)
        # A key never reaches a session-only route (403), whoever's id it names.
        expected = 403 if is_key and route.needs_session else 404
        for b_id in b_ids[route.params[0]]:
            path = route.path(dict.fromkeys(route.params, b_id))
            response = await api.request(route.method, path, token, json=call.json)
            calls += 1
            problem = response.headers.get("content-type", "").startswith(PROBLEM_JSON)
            if response.status_code != expected or not problem:
                wrong[f"{route.method} {path}"] = response.text
    assert calls >= 2 * len(id_routes), "every route is tried with several ids of B"
    assert wrong == {}
    assert await snapshot(api, database, tenant_b) == before
    member = tenant_b.world.members[Role.READONLY]
    assert await login(api, tenant_b.world.slug, member.email)
    still = await api.request("GET", "/v1/tenant", tenant_b.key)
    assert still.status_code == 200, still.text


@pytest.mark.parametrize("credential", ["owner session", "owner API key"])
async def test_tenant_a_lists_never_show_tenant_b_data(
    api: Api, world: World, a_owner_key: str, tenant_b: OtherTenant, credential: str
) -> None:
    token = world.owner.token if credential == "owner session" else a_owner_key
    lists = [r for r in TENANT_ROUTES if r.method == "GET" and not r.params and not r.endless]
    # A key never opens a session-only list (the audit export): the session cell reads it.
    lists = [r for r in lists if credential == "owner session" or not r.needs_session]
    assert lists
    texts = {}
    for route in lists:
        call = await route.prepare(Cell(api, world, Role.OWNER, world.owner, token, allowed=True))
        response = await api.request(
            "GET", route.path({}), call.token or token, params=dict(call.query)
        )
        assert response.status_code == 200, response.text
        texts[route.id] = response.text
    every_key = await api.request("GET", "/v1/api-keys", token, params={"all": "true"})
    assert every_key.status_code == 200, every_key.text
    texts["GET /v1/api-keys?all=true"] = every_key.text
    texts["every member"] = repr(await all_members(api, token))
    assert world.owner.member_id in texts["every member"]
    assert world.owner_key_id in texts["GET /v1/api-keys?all=true"]
    leaks = {
        name: marker
        for name, text in texts.items()
        for marker in tenant_b.markers
        if marker in text
    }
    assert leaks == {}


# ---- changes take effect on the very next request ---------------------------------------


async def test_a_demoted_admin_is_refused_an_invite_on_the_very_next_request(
    api: Api, world: World
) -> None:
    admin = await fresh_member(api, world, Role.ADMIN)
    key = (await issue_key(api, admin, ["members:invite", "members:read"]))["key"]
    for token in (admin.token, key):
        body = {"email": f"before-{token[-6:]}@{world.tenant.slug}.example", "role": "readonly"}
        response = await api.request("POST", "/v1/members", token, json=body)
        assert response.status_code == 201, response.text
    demoted = await change_role(api, world.owner, admin.member_id, Role.READONLY)
    assert demoted.status_code == 204, demoted.text
    for token in (admin.token, key):
        body = {"email": f"after-{token[-6:]}@{world.tenant.slug}.example", "role": "readonly"}
        response = await api.request("POST", "/v1/members", token, json=body)
        assert_problem(response, 403, "this needs the members:invite permission")
    reading = await api.request("GET", "/v1/members", key)
    assert reading.status_code == 200, "members:read is still within readonly"


async def test_deactivation_ends_the_members_sessions_and_api_keys_at_once(
    api: Api, world: World
) -> None:
    member = await fresh_member(api, world, Role.REQUESTER)
    second_session = await login(api, world.tenant.slug, member.email)
    key = (await issue_key(api, member, ["tenant:read"]))["key"]
    credentials = [member.token, second_session, key]
    for token in credentials:
        response = await api.request("GET", "/v1/tenant", token)
        assert response.status_code == 200, response.text
    await deactivate(api, world, member.member_id)
    for token in credentials:
        assert_unauthenticated(await api.request("GET", "/v1/tenant", token))
    refused = await api.request(
        "POST",
        "/v1/auth/login",
        json={"tenant": world.tenant.slug, "email": member.email, "password": PASSWORD},
    )
    assert_unauthenticated(refused)


async def test_the_last_owner_cannot_be_demoted_or_deactivated(api: Api) -> None:
    tenant = await create_tenant(api, with_roles=())
    first = tenant.owner
    last_owner = "the last owner cannot be removed or demoted"
    assert_problem(await change_role(api, first, first.member_id, Role.ADMIN), 409, last_owner)
    deactivating = f"/v1/members/{first.member_id}/deactivate"
    assert_problem(await api.request("POST", deactivating, first.token), 409, last_owner)
    second = await fresh_member(api, World(tenant, ""), Role.OWNER)
    demoted = await change_role(api, second, first.member_id, Role.ADMIN)
    assert demoted.status_code == 204, "with two owners, one may go"
    assert_problem(await change_role(api, second, second.member_id, Role.ADMIN), 409, last_owner)
    deactivating = f"/v1/members/{second.member_id}/deactivate"
    assert_problem(await api.request("POST", deactivating, second.token), 409, last_owner)
    still = await api.request("GET", "/v1/tenant", second.token)
    assert still.status_code == 200, still.text


async def test_only_an_owner_can_grant_or_take_the_owner_role(api: Api, world: World) -> None:
    admin = await fresh_member(api, world, Role.ADMIN)
    only_owners = "only an owner can grant or take the owner role"
    target = await invite(api, world, Role.READONLY)
    assert_problem(await change_role(api, admin, target.member_id, Role.OWNER), 403, only_owners)
    owner_invite = {"email": f"o{target.email}", "role": "owner"}
    invited = await api.request("POST", "/v1/members", admin.token, json=owner_invite)
    assert_problem(invited, 403, only_owners)
    an_owner = await invite(api, world, Role.OWNER)
    assert_problem(await change_role(api, admin, an_owner.member_id, Role.ADMIN), 403, only_owners)
    deactivating = f"/v1/members/{an_owner.member_id}/deactivate"
    assert_problem(await api.request("POST", deactivating, admin.token), 403, only_owners)
    granted = await change_role(api, world.owner, target.member_id, Role.OWNER)
    assert granted.status_code == 204, granted.text
    seen = await api.request(
        "GET",
        f"/v1/members/{target.member_id}",
        world.owner.token,
        headers={MIN_POSITION: granted.headers["strongroom-position"]},
    )
    assert seen.json()["role"] == "owner", seen.text


async def test_an_invited_owner_is_no_owner_until_they_join(api: Api) -> None:
    tenant = await create_tenant(api, with_roles=())
    world = World(tenant, "")
    pending = await invite(api, world, Role.OWNER)
    demoting = await change_role(api, tenant.owner, tenant.owner.member_id, Role.ADMIN)
    assert_problem(demoting, 409, "the last owner cannot be removed or demoted")
    await join(api, tenant.slug, pending.invite_token, pending.email, Role.OWNER)
    demoting = await change_role(api, tenant.owner, tenant.owner.member_id, Role.ADMIN)
    assert demoting.status_code == 204, demoting.text
