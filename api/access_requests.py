"""Access requests, signed decisions, execution into grants; the tenant's access policy.

Commands go through infra/access.py; queries read the ``access`` read model
(projections/access.py) and honour ``Strongroom-Min-Position``.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.access import principal_of, requires
from api.positions import positioned, read_model
from api.schemas import (
    AccessPolicyBody,
    AccessPolicyView,
    AccessRequestHistory,
    AccessRequestPage,
    AccessRequestSubmit,
    AccessRequestView,
    ApprovalKeyRotatedView,
    ApprovalKeyView,
    DecisionBody,
    DecisionView,
    GrantPage,
    GrantRevoke,
    GrantView,
    HistoryEntry,
)
from domain.access import (
    AccessPolicy,
    AccessRequest,
    Decision,
    Grant,
    approval_manifest,
    policy_from_fields,
)
from domain.errors import NotFoundError
from domain.permissions import Permission
from infra.access import ApprovalKey, public_key_pem, verify_decision
from infra.identity import Principal
from infra.runtime import Runtime
from projections.access import (
    AccessProjection,
    GrantRow,
    HistoryRow,
    RequestRow,
    get_grant,
    get_request,
    list_grants,
    list_requests,
    waiting_for,
)

_PROJECTION = AccessProjection.name
Limit = Annotated[int, QueryParameter(ge=1, le=500)]
Resource = Annotated[str, QueryParameter(min_length=1, max_length=500)]
RequestStatusName = Literal["pending", "rejected", "withdrawn", "executed"]


def _key_view(key: ApprovalKey) -> ApprovalKeyView:
    return ApprovalKeyView(
        key_id=key.key_id,
        algorithm="Ed25519",
        public_key=_b64(key.public_key),
        public_key_pem=public_key_pem(key.public_key),
        created_at=key.created_at,
        retired_at=key.retired_at,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _request_view(source: RequestRow | AccessRequest) -> AccessRequestView:
    if isinstance(source, RequestRow):
        return AccessRequestView(**{f: getattr(source, f) for f in RequestRow.__slots__})
    return AccessRequestView(
        request_id=source.id,
        requester_id=source.requester_id,
        connector_id=source.connector_id,
        resource=source.resource,
        access_level=source.access_level,
        justification=source.justification,
        duration_seconds=int(source.duration.total_seconds()),
        items=source.items,
        risk=source.risk.value,
        approvals_needed=source.approvals_needed,
        approval_ttl_seconds=int(source.approval_ttl.total_seconds()),
        content_version=source.content_version,
        content_hash=source.content_hash,
        status=source.status.value,
        submitted_at=source.submitted_at,
        updated_at=source.modified_on,
        grant_id=source.grant_id,
        version=source.version,
    )


def _grant_view(source: GrantRow | Grant) -> GrantView:
    if isinstance(source, GrantRow):
        return GrantView(**{f: getattr(source, f) for f in GrantRow.__slots__})
    status = "revoked" if source.revoked else "expired" if source.expired else "active"
    return GrantView(
        grant_id=source.id,
        request_id=source.request_id,
        member_id=source.member_id,
        connector_id=source.connector_id,
        resource=source.resource,
        access_level=source.access_level,
        granted_at=source.granted_at,
        expires_at=source.expires_at,
        status=status,
        ended_at=source.ended_at,
        revoked_by=source.revoked_by,
        provisioned=source.provisioning.get("grant"),
        deprovisioned=source.provisioning.get("revoke"),
        version=source.version,
    )


def _policy_view(policy: AccessPolicy, version: int) -> AccessPolicyView:
    return AccessPolicyView(
        sensitivity=[[g, r.value] for g, r in policy.sensitivity],
        access_floors=[[a, r.value] for a, r in policy.access_floors],
        default_risk=policy.default_risk.value,
        two_approvers_at=policy.two_approvers_at.value,
        two_approvers_above_items=policy.two_approvers_above_items,
        approval_ttl_seconds=int(policy.approval_ttl.total_seconds()),
        max_grant_seconds=int(policy.max_grant_duration.total_seconds()),
        version=version,
    )


def _history_entry(request_id: UUID, h: HistoryRow, keys: dict[str, bytes]) -> HistoryEntry:
    manifest = valid = None
    if h.type in ("approved", "rejected") and h.signature is not None and h.actor_id:
        assert h.content_hash is not None and h.content_version is not None and h.key_id
        manifest = approval_manifest(
            request_id=request_id,
            content_hash=h.content_hash,
            content_version=h.content_version,
            approver_id=h.actor_id,
            decision=Decision.APPROVE if h.type == "approved" else Decision.REJECT,
            decided_at=h.at,
        )
        public = keys.get(h.key_id)
        valid = public is not None and verify_decision(public, manifest, h.signature)
    return HistoryEntry(
        seq=h.seq,
        type=h.type,
        actor_id=h.actor_id,
        at=h.at,
        content_version=h.content_version,
        content_hash=h.content_hash,
        approval_id=h.approval_id,
        grant_id=h.grant_id,
        key_id=h.key_id,
        signature=None if h.signature is None else _b64(h.signature),
        manifest=None if manifest is None else _b64(manifest),
        signature_valid=valid,
    )


def _context(request: Request[Any, Any, Any]) -> tuple[Runtime, Principal]:
    return request.app.state.runtime, principal_of(request.scope)


def _content(data: AccessRequestSubmit) -> dict[str, Any]:
    """A request body as the service's keyword arguments."""
    return {
        "connector_id": data.connector_id,
        "resource": data.resource,
        "access_level": data.access_level,
        "justification": data.justification,
        "duration": timedelta(seconds=data.duration_seconds),
        "items": data.items,
    }


class AccessPolicyController(Controller):
    path = "/v1/access"
    tags = ["access requests"]

    @get(
        "/policy",
        operation_id="getAccessPolicy",
        summary="How the tenant rates access requests and how many approvers each needs",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def get_policy(self, request: Request[Any, Any, Any]) -> AccessPolicyView:
        runtime, principal = _context(request)
        policy, version = await runtime.access.policy(principal.tenant_id)
        return _policy_view(policy, version)

    @put(
        "/policy",
        operation_id="setAccessPolicy",
        summary="Set the tenant's access policy (applies to requests submitted or edited "
        "from now on; needs a recent authentication)",
        opt=requires(Permission.TENANT_MANAGE, step_up=True),
        status_code=200,
    )
    async def set_policy(
        self, request: Request[Any, Any, Any], data: JSONBody[AccessPolicyBody]
    ) -> Response[AccessPolicyView]:
        runtime, principal = _context(request)
        policy = policy_from_fields(
            sensitivity=data.sensitivity,
            access_floors=data.access_floors,
            default_risk=data.default_risk,
            two_approvers_at=data.two_approvers_at,
            two_approvers_above_items=data.two_approvers_above_items,
            approval_ttl_seconds=data.approval_ttl_seconds,
            max_grant_seconds=data.max_grant_seconds,
        )
        written = await runtime.access.set_policy(principal, policy)
        return positioned(_policy_view(policy, written.values["version"]), written.position)

    @get(
        "/approval-keys",
        operation_id="listApprovalKeys",
        summary="The public keys that verify the tenant's approval signatures",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def approval_keys(self, request: Request[Any, Any, Any]) -> list[ApprovalKeyView]:
        runtime, principal = _context(request)
        keys = await runtime.access.keys.published(principal.tenant_id)
        return [_key_view(k) for k in keys]

    @post(
        "/approval-keys/rotation",
        operation_id="rotateApprovalKey",
        summary="Retire the approval key in use and make a new one; what the old key signed "
        "still verifies with its published public key (needs a recent authentication)",
        opt=requires(Permission.TENANT_MANAGE, step_up=True),
        status_code=200,
    )
    async def rotate_approval_key(
        self, request: Request[Any, Any, Any]
    ) -> Response[ApprovalKeyRotatedView]:
        runtime, principal = _context(request)
        rotated = await runtime.access.keys.rotate(principal.tenant_id, principal.actor)
        view = ApprovalKeyRotatedView(key=_key_view(rotated.key), retired_key_id=rotated.retired)
        return positioned(view, rotated.position)


class AccessRequestController(Controller):
    path = "/v1/access-requests"
    tags = ["access requests"]

    @post(
        "/",
        operation_id="submitAccessRequest",
        summary="Ask for an access level on a connector's resource, for a while",
        opt=requires(Permission.REQUESTS_SUBMIT),
    )
    async def submit(
        self, request: Request[Any, Any, Any], data: JSONBody[AccessRequestSubmit]
    ) -> Response[AccessRequestView]:
        runtime, principal = _context(request)
        written = await runtime.access.submit(principal, **_content(data))
        return positioned(_request_view(written.values["request"]), written.position, 201)

    @get(
        "/",
        operation_id="listAccessRequests",
        summary="The tenant's access requests, by id, a page at a time",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def list_all(
        self,
        request: Request[Any, Any, Any],
        requester_id: FromQuery[UUID | None] = None,
        status: FromQuery[RequestStatusName | None] = None,
        connector_id: FromQuery[UUID | None] = None,
        after: FromQuery[UUID | None] = None,
        limit: Limit = 100,
    ) -> AccessRequestPage:
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_requests(
                conn,
                principal.tenant_id,
                requester_id=requester_id,
                status=status,
                connector_id=connector_id,
                after=after,
                limit=limit,
            ),
        )
        return _page(rows, limit)

    @get(
        "/mine",
        operation_id="listMyAccessRequests",
        summary="The caller's own access requests",
        opt=requires(Permission.REQUESTS_SUBMIT),
    )
    async def mine(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[RequestStatusName | None] = None,
        after: FromQuery[UUID | None] = None,
        limit: Limit = 100,
    ) -> AccessRequestPage:
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_requests(
                conn,
                principal.tenant_id,
                requester_id=principal.member_id,
                status=status,
                after=after,
                limit=limit,
            ),
        )
        return _page(rows, limit)

    @get(
        "/waiting",
        operation_id="listAccessRequestsWaitingForMe",
        summary="Pending requests of others the caller has not decided on and that still "
        "need approvals",
        opt=requires(Permission.REQUESTS_APPROVE),
    )
    async def waiting(
        self,
        request: Request[Any, Any, Any],
        after: FromQuery[UUID | None] = None,
        limit: Limit = 100,
    ) -> AccessRequestPage:
        now = request.app.state.runtime.identity.ctx.now()
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: waiting_for(
                conn, principal.tenant_id, principal.member_id, now, after=after, limit=limit
            ),
        )
        return _page(rows, limit)

    @get(
        "/{request_id:uuid}",
        operation_id="getAccessRequest",
        summary="One request with its history: every step, and each decision's signature "
        "checked against the published key",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def get(
        self, request: Request[Any, Any, Any], request_id: FromPath[UUID]
    ) -> AccessRequestHistory:
        runtime, principal = _context(request)
        found = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: get_request(conn, principal.tenant_id, request_id),
        )
        if found is None:
            raise NotFoundError(f"no access request {request_id}")
        row, history = found
        keys = {
            k.key_id: k.public_key for k in await runtime.access.keys.published(principal.tenant_id)
        }
        return AccessRequestHistory(
            request=_request_view(row),
            history=[_history_entry(request_id, h, keys) for h in history],
        )

    @put(
        "/{request_id:uuid}",
        operation_id="editAccessRequest",
        summary="Change a pending request (the requester only); earlier approvals are void",
        opt=requires(Permission.REQUESTS_SUBMIT),
        status_code=200,
    )
    async def edit(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[UUID],
        data: JSONBody[AccessRequestSubmit],
    ) -> Response[AccessRequestView]:
        runtime, principal = _context(request)
        written = await runtime.access.edit(principal, request_id, **_content(data))
        return positioned(_request_view(written.values["request"]), written.position)

    @post(
        "/{request_id:uuid}/withdraw",
        operation_id="withdrawAccessRequest",
        summary="Withdraw a pending request (the requester only)",
        opt=requires(Permission.REQUESTS_SUBMIT),
        status_code=204,
    )
    async def withdraw(
        self, request: Request[Any, Any, Any], request_id: FromPath[UUID]
    ) -> Response[None]:
        runtime, principal = _context(request)
        written = await runtime.access.withdraw(principal, request_id)
        return positioned(None, written.position, 204)

    @post(
        "/{request_id:uuid}/decisions",
        operation_id="decideAccessRequest",
        summary="Approve or reject another member's request, signed with the tenant's "
        "approval key (an interactive session only)",
        opt=requires(Permission.REQUESTS_APPROVE, session_only=True),
    )
    async def decide(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[UUID],
        data: JSONBody[DecisionBody],
    ) -> Response[DecisionView]:
        runtime, principal = _context(request)
        decided = await runtime.access.decide(principal, request_id, Decision(data.decision))
        body = DecisionView(
            request_id=request_id,
            decision=decided.decision.value,
            approval_id=decided.approval_id,
            approver_id=principal.member_id,
            decided_at=decided.decided_at,
            key_id=decided.key_id,
            signature=_b64(decided.signature),
            manifest=_b64(decided.manifest),
        )
        return positioned(body, decided.position, 201)

    @post(
        "/{request_id:uuid}/execution",
        operation_id="executeAccessRequest",
        summary="Consume the approvals (once) and issue the time-boxed grant (the requester only)",
        opt=requires(Permission.REQUESTS_SUBMIT),
    )
    async def execute(
        self, request: Request[Any, Any, Any], request_id: FromPath[UUID]
    ) -> Response[GrantView]:
        runtime, principal = _context(request)
        written = await runtime.access.execute(principal, request_id)
        return positioned(_grant_view(written.values["grant"]), written.position, 201)


def _page(rows: list[RequestRow], limit: int) -> AccessRequestPage:
    return AccessRequestPage(
        items=[_request_view(r) for r in rows],
        next_after=rows[-1].request_id if len(rows) == limit else None,
    )


class GrantController(Controller):
    path = "/v1/grants"
    tags = ["access requests"]

    @get(
        "/",
        operation_id="listGrants",
        summary="Grants by id; active=true: those active now (per member, resource, connector)",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def list_all(
        self,
        request: Request[Any, Any, Any],
        member_id: FromQuery[UUID | None] = None,
        resource: FromQuery[Resource | None] = None,
        connector_id: FromQuery[UUID | None] = None,
        active: FromQuery[bool] = False,
        after: FromQuery[UUID | None] = None,
        limit: Limit = 100,
    ) -> GrantPage:
        now = request.app.state.runtime.identity.ctx.now() if active else None
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_grants(
                conn,
                principal.tenant_id,
                member_id=member_id,
                resource=resource,
                connector_id=connector_id,
                active_at=now,
                after=after,
                limit=limit,
            ),
        )
        return GrantPage(
            items=[_grant_view(r) for r in rows],
            next_after=rows[-1].grant_id if len(rows) == limit else None,
        )

    @get(
        "/{grant_id:uuid}",
        operation_id="getGrant",
        summary="One grant",
        opt=requires(Permission.REQUESTS_READ),
    )
    async def get(self, request: Request[Any, Any, Any], grant_id: FromPath[UUID]) -> GrantView:
        row = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: get_grant(conn, principal.tenant_id, grant_id),
        )
        if row is None:
            raise NotFoundError(f"no grant {grant_id}")
        return _grant_view(row)

    @post(
        "/{grant_id:uuid}/revoke",
        operation_id="revokeGrant",
        summary="End a grant before it runs out",
        opt=requires(Permission.GRANTS_REVOKE),
        status_code=204,
    )
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[UUID],
        data: JSONBody[GrantRevoke | None] = None,
    ) -> Response[None]:
        runtime, principal = _context(request)
        written = await runtime.access.revoke(principal, grant_id, data.reason if data else None)
        return positioned(None, written.position, 204)
