"""API keys: issue, rotate, revoke, list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from api.access import principal_of, requires
from api.positions import positioned
from api.schemas import ApiKeyCreate, ApiKeyIssued, ApiKeyRotate, ApiKeyView
from domain.apikey import ApiKey
from domain.errors import ForbiddenError
from domain.permissions import Permission, parse_scopes
from infra.runtime import Runtime


def _issued(aggregate: ApiKey, key: str) -> ApiKeyIssued:
    return ApiKeyIssued(
        key_id=aggregate.id,
        key=key,
        prefix=aggregate.prefix,
        scopes=sorted(aggregate.scopes),
        expires_at=aggregate.expires_at,
    )


class ApiKeyController(Controller):
    path = "/v1/api-keys"
    tags = ["api keys"]

    @get(
        "/",
        operation_id="listApiKeys",
        summary="The caller's API keys (every member's with all=true and apikeys:manage)",
        opt=requires(Permission.APIKEYS_ISSUE),
    )
    async def list_keys(
        self, request: Request[Any, Any, Any], all: FromQuery[bool] = False
    ) -> list[ApiKeyView]:
        runtime: Runtime = request.app.state.runtime
        principal = principal_of(request.scope)
        if all and Permission.APIKEYS_MANAGE not in principal.permissions:
            raise ForbiddenError("listing every member's keys needs apikeys:manage")
        rows = await runtime.identity.api_keys.list(principal, every_member=all)
        return [ApiKeyView(**r) for r in rows]

    @post(
        "/",
        operation_id="issueApiKey",
        summary="Issue an API key with scopes within the caller's role; shown once",
        opt=requires(Permission.APIKEYS_ISSUE, step_up=True),
    )
    async def issue(
        self, request: Request[Any, Any, Any], data: JSONBody[ApiKeyCreate]
    ) -> Response[ApiKeyIssued]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.api_keys.create(
            principal_of(request.scope),
            name=data.name,
            scopes=parse_scopes(data.scopes),
            expires_at=data.expires_at,
        )
        body = _issued(written.values["aggregate"], written.values["key"])
        return positioned(body, written.position, 201)

    @post(
        "/{key_id:uuid}/rotate",
        operation_id="rotateApiKey",
        summary="Issue a successor key; this one keeps working for the overlap, then stops",
        opt=requires(Permission.APIKEYS_ISSUE, step_up=True),
    )
    async def rotate(
        self, request: Request[Any, Any, Any], key_id: FromPath[UUID], data: JSONBody[ApiKeyRotate]
    ) -> Response[ApiKeyIssued]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.api_keys.rotate(
            principal_of(request.scope), key_id, timedelta(seconds=data.overlap_seconds)
        )
        body = _issued(written.values["aggregate"], written.values["key"])
        return positioned(body, written.position, 201)

    @delete(
        "/{key_id:uuid}",
        operation_id="revokeApiKey",
        summary="Revoke a key (one's own; any member's with apikeys:manage)",
        opt=requires(Permission.APIKEYS_ISSUE),
        status_code=204,
    )
    async def revoke(
        self, request: Request[Any, Any, Any], key_id: FromPath[UUID]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.identity.api_keys.revoke(principal_of(request.scope), key_id)
        return positioned(None, written.position, 204)
