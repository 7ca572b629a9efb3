"""The litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)

from api.access import PUBLIC, Access, AccessMiddleware
from api.access_requests import AccessPolicyController, AccessRequestController, GrantController
from api.apikeys import ApiKeyController
from api.audit_events import AuditEventController
from api.auth import AccountController, AuthController
from api.connectors import ConnectorController
from api.events import EventController
from api.health import HealthController
from api.ledger import LedgerController
from api.members import InviteController, MemberController
from api.metrics import MetricsController
from api.middleware import add_security_headers
from api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON
from api.schemas import Request as RequestBody
from api.tenants import TenantController
from infra.runtime import Runtime, strongroom_version

OPENAPI_PATH = "/schema"
CONTROLLERS = [
    HealthController,
    MetricsController,
    TenantController,
    MemberController,
    InviteController,
    AuthController,
    AccountController,
    ApiKeyController,
    LedgerController,
    EventController,
    AccessPolicyController,
    AccessRequestController,
    GrantController,
    AuditEventController,
    ConnectorController,
]

MAX_BODY_BYTES = 1024 * 1024


def create_app(open_runtime: Callable[[], Awaitable[Runtime]]) -> Litestar:
    """An app whose lifespan opens the runtime (pools, clients) and closes it."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = await open_runtime()
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.close()

    app = Litestar(
        route_handlers=CONTROLLERS,
        lifespan=[lifespan],
        middleware=[AccessMiddleware],
        before_send=[add_security_headers],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Strongroom",
            version=strongroom_version(),
            path=OPENAPI_PATH,
            render_plugins=[JsonRenderPlugin()],
        ),
    )
    _declare_access(app)
    _document_conventions(app)
    return app


def _declare_access(app: Litestar) -> None:
    """Deny by default: a route that declares no access stops the app from starting.

    The OpenAPI document and litestar's automatic OPTIONS answers (the allowed
    methods of a path) are the exceptions, and they are public.
    """
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler.opt.get("access"), Access):
                continue
            if route.path.startswith(OPENAPI_PATH) or handler.http_methods == {"OPTIONS"}:
                handler.opt.update(PUBLIC)
                continue
            raise RuntimeError(f"route {route.path} declares no access (opt['access'])")


def _document_conventions(app: Litestar) -> None:
    """Say in the OpenAPI document what litestar cannot infer: request bodies refuse
    unknown fields, every error is problem+json (api/problems.py), a 204 has no body, a
    200 whose type the request chooses lists each (``opt["media_types"]``), and which
    credential each operation takes (from its declared access)."""
    document = app.openapi_schema
    document.components.security_schemes = {
        "bearer": SecurityScheme(
            type="http",
            scheme="bearer",
            description="a session token (srs_…) or an API key (sr_live_…); sessions also "
            "work as the __Host-strongroom_session cookie",
        ),
        "platform": SecurityScheme(
            type="http", scheme="bearer", description="the platform administrator token (srp_…)"
        ),
    }
    media_types = {
        str(handler.operation_id): handler.opt["media_types"]
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.opt.get("media_types") and handler.operation_id
    }
    accesses = {
        str(handler.operation_id): handler.opt["access"]
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if isinstance(handler.opt.get("access"), Access) and handler.operation_id
    }
    schemas = document.components.schemas or {}
    for struct in RequestBody.__subclasses__():
        if struct.__name__ in schemas:
            schemas[struct.__name__].additional_properties = False
    assert "Problem" in schemas, "registered by GET /health/ready's 503"
    problem = {PROBLEM_JSON: OpenAPIMediaType(schema=Reference("#/components/schemas/Problem"))}
    for item in (document.paths or {}).values():
        for operation in filter(None, (item.get, item.put, item.post, item.delete, item.patch)):
            responses = operation.responses = operation.responses or {}
            for status, response in responses.items():
                alternatives = media_types.get(operation.operation_id or "")
                if isinstance(response, OpenAPIResponse) and status == "200" and alternatives:
                    text = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
                    response.content = dict.fromkeys(alternatives, text)
                elif isinstance(response, OpenAPIResponse) and status == "204":
                    response.content = None
                elif isinstance(response, OpenAPIResponse) and status.startswith("4"):
                    response.content = problem
            responses["default"] = OpenAPIResponse("a problem (RFC 9457)", content=problem)
            access = accesses.get(operation.operation_id or "")
            if access is not None:
                operation.security = (
                    [] if access.public else [{"platform" if access.platform else "bearer": []}]
                )
