"""The mitmproxy edge: the addon that `addons/gateway.py` hands to `mitmdump -s` / `mitmweb -s`.

Hooks are the hot path of every request and every websocket frame: they only decide, with a
prefix test or a route lookup, whether a record is worth reading, and hand the raw record to
the journal's bounded buffer. Everything else (decode, infer, route, outbox writes) runs in the
pipeline process and delivery in the delivery worker, so the gateway can fail, stall or
restart without the traffic noticing.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING

import structlog
from mitmproxy import ctx, exceptions, hooks
from mitmproxy import flow as mflow

from whazing_gateway.config import ConfigError, Settings, load_settings
from whazing_gateway.edge import running as running_values
from whazing_gateway.decode import routes
from whazing_gateway.edge import records as traffic
from whazing_gateway.edge import ws_limits
from whazing_gateway.ops import metrics
from whazing_gateway.pipeline.core import ThrottledLog

if TYPE_CHECKING:
    from whazing_gateway.pipeline.services import Services

log = structlog.get_logger(__name__)

# Websocket frames worth reading: server events `42[...]` on a `:ticketList` channel. The test
# runs on raw bytes, so the thousands of other frames (pings, presence, other channels) cost
# two slice comparisons and a short substring search each.
_EVENT_PREFIX = b"42["
_CHANNEL_MARK = b'List"'
# Frames kept per live websocket flow: an agent's tab stays open for days.
WS_KEEP_MESSAGES = 200


def wants_request(flow) -> bool:
    """A request read before it is answered: a creation announces the push that follows."""
    method = flow.request.method
    if method == "GET":
        return False
    route = routes.match(method, flow.request.path.partition("?")[0])
    return route is not None and route.kind in routes.READ_REQUEST


def wants_response(flow) -> bool:
    route = routes.match(flow.request.method, flow.request.path.partition("?")[0])
    return route is not None and route.kind in routes.READ_RESPONSE


def wants_frame(message) -> bool:
    """A server frame that may carry a Whazing push (`42["1:ticketList",...`)."""
    if message.from_client:
        return False
    content = message.content
    return content[:3] == _EVENT_PREFIX and _CHANNEL_MARK in content[:80]


class FlowNotes:
    """Shows, on each flow, the events it caused and what became of their deliveries.

    mitmweb displays `flow.comment` and the mark; the details go to `flow.metadata["whazing"]`
    (searchable with `~meta`). Flows are held weakly: a flow dropped by the viewer is not kept
    alive for its annotations.

    Results come from the pipeline process and outcomes from the delivery worker, over two pipes:
    the worker can deliver what the outbox just committed before the pipeline's result line is
    read, so an outcome for a delivery not yet known waits (bounded) for its result.
    """

    MAX_LINES = 50
    MAX_META = 200
    MAX_EARLY = 10_000

    def __init__(self) -> None:
        self.flows: weakref.WeakValueDictionary[str, mflow.Flow] = weakref.WeakValueDictionary()
        self.by_delivery: dict[str, str] = {}
        self.early: dict[str, list[tuple[str, str, str]]] = {}  # delivery id -> outcomes seen first

    def track(self, flow) -> None:
        self.flows[flow.id] = flow

    def on_result(self, summary: dict) -> None:
        """`summary`: `Result.summary()`, made where the pipeline runs (its own process)."""
        flow = self.flows.get(summary["flow_id"])
        if flow is None:
            return
        accepted = summary["accepted"]
        meta = flow.metadata.setdefault("whazing", {"events": [], "deliveries": {}})
        lines = flow.comment.splitlines() if flow.comment else []
        for ev in summary["events"]:
            change = ", ".join(f"{k} {a}->{b}" for k, (a, b) in ev["changes"].items())
            lines.append(f"{ev['type']} #{ev['ticket']}" + (f" {change}" if change else "")
                         + (f" ({ev['origin']})" if ev.get("origin") else ""))
            meta["events"].append({"id": ev["id"], "type": ev["type"], "ticket": ev["ticket"],
                                   "changes": ev["changes"]})
        for d in summary["deliveries"]:
            meta["deliveries"][d["id"]] = {"target": d["target"], "event": d["event"],
                                           "status": "queued" if accepted else "not accepted"}
            lines.append(f"  -> {d['target']}: {'queued' if accepted else 'NOT ACCEPTED (outbox error)'} [{d['id']}]")
            self.by_delivery[d["id"]] = flow.id
            if len(self.by_delivery) > 100_000:
                self.by_delivery.pop(next(iter(self.by_delivery)))
        # A websocket flow (the observer's, an agent's tab) lives for days: keep its details bounded.
        del meta["events"][: -self.MAX_META]
        while len(meta["deliveries"]) > self.MAX_META:
            meta["deliveries"].pop(next(iter(meta["deliveries"])))
        flow.comment = "\n".join(lines[-self.MAX_LINES:])
        flow.marked = ":default:"
        self._update(flow)
        for d in summary["deliveries"]:  # outcomes that came in before this result
            for outcome in self.early.pop(d["id"], ()):
                self.on_delivery(d["id"], *outcome)

    def on_delivery(self, delivery_id: str, target: str, outcome: str, detail: str) -> None:
        flow_id = self.by_delivery.get(delivery_id)
        if flow_id is None:  # its result line is not read yet (or its flow was never tracked)
            self.early.setdefault(delivery_id, []).append((target, outcome, detail))
            if len(self.early) > self.MAX_EARLY:
                self.early.pop(next(iter(self.early)))
            return
        flow = self.flows.get(flow_id)
        if flow is None:
            return
        info = flow.metadata.get("whazing", {}).get("deliveries", {}).get(delivery_id)
        if info is not None:
            info["status"] = outcome
            info["detail"] = detail
        lines = flow.comment.splitlines()
        lines.append(f"  <- {target}: {outcome} {detail} [{delivery_id}]")
        flow.comment = "\n".join(lines[-self.MAX_LINES:])
        if outcome == "dead":
            flow.marked = ":warning:"
        if outcome in ("delivered", "dead"):
            self.by_delivery.pop(delivery_id, None)
        self._update(flow)

    @staticmethod
    def _update(flow) -> None:
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:  # no master (tests) or a viewer that went away: annotations still stand
            pass


class FlowLimit:
    """Keep at most `max_flows` finished flows in mitmweb's view: a viewer open for days stays small."""

    def __init__(self, view, max_flows: int) -> None:
        self.view = view
        self.max_flows = max_flows
        self.order: deque = deque()

    def add(self, flow) -> None:
        """Count a finished flow (HTTP response, errored flow, websocket end); evict the oldest.

        A flow still live when its turn comes (rare: flows are added when they finish) keeps its
        place and goes once it is finished, instead of staying in the view for good."""
        view = self.view
        if self.max_flows <= 0:
            return
        self.order.append(weakref.ref(flow))
        excess = len(self.order) - self.max_flows
        if excess <= 0:
            return
        live: list = []
        old: list = []
        while self.order and excess > 0:
            ref = self.order.popleft()
            f = ref()
            if f is not None and f.live and f is not flow:
                live.append(ref)
                continue
            excess -= 1
            if f is not None and f is not flow and view.get_by_id(f.id) is not None:
                old.append(f)
        self.order.extendleft(reversed(live))
        if old:
            view.remove(old)


class Gateway:
    """Taps the traffic and owns the gateway's services for the life of the proxy."""

    def __init__(self) -> None:
        self.file_settings: Settings | None = None  # gateway.yaml as read; self.settings: in force
        self.settings: Settings | None = None
        self.services: Services | None = None
        self.notes = FlowNotes()
        self.annotate = True
        self.recording = False
        self.limit: FlowLimit | None = None
        self.errors = ThrottledLog()
        self.frame_limit = 1 << 20

    # -- options -----------------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option("whazing_config", str, "gateway.yaml",
                          "Whazing Gateway main config file (gateway.yaml).")
        running_values.add_options(loader)

    def configure(self, updated) -> None:
        if "save_stream_file" in updated:
            # While a capture is written (`-w` / save_stream_file), websocket history is kept
            # whole so `replay` sees every frame; otherwise it is trimmed to bound memory.
            self.recording = bool(getattr(ctx.options, "save_stream_file", None))
        if "whazing_config" in updated:
            try:
                self.file_settings = load_settings(ctx.options.whazing_config)
            except ConfigError as exc:
                raise exceptions.OptionsError(f"whazing_config: {exc}") from None
            except OSError as exc:
                raise exceptions.OptionsError(f"whazing_config: cannot read {ctx.options.whazing_config}: {exc}") from None
        if self.file_settings is not None and ("whazing_config" in updated or updated & running_values.RUNNING_OPTIONS):
            try:  # --mode, -p, --set win over gateway.yaml: the services, the log and /readyz use these
                self.settings = running_values.running_settings(self.file_settings, ctx.options)
            except ConfigError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    def running(self) -> None:
        from whazing_gateway.pipeline.services import Services

        if ctx.options.deferred:
            log.warning("unknown mitmproxy options ignored (misspelled --set?)", options=sorted(ctx.options.deferred))
        settings = self.settings
        if settings is None:  # configure() refused the config: mitmproxy stops before running
            return
        view = ctx.master.addons.get("view")
        # Only a flow viewer keeps flows: only then is there something to bound.
        self.limit = FlowLimit(view, settings.max_flows) if view is not None else None
        # Annotations are for eyes (the flow viewer) and for saved captures; without either,
        # they would only cost time on every event.
        self.annotate = view is not None or self.recording
        notes = self.notes if self.annotate else None
        self.frame_limit = settings.inspect_max_bytes
        ws_limits.install(settings.websocket_max_message)
        _gateway_errors_are_not_fatal()
        self.services = services = Services(settings, on_result=notes.on_result if notes else None,
                                            on_delivery=notes.on_delivery if notes else None)
        services.start_soon()

    async def done(self) -> None:
        if self.services is not None:
            import time

            t0 = time.monotonic()
            queued = self.services.queued()
            log.info("gateway stopping", observations_queued=queued,
                     hint="draining: queued observations are written to the journal (or inferred and "
                          "committed, with an inline pipeline) before exit")
            await self.services.stop()
            self.services = None
            log.info("gateway stopped", observations_drained=queued,
                     deliveries_pending=int(metrics.REGISTRY.get_sample_value("whazing_gateway_outbox_pending") or 0),
                     took_s=round(time.monotonic() - t0, 3))

    # -- hot path ----------------------------------------------------------------------------
    def _submit(self, flow, record) -> None:
        if self.annotate:
            self.notes.track(flow)
        services = self.services
        if services is not None:
            services.feed.submit(record)

    def request(self, flow) -> None:
        if self.services is None:
            return
        try:
            if wants_request(flow):
                self._submit(flow, traffic.request_record(flow))
        except Exception as exc:
            self._failed("request", exc, flow)

    def response(self, flow) -> None:
        if self.services is None:
            return
        try:
            if self.limit is not None and flow.websocket is None:  # websockets count when they end
                self.limit.add(flow)
            if wants_response(flow):
                self._submit(flow, traffic.exchange_record(flow))
        except Exception as exc:
            self._failed("response", exc, flow)

    def websocket_message(self, flow) -> None:
        if self.services is None:
            return
        try:
            messages = flow.websocket.messages
            msg = messages[-1]
            if wants_frame(msg):
                if len(msg.content) > self.frame_limit:  # like bodies: too big to read, passed on
                    metrics.UNINSPECTED.labels("frame").inc()
                else:
                    self._submit(flow, traffic.frame_record(flow.id, msg))
            if not self.recording:
                if len(messages) > WS_KEEP_MESSAGES:
                    del messages[: len(messages) - WS_KEEP_MESSAGES]
                # A message too big to read is not kept once passed on (it is forwarded from
                # mitmproxy's own reference): 200 of them would hold 200 x its size.
                if len(messages) > 1 and len(messages[-2].content) > self.frame_limit:
                    del messages[-2]
        except Exception as exc:
            self._failed("websocket", exc, flow)

    def websocket_end(self, flow) -> None:
        if self.limit is not None:
            self.limit.add(flow)

    def error(self, flow) -> None:
        """A flow that never got a response (client gone, upstream down) still takes a place."""
        if self.limit is not None and flow.websocket is None:
            self.limit.add(flow)

    def _failed(self, hook: str, exc: Exception, flow) -> None:
        metrics.STAGE_ERRORS.labels(f"hook_{hook}").inc()
        self.errors.error(f"hook_{hook}", "gateway hook failed; the flow goes on untouched",
                          error=repr(exc), flow_id=getattr(flow, "id", None))


def _gateway_errors_are_not_fatal() -> None:
    """mitmproxy exits 1 when anything logs an error during startup. The gateway's own errors
    (rules refused, outbox unwritable) never stop the proxy: it passes traffic and says why, and
    the hot reload picks up a fixed rules file. Only mitmproxy's own startup errors stay fatal."""
    import logging

    check = ctx.master.addons.get("errorcheck")
    handler = getattr(check, "logger", None)
    if isinstance(handler, logging.Handler):
        handler.addFilter(lambda record: not record.name.startswith("whazing_gateway"))
