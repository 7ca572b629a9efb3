"""``GET /metrics``: Prometheus text format, from the process's default registry.

Labels hold route templates, projection names and sources: never tenant ids,
personal data or secrets. Expose it to the monitoring network only.
"""

from __future__ import annotations

from litestar import Controller, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get(operation_id="getMetrics", summary="Prometheus metrics", include_in_schema=True)
    async def metrics(self) -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
