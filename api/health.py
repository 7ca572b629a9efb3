"""Liveness and readiness."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.openapi import ResponseSpec

from api.access import PROBE
from api.problems import PROBLEM_JSON, Problem, problem
from infra.runtime import strongroom_version

if TYPE_CHECKING:
    from infra.runtime import Runtime


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    version: str
    checks: dict[str, bool] = msgspec.field(default_factory=dict)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", operation_id="getLiveness", summary="The process is up", opt=PROBE)
    async def live(self) -> Health:
        return Health(status="ok", version=strongroom_version())

    @get(
        "/ready",
        operation_id="getReadiness",
        summary="PostgreSQL and NATS answer",
        opt=PROBE,
        responses={503: ResponseSpec(Problem, description="not ready", media_type=PROBLEM_JSON)},
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Any]:
        runtime: Runtime = request.app.state.runtime
        checks = await runtime.readiness()
        if all(checks.values()):
            return Response(Health(status="ok", version=strongroom_version(), checks=checks))
        failing = ", ".join(name for name, ok in checks.items() if not ok)
        return problem(503, f"not ready: {failing} unreachable", slug="not-ready", checks=checks)
