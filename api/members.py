"""Members: invite, list and read (from the members read model), roles and status."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.access import PUBLIC, principal_of, requires
from api.positions import positioned, read_model
from api.schemas import (
    InviteAccept,
    Joined,
    MemberInvite,
    MemberInvited,
    MemberPage,
    MemberView,
    RoleChange,
    RoleName,
)
from domain.errors import NotFoundError
from domain.permissions import Permission
from domain.roles import Role
from infra.runtime import Runtime
from projections.members import MemberRow, MembersProjection, get_member, list_members

_PROJECTION = MembersProjection.name


def _view(row: MemberRow) -> MemberView:
    return MemberView(
        member_id=row.member_id,
        email=row.email,
        role=row.role,
        active=row.active,
        invited_at=row.invited_at,
        updated_at=row.updated_at,
        version=row.version,
    )


class MemberController(Controller):
    path = "/v1/members"
    tags = ["members"]

    @get(
        "/",
        operation_id="listMembers",
        summary="The tenant's members, by id, a page at a time",
        opt=requires(Permission.MEMBERS_READ),
    )
    async def list_all(
        self,
        request: Request[Any, Any, Any],
        role: FromQuery[RoleName | None] = None,
        active: FromQuery[bool | None] = None,
        after: FromQuery[UUID | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> MemberPage:
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_members(
                conn, principal.tenant_id, role=role, active=active, after=after, limit=limit
            ),
        )
        return MemberPage(
            items=[_view(r) for r in rows],
            next_after=rows[-1].member_id if len(rows) == limit else None,
        )

    @get(
        "/{member_id:uuid}",
        operation_id="getMember",
        summary="One member",
        opt=requires(Permission.MEMBERS_READ),
    )
    async def get(self, request: Request[Any, Any, Any], member_id: FromPath[UUID]) -> MemberView:
        row = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: get_member(conn, principal.tenant_id, member_id),
        )
        if row is None:
            raise NotFoundError(f"no member {member_id}")
        return _view(row)

    @post(
        "/",
        operation_id="inviteMember",
        summary="Invite a member by e-mail with a role; returns a one-time invite token",
        opt=requires(Permission.MEMBERS_INVITE),
    )
    async def invite(
        self, request: Request[Any, Any, Any], data: JSONBody[MemberInvite]
    ) -> Response[MemberInvited]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        written = await runtime.identity.members.invite(principal, data.email, Role(data.role))
        body = MemberInvited(
            member_id=written.values["member_id"], invite_token=written.values["invite_token"]
        )
        return positioned(body, written.position, 201)

    @put(
        "/{member_id:uuid}/role",
        operation_id="changeMemberRole",
        summary="Change a member's role (needs a recent authentication)",
        opt=requires(Permission.MEMBERS_MANAGE, step_up=True),
        status_code=204,
    )
    async def change_role(
        self, request: Request[Any, Any, Any], member_id: FromPath[UUID], data: JSONBody[RoleChange]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        written = await runtime.identity.members.change_role(principal, member_id, Role(data.role))
        return positioned(None, written.position, 204)

    @post(
        "/{member_id:uuid}/deactivate",
        operation_id="deactivateMember",
        summary="Deactivate a member: their sessions end, their keys stop working",
        opt=requires(Permission.MEMBERS_MANAGE),
        status_code=204,
    )
    async def deactivate(
        self, request: Request[Any, Any, Any], member_id: FromPath[UUID]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.members.deactivate(principal_of(request.scope), member_id)
        return positioned(None, written.position, 204)

    @post(
        "/{member_id:uuid}/reactivate",
        operation_id="reactivateMember",
        summary="Reactivate a deactivated member",
        opt=requires(Permission.MEMBERS_MANAGE),
        status_code=204,
    )
    async def reactivate(
        self, request: Request[Any, Any, Any], member_id: FromPath[UUID]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.members.reactivate(principal_of(request.scope), member_id)
        return positioned(None, written.position, 204)


class InviteController(Controller):
    path = "/v1/invites"
    tags = ["members"]

    @post(
        "/accept",
        operation_id="acceptInvite",
        summary="Join a tenant with a one-time invite token, setting a password",
        opt=PUBLIC,
        status_code=200,
    )
    async def accept(
        self, request: Request[Any, Any, Any], data: JSONBody[InviteAccept]
    ) -> Response[Joined]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.members.accept_invite(data.token, data.password)
        body = Joined(tenant_id=written.values["tenant_id"], member_id=written.values["member_id"])
        return positioned(body, written.position, 200)
