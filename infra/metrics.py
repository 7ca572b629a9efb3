"""Prometheus metrics of the event pipeline (publisher, relay, projections).

Labels carry projection names and sources only: never tenant ids, event
content or anything personal. Served by the API at ``GET /metrics`` and by
``strongroom worker ... --metrics-port``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

APPEND_CALLS: Final = Counter(
    "strongroom_append_calls",
    "Calls of append_batch by how they were sent: 'direct' (nothing of the tenant in "
    "flight), 'pipelined' (planned behind a batch still committing), 'resent' (a pipelined "
    "call that reached the head before the batch ahead of it), 'careful' (one at a "
    "time: a command with an effect, an unknown head, or a retry after a rejected "
    "call), 'locked' (a retry after a stale head, planned while holding the head lock).",
    ["path"],
)
EVENTS_PUBLISHED: Final = Counter(
    "strongroom_events_published",
    "Events acknowledged by JetStream, by who published them (append or relay).",
    ["source"],
)
PUBLISH_FAILURES: Final = Counter(
    "strongroom_publish_failures",
    "Publish batches that failed or timed out (the relay publishes them later).",
    ["source"],
)
RELAY_BACKLOG: Final = Gauge(
    "strongroom_relay_backlog_events",
    "Committed events not yet published, seen by the relay's last scan.",
)
PROJECTED: Final = Counter(
    "strongroom_projection_events",
    "Events a projection moved past (applied or not handled).",
    ["projection"],
)
CAUGHT_UP_FROM_STORE: Final = Counter(
    "strongroom_projection_store_catchup_events",
    "Events a projection read from the store without a message for them in the batch"
    " (gaps, lost messages, sweeps).",
    ["projection"],
)
DUPLICATES: Final = Counter(
    "strongroom_projection_duplicate_messages",
    "Messages for events the projection had already applied.",
    ["projection"],
)
HANDLER_ERRORS: Final = Counter(
    "strongroom_projection_handler_errors",
    "Times a projector raised for an event (each retry counts).",
    ["projection"],
)
PARKED: Final = Gauge(
    "strongroom_projection_parked_partitions",
    "Tenant partitions of a projection parked on a failing event.",
    ["projection"],
)
LAG_EVENTS: Final = Gauge(
    "strongroom_projection_lag_events",
    "Events in the logs that a projection has not reached yet (last sweep).",
    ["projection"],
)
LAG_SECONDS: Final = Gauge(
    "strongroom_projection_lag_seconds",
    "Age of the oldest event in a projection's last committed batch (0 when caught up).",
    ["projection"],
)

HTTP_REQUESTS: Final = Counter(
    "strongroom_http_requests",
    "HTTP requests by method, route template (never the concrete path) and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS: Final = Histogram(
    "strongroom_http_request_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)

CHECKPOINTS_SIGNED: Final = Counter(
    "strongroom_checkpoints_signed",
    "Checkpoints the notary signed and stored.",
)
NOTARY_REFUSALS: Final = Counter(
    "strongroom_notary_refusals",
    "Times the notary refused to sign because the stored log does not extend its last "
    "checkpoint (an alert: someone rewrote history), by reason code.",
    ["reason"],
)
NOTARY_REFUSED_TENANTS: Final = Gauge(
    "strongroom_notary_refused_tenants",
    "Tenants the notary will not sign until an operator has investigated (this process).",
)
NOTARY_BACKLOG: Final = Gauge(
    "strongroom_notary_backlog",
    "Tenants whose log had grown past their latest checkpoint at the last round.",
)
COSIGNATURES: Final = Counter(
    "strongroom_witness_cosignatures",
    "Witness cosignatures attached to checkpoints, by witness key name.",
    ["witness"],
)
