"""Prometheus metrics of the gateway, one registry for the process.

Every stage counts here; `whazing_gateway/ops/server.py` serves them on the side port with /healthz and /readyz.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)


class WithChildren(Collector):
    """A histogram of this process plus what child processes observed of it.

    Deliveries are timed in the delivery worker; /metrics is served here. A child reports its
    cumulative samples now and then (`Mirror`), and they are added to this process's own at
    collection: the proxy's loop pays per report, not per delivery."""

    def __init__(self, metric: Histogram) -> None:
        self.metric = metric
        self.added: dict[tuple[str, tuple], float] = {}  # (sample name, sorted labels) -> sum of children's

    def describe(self) -> list[Metric]:
        return list(self.metric.describe())

    def collect(self) -> Iterator[Metric]:
        for family in self.metric.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            seen = set()
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                seen.add(key)
                out.add_sample(s.name, s.labels, s.value + self.added.get(key, 0.0), s.timestamp, s.exemplar)
            for key, value in list(self.added.items()):
                if key not in seen:
                    out.add_sample(key[0], dict(key[1]), value)
            yield out


_WITH_CHILDREN: list[WithChildren] = []


def _mirrored_histogram(name: str, documentation: str, labels: list[str], buckets: tuple) -> Histogram:
    metric = Histogram(name, documentation, labels, registry=None, buckets=buckets)
    collector = WithChildren(metric)
    REGISTRY.register(collector)
    _WITH_CHILDREN.append(collector)
    return metric

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
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DELIVERY_LATENCY = _mirrored_histogram(
    "whazing_gateway_delivery_latency_seconds",
    "HTTP latency of one delivery attempt",
    ["target"],
    buckets=LATENCY_BUCKETS,
)
EVENT_TO_DELIVERY = _mirrored_histogram(
    "whazing_gateway_event_to_delivery_seconds",
    "Time from the event's observation to its successful delivery",
    ["target"],
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
PIPELINE_DEFERRED = Counter(
    "whazing_gateway_pipeline_deferred_seconds",
    "Seconds the pipeline process held its work while the proxy was saturated (proxy.defer_max)",
    registry=REGISTRY,
)
PIPELINE_RESTARTS = Counter(
    "whazing_gateway_pipeline_restarts_total",
    "Restarts of the pipeline process (decode, infer, route, outbox writes)",
    registry=REGISTRY,
)


# -- mirroring a child process's metrics into this process's registry ---------------------------
# The pipeline and the delivery worker run in child processes; /metrics is served by the proxy's
# process. A child sends its counters, histograms and the gauges below as plain cumulative
# values; the parent adds the increase since that child's previous report, so the parent's own
# counts (hooks, drops) and both children's stay in the same series.
CHILD_GAUGES = ("whazing_gateway_spool_size", "whazing_gateway_pipeline_lag_seconds",
                "whazing_gateway_journal_bytes")
_HISTOGRAM_SAMPLES = ("_bucket", "_count", "_sum")


def _by_name() -> dict[str, Counter | Gauge]:
    out: dict[str, Counter | Gauge] = {}
    for value in list(globals().values()):
        if isinstance(value, (Counter, Gauge)):
            out[next(iter(value.describe())).name] = value
    return out


def _histograms_by_sample() -> dict[str, WithChildren]:
    out: dict[str, WithChildren] = {}
    for collector in _WITH_CHILDREN:
        for suffix in _HISTOGRAM_SAMPLES:
            out[next(iter(collector.describe())).name + suffix] = collector
    return out


def snapshot(skip: frozenset[str] = frozenset(), gauges: bool = True) -> list[list]:
    """[name, labels, value] of every counter and histogram sample with a value, and of
    CHILD_GAUGES (unless `gauges` is False); families named in `skip` left out."""
    out: list[list] = []
    for family in REGISTRY.collect():
        if family.name in skip:
            continue
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    out.append([family.name, sample.labels, sample.value])
        elif family.type == "histogram":
            for sample in family.samples:
                if sample.name.endswith(_HISTOGRAM_SAMPLES) and sample.value:
                    out.append([sample.name, sample.labels, sample.value])
        elif gauges and family.type == "gauge" and family.name in CHILD_GAUGES:
            for sample in family.samples:
                out.append([family.name, sample.labels, sample.value])
    return out


class Changes:
    """A child's side: the snapshot's values that changed since its previous report (the
    parent keeps the rest)."""

    def __init__(self, skip: frozenset[str] = frozenset(), gauges: bool = True) -> None:
        self.skip = skip
        self.gauges = gauges
        self._last: dict[tuple, float] = {}

    def __call__(self) -> list[list]:
        changed = []
        for name, labels, value in snapshot(self.skip, self.gauges):
            key = (name, tuple(sorted(labels.items())))
            if self._last.get(key) != value:
                self._last[key] = value
                changed.append([name, labels, value])
        return changed


class Mirror:
    """Applies a child's successive snapshots; `reset()` when a new child starts from zero."""

    def __init__(self) -> None:
        self._last: dict[tuple, float] = {}
        self._metrics = _by_name()
        self._histograms = _histograms_by_sample()

    def reset(self) -> None:
        self._last.clear()

    def apply(self, snap: list[list]) -> None:
        for name, labels, value in snap:
            metric = self._metrics.get(name)
            if isinstance(metric, Gauge):
                (metric.labels(**labels) if labels else metric).set(value)
                continue
            histogram = self._histograms.get(name) if metric is None else None
            if metric is None and histogram is None:
                continue
            key = (name, tuple(sorted(labels.items())))
            delta = value - self._last.get(key, 0.0)
            self._last[key] = value
            if delta <= 0:
                continue
            if histogram is not None:
                histogram.added[key] = histogram.added.get(key, 0.0) + delta
            elif metric is not None:
                (metric.labels(**labels) if labels else metric).inc(delta)
