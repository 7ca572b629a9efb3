"""The identity API end to end: a tenant from creation to API keys."""

from __future__ import annotations

from domain.roles import Role
from tests.e2e.conftest import Api, create_tenant, issue_api_key


async def test_a_new_tenant_owner_invites_a_member_who_logs_in_and_lists_members(
    api: Api,
) -> None:
    world = await create_tenant(api, with_roles=(Role.ADMIN,))
    response = await api.request("GET", "/v1/members", world.owner.token)
    assert response.status_code == 200, response.text
    invited = await api.request(
        "POST",
        "/v1/members",
        world.owner.token,
        json={"email": "new@example.com", "role": "readonly"},
    )
    assert invited.status_code == 201
    position = invited.headers["strongroom-position"]
    listed = await api.request(
        "GET", "/v1/members", world.owner.token, headers={"Strongroom-Min-Position": position}
    )
    assert listed.status_code == 200
    emails = {m["email"] for m in listed.json()["items"]}
    assert "new@example.com" in emails
    assert world.members[Role.ADMIN].email in emails


async def test_an_api_key_authenticates_within_its_scopes(api: Api) -> None:
    world = await create_tenant(api, with_roles=())
    issued = await issue_api_key(api, world.owner, ["members:read"])
    key = issued["key"]
    assert key.startswith("sr_live_")
    ok = await api.request("GET", "/v1/members", key)
    assert ok.status_code == 200, ok.text
    denied = await api.request(
        "POST", "/v1/members", key, json={"email": "x@example.com", "role": "readonly"}
    )
    assert denied.status_code == 403
