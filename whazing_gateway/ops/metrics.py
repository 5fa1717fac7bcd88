"""Prometheus metrics of the gateway, one registry for the process.

Every stage counts here; `whazing_gateway/ops/server.py` serves them on the side port with /healthz and /readyz.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

OBSERVATIONS = Counter(
    "whazing_gateway_observations_total",
    "Decoded observations by kind (rest, socket)",
    ["kind"],
    registry=REGISTRY,
)
DECODE_ERRORS = Counter(
    "whazing_gateway_decode_errors_total",
    "Bodies or frames that could not be decoded (passed through untouched)",
    ["kind"],
    registry=REGISTRY,
)
STAGE_ERRORS = Counter(
    "whazing_gateway_stage_errors_total",
    "Exceptions caught in a stage (the traffic went on)",
    ["stage"],
    registry=REGISTRY,
)
OBSERVATIONS_DROPPED = Counter(
    "whazing_gateway_observations_dropped_total",
    "Observations dropped because the inference queue was full (traffic unaffected)",
    registry=REGISTRY,
)
EVENTS = Counter(
    "whazing_gateway_events_total",
    "Inferred events by type",
    ["type"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "whazing_gateway_events_duplicate_total",
    "Inferred events dropped as duplicates of one already seen",
    registry=REGISTRY,
)
DELIVERIES_ROUTED = Counter(
    "whazing_gateway_deliveries_routed_total",
    "Deliveries created by the rules, by target and event type",
    ["target", "type"],
    registry=REGISTRY,
)
OUTBOX_ERRORS = Counter(
    "whazing_gateway_outbox_errors_total",
    "Failed writes to the outbox",
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "whazing_gateway_outbox_pending",
    "Deliveries waiting in the outbox (pending or retrying)",
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "whazing_gateway_delivery_attempts_total",
    "Delivery attempts by target and outcome (success, retry, dead)",
    ["target", "outcome"],
    registry=REGISTRY,
)
DELIVERIES_DONE = Counter(
    "whazing_gateway_deliveries_total",
    "Deliveries finished by target and outcome (delivered, dead)",
    ["target", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "whazing_gateway_dead_letters_total",
    "Deliveries moved to the dead-letter list",
    ["target"],
    registry=REGISTRY,
)
TARGET_STATE = Gauge(
    "whazing_gateway_target_state",
    "1 for the current delivery health of each target (healthy, failing, paused)",
    ["target", "state"],
    registry=REGISTRY,
)
TARGET_PENDING = Gauge(
    "whazing_gateway_target_pending",
    "Deliveries waiting for each target (held while it is failing or paused)",
    ["target"],
    registry=REGISTRY,
)
TARGET_NEXT_PROBE = Gauge(
    "whazing_gateway_target_next_probe_timestamp_seconds",
    "When a failing target is probed next (unix seconds; 0 while healthy)",
    ["target"],
    registry=REGISTRY,
)
TARGET_PROBES = Counter(
    "whazing_gateway_target_probes_total",
    "Probes of failing targets (one held delivery) by outcome (success, failure)",
    ["target", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "whazing_gateway_delivery_latency_seconds",
    "HTTP latency of one delivery attempt",
    ["target"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_TO_DELIVERY = Histogram(
    "whazing_gateway_event_to_delivery_seconds",
    "Time from the event's observation to its successful delivery",
    ["target"],
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300, 3600),
)
RULES_RELOADS = Counter(
    "whazing_gateway_rules_reloads_total",
    "Rules reloads by outcome (ok, refused)",
    ["outcome"],
    registry=REGISTRY,
)
SPOOL_DROPPED = Counter(
    "whazing_gateway_spool_dropped_total",
    "Deliveries lost because the local spool overflowed while Redis was down",
    registry=REGISTRY,
)
CATCHUP_RUNS = Counter(
    "whazing_gateway_catchup_runs_total",
    "Catch-ups after a (re)start or an observer reconnect, by outcome (ok, failed, skipped)",
    ["outcome"],
    registry=REGISTRY,
)
CATCHUP_TICKETS = Counter(
    "whazing_gateway_catchup_tickets_total",
    "Tickets the catch-up found changed while the gateway was away (created, changed)",
    ["kind"],
    registry=REGISTRY,
)
CATCHUP_MESSAGE_GAPS = Counter(
    "whazing_gateway_catchup_message_gaps_total",
    "Tickets with messages missed while the gateway was away (not fetched: that marks them read)",
    registry=REGISTRY,
)
OBSERVER_CONNECTED = Gauge(
    "whazing_gateway_observer_connected",
    "1 while the gateway's own socket.io observer is connected",
    registry=REGISTRY,
)
SPOOL_SIZE = Gauge(
    "whazing_gateway_spool_size",
    "Deliveries waiting in the local spool for Redis to come back (Redis backend)",
    registry=REGISTRY,
)
