"""The litestar application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from api.health import HealthController
from api.metrics import MetricsController
from api.middleware import add_security_headers
from api.problems import EXCEPTION_HANDLERS
from infra.runtime import Runtime, strongroom_version

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

    return Litestar(
        route_handlers=[HealthController, MetricsController],
        lifespan=[lifespan],
        before_send=[add_security_headers],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Strongroom",
            version=strongroom_version(),
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
    )
