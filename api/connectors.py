"""Connectors: register, read (from the connectors read model), configure, pause, resume,
and set a credential (write-only: it is never returned)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.access import principal_of, requires
from api.positions import positioned, read_model
from api.schemas import (
    ConnectorConfigChange,
    ConnectorCreate,
    ConnectorCreated,
    ConnectorCredentialSet,
    ConnectorKind,
    ConnectorPage,
    ConnectorView,
)
from domain.errors import NotFoundError
from domain.permissions import Permission
from infra.runtime import Runtime
from projections.connectors import (
    ConnectorRow,
    ConnectorsProjection,
    get_connector,
    list_connectors,
)

_PROJECTION = ConnectorsProjection.name


def _view(row: ConnectorRow) -> ConnectorView:
    return ConnectorView(
        connector_id=row.connector_id,
        kind=row.kind,
        name=row.name,
        config=row.config,
        status="paused" if row.status == "paused" else "active",
        rotating=row.rotating,
        credential_kind=row.credential_kind,
        credential_version=row.credential_version,
        fingerprint=row.fingerprint,
        rotated_at=row.rotated_at,
        registered_at=row.registered_at,
        updated_at=row.updated_at,
        version=row.version,
    )


class ConnectorController(Controller):
    path = "/v1/connectors"
    tags = ["connectors"]

    @get(
        "/",
        operation_id="listConnectors",
        summary="The tenant's connectors, by id, a page at a time (no credential, ever)",
        opt=requires(Permission.CONNECTORS_READ),
    )
    async def list_all(
        self,
        request: Request[Any, Any, Any],
        kind: FromQuery[ConnectorKind | None] = None,
        status: FromQuery[Literal["active", "paused"] | None] = None,
        after: FromQuery[UUID | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> ConnectorPage:
        rows = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: list_connectors(
                conn, principal.tenant_id, kind=kind, status=status, after=after, limit=limit
            ),
        )
        return ConnectorPage(
            items=[_view(r) for r in rows],
            next_after=rows[-1].connector_id if len(rows) == limit else None,
        )

    @get(
        "/{connector_id:uuid}",
        operation_id="getConnector",
        summary="One connector: settings, status, and its credential's kind, version and "
        "fingerprint",
        opt=requires(Permission.CONNECTORS_READ),
    )
    async def get(
        self, request: Request[Any, Any, Any], connector_id: FromPath[UUID]
    ) -> ConnectorView:
        row = await read_model(
            request,
            _PROJECTION,
            lambda conn, principal: get_connector(conn, principal.tenant_id, connector_id),
        )
        if row is None:
            raise NotFoundError(f"no connector {connector_id}")
        return _view(row)

    @post(
        "/",
        operation_id="registerConnector",
        summary="Register a connector: a target system's kind, a name and non-secret settings",
        opt=requires(Permission.CONNECTORS_MANAGE),
    )
    async def register(
        self, request: Request[Any, Any, Any], data: JSONBody[ConnectorCreate]
    ) -> Response[ConnectorCreated]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.register(
            principal_of(request.scope), kind=data.kind, name=data.name, config=data.config
        )
        body = ConnectorCreated(connector_id=written.values["connector_id"])
        return positioned(body, written.position, 201)

    @put(
        "/{connector_id:uuid}/config",
        operation_id="changeConnectorConfig",
        summary="Replace a connector's non-secret settings",
        opt=requires(Permission.CONNECTORS_MANAGE),
        status_code=204,
    )
    async def change_config(
        self,
        request: Request[Any, Any, Any],
        connector_id: FromPath[UUID],
        data: JSONBody[ConnectorConfigChange],
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.change_config(
            principal_of(request.scope), connector_id, data.config
        )
        return positioned(None, written.position, 204)

    @post(
        "/{connector_id:uuid}/pause",
        operation_id="pauseConnector",
        summary="Pause a connector: its credential is not used until it is resumed",
        opt=requires(Permission.CONNECTORS_MANAGE),
        status_code=204,
    )
    async def pause(
        self, request: Request[Any, Any, Any], connector_id: FromPath[UUID]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.pause(principal_of(request.scope), connector_id)
        return positioned(None, written.position, 204)

    @post(
        "/{connector_id:uuid}/resume",
        operation_id="resumeConnector",
        summary="Resume a paused connector",
        opt=requires(Permission.CONNECTORS_MANAGE),
        status_code=204,
    )
    async def resume(
        self, request: Request[Any, Any, Any], connector_id: FromPath[UUID]
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.resume(principal_of(request.scope), connector_id)
        return positioned(None, written.position, 204)

    @put(
        "/{connector_id:uuid}/credential",
        operation_id="setConnectorCredential",
        summary="Set or rotate a connector's credential (write-only; needs a recent "
        "authentication). A rotation pauses the connector, validates the new credential, "
        "purges the old one and resumes; a refused credential answers 422 and the old one "
        "stays in use",
        opt=requires(Permission.CONNECTORS_MANAGE, step_up=True),
        status_code=204,
    )
    async def set_credential(
        self,
        request: Request[Any, Any, Any],
        connector_id: FromPath[UUID],
        data: JSONBody[ConnectorCredentialSet],
    ) -> Response[None]:
        runtime: Runtime = request.app.state.runtime
        written = await runtime.vault.set_credential(
            principal_of(request.scope), connector_id, data.kind, data.secret
        )
        return positioned(None, written.position, 204)
