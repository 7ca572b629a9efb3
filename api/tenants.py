"""Tenants: created by the platform administrator; settings managed by the tenant."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post, put
from litestar.params import JSONBody

from api.access import PLATFORM, principal_of, requires
from api.positions import positioned
from api.schemas import (
    SettingsChange,
    TenantCreate,
    TenantCreated,
    TenantKeyRotated,
    TenantSettings,
    TenantView,
)
from domain.permissions import Permission
from domain.tenant import Tenant
from infra.runtime import Runtime


def _view(tenant: Tenant) -> TenantView:
    return TenantView(
        tenant_id=tenant.id,
        name=tenant.name,
        slug=tenant.slug,
        settings=TenantSettings(
            mfa_required=tenant.mfa_required,
            session_idle_minutes=tenant.session_idle_minutes,
            session_absolute_hours=tenant.session_absolute_hours,
        ),
    )


class TenantController(Controller):
    path = "/v1"
    tags = ["tenants"]

    @post(
        "/tenants",
        operation_id="createTenant",
        summary="Create a tenant and invite its first owner (platform administrator only)",
        opt=PLATFORM,
    )
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[TenantCreate]
    ) -> Response[TenantCreated]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.tenants.create(data.name, data.slug, data.owner_email)
        body = TenantCreated(
            tenant_id=written.values["tenant_id"],
            slug=data.slug,
            owner_member_id=written.values["owner_member_id"],
            invite_token=written.values["invite_token"],
        )
        return positioned(body, written.position, 201)

    @get(
        "/tenant",
        operation_id="getTenant",
        summary="The caller's tenant and its settings",
        opt=requires(Permission.TENANT_READ),
    )
    async def get(self, request: Request[Any, Any, Any]) -> TenantView:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        return _view(await runtime.identity.tenants.settings(principal.tenant_id))

    @put(
        "/tenant/settings",
        operation_id="changeTenantSettings",
        summary="Change MFA and session settings (needs a recent authentication)",
        opt=requires(Permission.TENANT_MANAGE, step_up=True),
    )
    async def change(
        self, request: Request[Any, Any, Any], data: JSONBody[SettingsChange]
    ) -> Response[TenantView]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        written = await runtime.identity.tenants.change_settings(
            principal,
            mfa_required=data.mfa_required,
            session_idle_minutes=data.session_idle_minutes,
            session_absolute_hours=data.session_absolute_hours,
        )
        tenant = await runtime.identity.tenants.settings(principal.tenant_id)
        return positioned(_view(tenant), written.position)

    @post(
        "/tenant/key-rotation",
        operation_id="rotateTenantKey",
        summary="Make a new primary tenant key and re-wrap every data key under it; no "
        "ciphertext of a value changes, older keys still decrypt (needs a recent "
        "authentication)",
        opt=requires(Permission.TENANT_MANAGE, step_up=True),
        status_code=200,
    )
    async def rotate_key(self, request: Request[Any, Any, Any]) -> Response[TenantKeyRotated]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.rotate_tenant_key(principal_of(request.scope))
        return positioned(TenantKeyRotated(**written.values), written.position)
