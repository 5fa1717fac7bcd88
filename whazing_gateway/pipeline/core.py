"""The straight data path behind the hooks: decode -> infer -> route -> outbox.

Hooks only `submit()` raw records (a non-blocking put on a bounded queue); one worker task
does the rest in arrival order, so the traffic never waits for the gateway and inference sees
the changes in the order the proxy saw them. Any failure is contained in its stage: counted,
logged at most once per kind per minute, and the worker goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import structlog

from whazing_gateway.decode import BodyError, DecodeError, Observation, RestCall, decode
from whazing_gateway.edge.records import Record, WsFrame
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.model import Delivery, Event
from whazing_gateway.ops import metrics

log = structlog.get_logger(__name__)


class ThrottledLog:
    """Log a kind of failure at most once per `period_s`, with how many were suppressed."""

    def __init__(self, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def error(self, kind: str, message: str, **context) -> bool:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        log.warning(message, kind=kind, suppressed_since_last=suppressed, **context)
        return True


class RecentFrames:
    """Byte-identical server frames seen within a few seconds (one copy per open browser tab).

    Only the first copy is parsed; the inference would find nothing new in the others anyway.
    """

    def __init__(self, window_s: float = 5.0, max_items: int = 4096) -> None:
        self.window_s = window_s
        self.max_items = max_items
        self._seen: OrderedDict[int, float] = OrderedDict()

    def seen(self, content: bytes, now: float) -> bool:
        key = hash(content)
        ts = self._seen.get(key)
        if ts is not None and now - ts < self.window_s:
            return True
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_items:
            self._seen.popitem(last=False)
        return False


@dataclass
class Result:
    """What one record produced, for flow annotations and for `replay`."""

    record: Record
    observations: list[Observation] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    accepted: bool = True


Route = Callable[[Event], Awaitable[list[Delivery]]]
Put = Callable[[Sequence[Delivery]], Awaitable[None]]


class Pipeline:
    def __init__(
        self,
        inferrer: Inferrer,
        route: Route,
        put: Put | None,
        *,
        json_limit: int = 1 << 20,
        queue_size: int = 20_000,
        max_batch: int = 64,
        on_result: Callable[[Result], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.inferrer = inferrer
        self.route = route
        self.put = put
        self.json_limit = json_limit
        self.on_result = on_result
        self.wake = wake
        self.queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self.max_batch = max_batch
        self.errors = ThrottledLog()
        self.frames = RecentFrames()
        self._task: asyncio.Task | None = None

    # -- hot path ------------------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Called from mitmproxy hooks: never blocks, never raises."""
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            metrics.OBSERVATIONS_DROPPED.inc()
            self.errors.error("queue_full", "inference queue full: observation dropped, traffic unaffected")

    # -- worker --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="whazing-pipeline")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Process what is queued (bounded by a timeout), then stop the worker."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.queue.join(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("pipeline stopped with observations still queued", queued=self.queue.qsize())
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            # Under load, take what is already queued: one outbox transaction (one fsync) for
            # the whole batch instead of one per event. With little traffic a batch is one record.
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self.process_batch(batch)
            except Exception as exc:  # a bug in a stage must never stop the worker
                metrics.STAGE_ERRORS.labels("pipeline").inc()
                self.errors.error("pipeline", "unexpected error in the pipeline", error=repr(exc),
                                  flow_id=getattr(batch[0], "flow_id", None))
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def process(self, record: Record) -> Result:
        return (await self.process_batch([record]))[0]

    async def process_batch(self, records: Sequence[Record]) -> list[Result]:
        """decode -> infer -> route each record, then ONE outbox put for every delivery, then
        the inference state is committed (only once the outbox has the deliveries)."""
        results = []
        for record in records:
            results.append(await self._infer_and_route(record))
            if len(records) > 1:
                await asyncio.sleep(0)  # the proxy shares this loop: let it run between records
        deliveries = [d for r in results for d in r.deliveries]
        if deliveries and self.put is not None:
            try:
                await self.put(deliveries)
            except Exception as exc:
                metrics.STAGE_ERRORS.labels("outbox").inc()
                for r in results:
                    r.accepted = False
                log.error("outbox write failed: events NOT accepted", error=repr(exc),
                          event_ids=[e.id for r in results for e in r.events][:20], deliveries=len(deliveries))
            else:
                if self.wake is not None:
                    self.wake()
        await self._commit([e for r in results for e in r.events])
        if self.on_result is not None:
            for result in results:
                if result.events or result.deliveries:
                    try:
                        self.on_result(result)
                    except Exception as exc:
                        metrics.STAGE_ERRORS.labels("annotate").inc()
                        self.errors.error("annotate", "flow annotation failed", error=repr(exc))
        return results

    async def _infer_and_route(self, record: Record) -> Result:
        result = Result(record)
        if isinstance(record, WsFrame) and self.frames.seen(record.content, record.ts):
            return result
        try:
            result.observations = decode(record, self.json_limit)
        except (DecodeError, BodyError) as exc:
            kind = "frame" if isinstance(record, WsFrame) else "body"
            metrics.DECODE_ERRORS.labels(kind).inc()
            self.errors.error(f"decode_{kind}", "undecodable traffic passed through untouched",
                              error=str(exc), flow_id=record.flow_id)
            return result
        for obs in result.observations:
            metrics.OBSERVATIONS.labels("rest" if isinstance(obs, RestCall) else "socket").inc()
            try:
                events = await self.inferrer.infer(obs)
            except Exception as exc:
                metrics.STAGE_ERRORS.labels("infer").inc()
                self.errors.error("infer", "inference failed for an observation", error=repr(exc),
                                  flow_id=record.flow_id)
                continue
            for event in events:
                result.events.append(event)
                await self._route(event, result)
        return result

    async def _commit(self, events: list[Event]) -> None:
        """After the outbox has the deliveries: mark the events seen, write the ticket state."""
        try:
            first = await self.inferrer.commit(events)
        except Exception as exc:
            metrics.STAGE_ERRORS.labels("state").inc()
            self.errors.error("state", "state store write failed", error=repr(exc))
            return
        for event, new in zip(events, first):
            if not new:  # another replica inferred it at the same moment: one delivery all the same
                metrics.EVENTS_DUPLICATE.inc()
                continue
            metrics.EVENTS.labels(event.type).inc()
            log.info("event", event_id=event.id, type=event.type, ticket_id=event.ticket_id,
                     tenant_id=event.tenant_id, changes=_changes_text(event), flow_id=event.flow_id)

    async def _route(self, event: Event, result: Result) -> None:
        try:
            result.deliveries.extend(await self.route(event))
        except Exception as exc:
            metrics.STAGE_ERRORS.labels("route").inc()
            self.errors.error("route", "routing failed for an event", error=repr(exc), event_id=event.id)


def _changes_text(event: Event) -> str:
    return ", ".join(f"{k} {a}->{b}" for k, (a, b) in event.changes.items())
