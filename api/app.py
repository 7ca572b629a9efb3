"""The litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.enums import ParamType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
)

from api.access import COMMAND_METHODS, PUBLIC, Access, AccessMiddleware
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
from api.positions import MIN_POSITION, POSITION, WAIT_SECONDS
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
    200 whose type the request chooses lists each (``opt["media_types"]``), which
    credential each operation takes (from its declared access), the headers no signature
    shows (:func:`_document_headers`), and the 429 of every rate-limited operation."""
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
    reads_model = {
        str(handler.operation_id)
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.operation_id and _calls(handler.fn, _READ_MODEL_FUNCTIONS)
    }
    for item in (document.paths or {}).values():
        methods = (
            ("GET", item.get),
            ("PUT", item.put),
            ("POST", item.post),
            ("DELETE", item.delete),
            ("PATCH", item.patch),
        )
        for method, operation in methods:
            if operation is None:
                continue
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
            _document_headers(
                operation,
                command=access is not None and not access.public and method in COMMAND_METHODS,
                reads_model=operation.operation_id in reads_model,
            )
            if access is not None and access.rate_limited:
                responses["429"] = OpenAPIResponse(
                    "too many requests: wait Retry-After seconds (RFC 9457 problem)",
                    content=problem,
                    headers=_RATE_LIMITED,
                )


_READ_MODEL_FUNCTIONS = frozenset({"read_model", "wait_for_min_position"})


def _calls(handler: object, names: frozenset[str]) -> bool:
    """Whether a handler's own code names one of ``names`` (api/positions.py's entry
    points that honour ``Strongroom-Min-Position``). A handler must call them itself:
    one reached through a helper of its module would go undocumented."""
    function = getattr(handler, "value", handler)  # litestar may wrap it in a Ref
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return code is not None and not names.isdisjoint(code.co_names)


_IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in=ParamType.HEADER,
    required=False,
    description="1 to 255 printable characters: the same key and request again returns "
    "the first response byte for byte (with `Idempotent-Replayed: true`); the same key "
    "with another request is 422, while the first still runs 409; kept 24 h",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255),
)
_MIN_POSITION = Parameter(
    name=MIN_POSITION,
    param_in=ParamType.HEADER,
    required=False,
    description=f"read your writes: wait up to {WAIT_SECONDS:g} s until the read model has "
    f"reached this tenant log position (a command's `{POSITION}`), else 503",
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
)
_POSITION = OpenAPIHeader(
    description="the tenant log position this command's events reached; send it as "
    f"`{MIN_POSITION}` to read them back (0, or no header, when it appended nothing)",
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
)


_RATE_LIMITED: dict[str, OpenAPIHeader | Reference] = {
    "Retry-After": OpenAPIHeader(
        description="seconds until a request would pass",
        schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    ),
    "RateLimit-Policy": OpenAPIHeader(
        description='the limit that refused it, e.g. `"principal";q=6000;w=60` (quota per window '
        "in seconds; a tenth of it may come at once)",
        schema=Schema(type=OpenAPIType.STRING),
    ),
    "RateLimit": OpenAPIHeader(
        description='what is left of it, e.g. `"principal";r=0;t=1`',
        schema=Schema(type=OpenAPIType.STRING),
    ),
}


def _document_headers(operation: Operation, *, command: bool, reads_model: bool) -> None:
    """The headers the middleware and handlers read or write that no signature shows:
    ``Idempotency-Key`` and ``Strongroom-Position`` on every command a principal sends,
    ``Strongroom-Min-Position`` on every query of a read model."""
    added: list[Parameter | Reference] = []
    if command:
        added.append(_IDEMPOTENCY_KEY)
        for status, response in (operation.responses or {}).items():
            if isinstance(response, OpenAPIResponse) and status.startswith("2"):
                response.headers = {**(response.headers or {}), POSITION: _POSITION}
    if reads_model:
        added.append(_MIN_POSITION)
    if added:
        operation.parameters = [*(operation.parameters or []), *added]
