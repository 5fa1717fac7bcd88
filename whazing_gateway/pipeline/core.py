"""The straight data path behind the hooks: decode -> infer -> route -> outbox.

The gateway runs it in a process of its own (`pipeline/child.py`, fed raw records through the
journal); `replay` and embedded uses run it in-process, where `submit()` is a non-blocking put
on a bounded queue. Either way one worker takes records in arrival order, so inference sees
the changes in the order the proxy saw them.

Acceptance: an event is logged (`event`) and counted (`events_total`) only once the outbox
holds its deliveries. A failed write is retried with backoff and the batch waits (the records
behind it wait in the bounded queue, or in the journal); until then the inference state is not
committed, so nothing is marked seen that the outbox does not have. One bad record costs only
itself: whatever its decode, inference or routing raises is contained, its uncommitted state
undone, counted by stage and error type, and logged (throttled) with what reproduces it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import structlog

from whazing_gateway.decode import BodyError, DecodeError, Observation, RestCall, decode
from whazing_gateway.outbox.base import OutboxError
from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, Record, WsFrame
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.model import Delivery, Event
from whazing_gateway.ops import metrics
from whazing_gateway.ops.logs import hot_logger

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
    # the inference writes this record made: [start, end) in the inferrer's uncommitted list
    writes: tuple[int, int] = (0, 0)

    def summary(self) -> dict:
        """Plain data for the flow viewer (it may live in another process than the pipeline)."""
        return {
            "flow_id": self.record.flow_id,
            "accepted": self.accepted,
            "events": [{"id": e.id, "type": e.type, "ticket": e.ticket_id, "origin": e.origin,
                        "changes": {k: list(v) for k, v in e.changes.items()}} for e in self.events],
            "deliveries": [{"id": d.id, "target": d.target, "event": d.event_type} for d in self.deliveries],
        }


Route = Callable[[Event], Awaitable[list[Delivery]]]
Put = Callable[[Sequence[Delivery]], Awaitable[None]]


def describe(record: Record) -> dict:
    """Enough of a record to reproduce a failure from the log: flow, route or frame prefix."""
    if isinstance(record, WsFrame):
        return {"flow_id": record.flow_id, "frame": record.content[:120].decode("utf-8", "replace"),
                "frame_bytes": len(record.content)}
    if isinstance(record, (HttpExchange, HttpRequestSeen)):
        size = len(record.resp_body or b"") if isinstance(record, HttpExchange) else len(record.body or b"")
        return {"flow_id": record.flow_id, "route": f"{record.method} {record.path}",
                "status": getattr(record, "status", None), "body_bytes": size}
    return {"flow_id": getattr(record, "flow_id", None)}


def transient(exc: BaseException) -> bool:
    """An outbox failure worth retrying (locked, disk full, I/O, Redis away) rather than a
    refusal of the data itself (an integer out of range, a value it cannot store)."""
    if isinstance(exc, (OutboxError, OSError, TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    return type(exc).__module__.split(".")[0] == "redis"


@dataclass
class RetryPolicy:
    """Backoff of outbox retries. `give_up_s`: None retries until it works or the pipeline stops."""

    first_s: float = 0.05
    max_s: float = 5.0
    give_up_s: float | None = None

    def delays(self):
        delay = self.first_s
        while True:
            yield delay * (0.75 + random.random() / 2)
            delay = min(delay * 2, self.max_s)


# Other tasks of the pipeline's loop get a turn at least this often within a batch (a turn per
# record cost an event loop iteration, a syscall, per record).
YIELD_EVERY_S = 0.005


class GaveUp(Exception):
    """The outbox kept failing until the retry policy (or a stop) gave up on a batch."""


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
        retry: RetryPolicy | None = None,
    ) -> None:
        self.inferrer = inferrer
        self.route = route
        self.put = put
        self.json_limit = json_limit
        self.on_result = on_result
        self.wake = wake
        self.retry = retry or RetryPolicy()
        self.queue: asyncio.Queue[Record] = asyncio.Queue(queue_size)
        self.max_batch = max_batch
        self.errors = ThrottledLog()
        self.frames = RecentFrames()
        self.stopping = False
        self.waiting_since: float | None = None  # the outbox is failing and a batch waits
        self._task: asyncio.Task | None = None

    # -- hot path ------------------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Called from mitmproxy hooks: never blocks, never raises."""
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            metrics.OBSERVATIONS_DROPPED.inc()
            metrics.RECORDS_DROPPED.labels("memory").inc()
            self.errors.error("queue_full", "inference queue full: observation DROPPED (counted in "
                              "records_dropped_total), traffic unaffected", queued=self.queue.qsize(),
                              outbox_failing_since=self.waiting_since)

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
            log.warning("pipeline stopped with observations still queued: they are lost",
                        queued=self.queue.qsize())
        self.stopping = True
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
            except GaveUp:
                pass  # counted and logged where it gave up
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
        """decode -> infer -> route each record, then ONE outbox put for every delivery
        (retried while it fails), then the inference state is committed and the events are
        logged and counted: only once the outbox has the deliveries.

        Raises GaveUp (after undoing the batch's state) if the outbox kept failing until the
        retry policy or a stop ended the wait; the records are then not accepted."""
        results = []
        yielded = time.monotonic()
        for record in records:
            results.append(await self._infer_and_route(record))
            if len(records) > 1 and time.monotonic() - yielded >= YIELD_EVERY_S:
                await asyncio.sleep(0)  # let other tasks run within a long batch
                yielded = time.monotonic()
        try:
            await self._accept(results)
        except BaseException:  # GaveUp, or cancelled while waiting: nothing was committed
            self.inferrer.discard()
            for r in results:
                r.accepted = False
            raise
        accepted = [e for r in results if r.accepted for e in r.events]
        await self._commit(accepted)
        if self.on_result is not None:
            for result in results:
                if result.events or result.deliveries:
                    try:
                        self.on_result(result)
                    except Exception as exc:
                        metrics.STAGE_ERRORS.labels("annotate").inc()
                        self.errors.error("annotate", "flow annotation failed", error=repr(exc))
        return results

    # -- acceptance ----------------------------------------------------------------------------
    async def _accept(self, results: list[Result]) -> None:
        deliveries = [d for r in results for d in r.deliveries]
        if not deliveries or self.put is None:
            return
        refused = await self._put_retrying(deliveries, results)
        if refused is not None:
            # The outbox refused the data itself (not a transient failure): find the record(s)
            # it cannot take, one put each, so the others are accepted all the same.
            for r in results:
                if r.deliveries:
                    error = await self._put_retrying(r.deliveries, [r])
                    if error is not None:
                        self._refuse(r, error)
            for r in reversed(results):  # undo the refused records' writes, last first
                if not r.accepted:
                    self.inferrer.forget(*r.writes)
        if any(r.accepted and r.deliveries for r in results) and self.wake is not None:
            self.wake()

    async def _put_retrying(self, deliveries: list[Delivery], results: list[Result]) -> BaseException | None:
        """Put until it works; a refusal of the data is returned, not retried."""
        assert self.put is not None
        started = time.monotonic()
        delays = self.retry.delays()
        attempt = 0
        while True:
            try:
                await self.put(deliveries)
            except Exception as exc:
                if not transient(exc):
                    return exc
                attempt += 1
                if self.waiting_since is None:
                    self.waiting_since = time.time()
                metrics.OUTBOX_RETRIES.inc()
                events = [e.id for r in results for e in r.events]
                waited = time.monotonic() - started
                give_up = self.stopping or (self.retry.give_up_s is not None and waited >= self.retry.give_up_s)
                if give_up:
                    metrics.EVENTS_REJECTED.labels("outbox_failing").inc(len(events))
                    log.error("outbox kept failing: events NOT accepted", error=repr(exc), attempts=attempt,
                              waited_s=round(waited, 3), event_ids=events[:20], events=len(events),
                              deliveries=len(deliveries))
                    raise GaveUp(repr(exc)) from exc
                self.errors.error("outbox_retry", "outbox write failed: retrying; the events wait, not "
                                  "accepted yet", error=repr(exc), attempt=attempt, events=len(events),
                                  deliveries=len(deliveries), waiting_s=round(waited, 3))
                await asyncio.sleep(next(delays))
            else:
                if self.waiting_since is not None:
                    log.info("outbox writable again: waiting events accepted", attempts=attempt + 1,
                             waited_s=round(time.monotonic() - started, 3))
                    self.waiting_since = None
                return None

    def _refuse(self, result: Result, error: BaseException) -> None:
        result.accepted = False
        metrics.EVENTS_REJECTED.labels("outbox_refused").inc(len(result.events))
        metrics.RECORD_ERRORS.labels("outbox", type(error).__name__).inc()
        self.errors.error("outbox_refused", "the outbox refused this record's deliveries: its events "
                          "are NOT accepted", error=repr(error), event_ids=[e.id for e in result.events][:20],
                          **describe(result.record))

    # -- one record --------------------------------------------------------------------------------
    async def _infer_and_route(self, record: Record) -> Result:
        result = Result(record)
        if isinstance(record, WsFrame) and self.frames.seen(record.content, record.ts):
            return result
        savepoint = self.inferrer.savepoint()
        stage = "decode"
        try:
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
                stage = "infer"
                events = await self.inferrer.infer(obs)
                stage = "route"
                for event in events:
                    result.events.append(event)
                    result.deliveries.extend(await self.route(event))
        except Exception as exc:  # incl. what a decoder lets escape (RecursionError, ValueError...)
            self.inferrer.rollback(savepoint)
            lost = len(result.events)
            result.events, result.deliveries = [], []
            metrics.STAGE_ERRORS.labels(stage).inc()
            metrics.RECORD_ERRORS.labels(stage, type(exc).__name__).inc()
            self.errors.error(f"record_{stage}", f"{stage} failed: this record is skipped (its "
                              "other events too), the rest go on", error=repr(exc)[:500],
                              events_lost=lost, **describe(record))
        result.writes = (savepoint[0], self.inferrer.savepoint()[0])
        return result

    async def _commit(self, events: list[Event]) -> None:
        """After the outbox has the deliveries: mark the events seen, write the state, and only
        now log and count them as accepted."""
        try:
            first = await self.inferrer.commit(events)
        except Exception as exc:  # the outbox has them: accepted; the state is re-learned
            metrics.STAGE_ERRORS.labels("state").inc()
            self.errors.error("state", "state store write failed (events accepted all the same)",
                              error=repr(exc))
            first = [True] * len(events)
        event_log = hot_logger(__name__)  # one line per event: the short way to the log
        for event, new in zip(events, first):
            if not new:  # another replica inferred it at the same moment: one delivery all the same
                metrics.EVENTS_DUPLICATE.inc()
                continue
            metrics.EVENTS.labels(event.type).inc()
            event_log.info("event", event_id=event.id, type=event.type, ticket_id=event.ticket_id,
                           tenant_id=event.tenant_id, changes=_changes_text(event), flow_id=event.flow_id)


def _changes_text(event: Event) -> str:
    return ", ".join(f"{k} {a}->{b}" for k, (a, b) in event.changes.items())
