"""``GET /metrics``: Prometheus text format, from the process's default registry.

Labels hold route templates, projection names and sources: never tenant ids,
personal data or secrets. Expose it to the monitoring network only.
"""

from __future__ import annotations

from litestar import Controller, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.access import PROBE


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get(
        operation_id="getMetrics",
        summary="Prometheus metrics (no tenant ids, personal data or secrets in labels)",
        opt=PROBE,
        media_type=CONTENT_TYPE_LATEST,
    )
    async def metrics(self) -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
