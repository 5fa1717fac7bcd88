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
BAD_INPUT = Counter(
    "whazing_gateway_bad_input_total",
    "Hostile or broken input refused by a decoder, by kind (too_large, bomb, too_deep, number, "
    "encoding, json, frame, jwt, internal); the traffic itself passed through untouched",
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
RECORD_ERRORS = Counter(
    "whazing_gateway_record_errors_total",
    "Records whose decode, inference or routing raised: only that record is lost (stage, error type)",
    ["stage", "error"],
    registry=REGISTRY,
)
OUTBOX_RETRIES = Counter(
    "whazing_gateway_outbox_retries_total",
    "Outbox writes retried after a failure (locked, disk full): the events wait, not yet accepted",
    registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "whazing_gateway_events_rejected_total",
    "Events never accepted: the outbox refused their data for good, or the gateway stopped while "
    "the outbox kept failing",
    ["reason"],
    registry=REGISTRY,
)
RECORDS_DROPPED = Counter(
    "whazing_gateway_records_dropped_total",
    "Raw records dropped for lack of room (memory: the proxy's buffer; journal: its disk bound)",
    ["reason"],
    registry=REGISTRY,
)
UNINSPECTED = Counter(
    "whazing_gateway_uninspected_total",
    "Frames larger than inspect_max_bytes, passed through without being read",
    ["kind"],
    registry=REGISTRY,
)
JOURNAL_BYTES = Gauge(
    "whazing_gateway_journal_bytes",
    "Bytes of raw records in the on-disk journal not yet consumed by the pipeline process",
    registry=REGISTRY,
)
PIPELINE_LAG = Gauge(
    "whazing_gateway_pipeline_lag_seconds",
    "Age of the last record the pipeline process committed, when it committed it",
    registry=REGISTRY,
)
PIPELINE_RESTARTS = Counter(
    "whazing_gateway_pipeline_restarts_total",
    "Restarts of the pipeline process (decode, infer, route, outbox writes)",
    registry=REGISTRY,
)


# -- mirroring a child process's metrics into this process's registry ---------------------------
# The pipeline runs in a child process; /metrics is served by the proxy's process. The child
# sends its counters (and the gauges below) as plain values; the parent adds the increase since
# the child's previous report, so the parent's own counts (hooks, drops) stay in the same series.
CHILD_GAUGES = ("whazing_gateway_spool_size", "whazing_gateway_pipeline_lag_seconds",
                "whazing_gateway_journal_bytes")


def _by_name() -> dict[str, Counter | Gauge]:
    out: dict[str, Counter | Gauge] = {}
    for value in list(globals().values()):
        if isinstance(value, (Counter, Gauge)):
            out[next(iter(value.describe())).name] = value
    return out


def snapshot() -> list[list]:
    """[name, labels, value] of every counter sample with a value, and of CHILD_GAUGES."""
    out: list[list] = []
    for family in REGISTRY.collect():
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    out.append([family.name, sample.labels, sample.value])
        elif family.type == "gauge" and family.name in CHILD_GAUGES:
            for sample in family.samples:
                out.append([family.name, sample.labels, sample.value])
    return out


class Mirror:
    """Applies a child's successive snapshots; `reset()` when a new child starts from zero."""

    def __init__(self) -> None:
        self._last: dict[tuple, float] = {}
        self._metrics = _by_name()

    def reset(self) -> None:
        self._last.clear()

    def apply(self, snap: list[list]) -> None:
        for name, labels, value in snap:
            metric = self._metrics.get(name)
            if metric is None:
                continue
            if isinstance(metric, Gauge):
                (metric.labels(**labels) if labels else metric).set(value)
                continue
            key = (name, tuple(sorted(labels.items())))
            delta = value - self._last.get(key, 0.0)
            self._last[key] = value
            if delta > 0:
                (metric.labels(**labels) if labels else metric).inc(delta)
