"""The Sender: turns outbox items into webhooks, durably, in order, without hammering anyone.

It works only from the outbox: claim due items (a lease), POST them, record the attempt. So a
crash at any moment loses nothing; at worst an item whose lease was held is sent again with the
same `webhook-id` (= Delivery.id). Decisions (what a response means, when to retry) are pure
functions at the top of this module; the I/O is in `Sender`.

Per target: at most `Target.concurrency` requests at once, at most `Target.rate_per_s`, a
health state (after `breaker_threshold` consecutive failures the target is *failing*: nothing is
sent but one probe at a time, with backoff from `breaker_cooldown_s` up to
`breaker_max_cooldown_s`; the probe is a held delivery itself and does not count against its retry
schedule; the first success releases everything held, in order), and a persistent pause on
`410 Gone`. The health is written to the outbox (for `deliveries targets`) and to /metrics.
Per (target, order_key): one delivery in flight, in acceptance order; a failing ticket holds
back only itself.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import aiohttp
import structlog
from multidict import CIMultiDict

from whazing_gateway import __version__, model
from whazing_gateway.deliver.signing import signature_header
from whazing_gateway.ops import metrics
from whazing_gateway.outbox.base import (
    DELIVERED,
    FAILING,
    HEALTHY,
    PAUSED,
    TARGET_STATES,
    Attempt,
    Outbox,
    OutboxError,
    OutboxFilter,
    OutboxItem,
    TargetHealth,
    TargetPause,
)

log = structlog.get_logger(__name__)

USER_AGENT = f"whazing-gateway/{__version__}"
MAX_RETRY_AFTER_S = 86400.0  # a receiver cannot park a delivery for longer than a day
MAX_BODY_READ = 256 * 1024  # we read (and drop) at most this much of a response, to reuse the connection


# ---- pure decisions ------------------------------------------------------------------------


def build_headers(target: model.Target, delivery: model.Delivery, timestamp: int) -> CIMultiDict:
    """Headers of one attempt. Target.headers are added, but never replace the content type,
    the API key or the Standard Webhooks headers. `webhook-id`/`webhook-timestamp` are always
    sent (receivers de-duplicate on the id); `webhook-signature` only when the target has secrets.
    """
    headers: CIMultiDict = CIMultiDict()
    headers["User-Agent"] = USER_AGENT
    for name, value in target.headers.items():
        headers[name] = str(value)
    headers["Content-Type"] = "application/json"
    if target.api_key:
        headers["X-N8N-API-KEY"] = target.api_key
    headers["webhook-id"] = delivery.id
    headers["webhook-timestamp"] = str(int(timestamp))
    if target.secrets:
        headers["webhook-signature"] = signature_header(target.secrets, delivery.id, int(timestamp), delivery.body)
    elif "webhook-signature" in headers:
        del headers["webhook-signature"]
    return headers


def count_attempt(target: str, outcome: str, latency_s: float, age_s: float) -> None:
    """The metrics of one attempt. One function, so that a delivery worker's parent process,
    which learns of attempts through a pipe, counts them exactly as the Sender does."""
    metrics.DELIVERY_ATTEMPTS.labels(target=target, outcome="success" if outcome == "delivered" else outcome).inc()
    metrics.DELIVERY_LATENCY.labels(target=target).observe(latency_s)
    if outcome == "delivered":
        metrics.DELIVERIES_DONE.labels(target=target, outcome="delivered").inc()
        metrics.EVENT_TO_DELIVERY.labels(target=target).observe(age_s)
    elif outcome == "dead":
        metrics.DELIVERIES_DONE.labels(target=target, outcome="dead").inc()
        metrics.DEAD_LETTERS.labels(target=target).inc()


def publish_target_health(record: dict) -> bool:
    """Set the per-target metrics from a health record (`{"target_health": [...]}` or
    `{"probe": {...}}`); False for any other record. One function, for the same reason as
    `count_attempt`: a delivery worker's parent mirrors these records from its pipe."""
    if "target_health" in record:
        for h in record["target_health"]:
            for state in TARGET_STATES:
                metrics.TARGET_STATE.labels(target=h["target"], state=state).set(1 if h["state"] == state else 0)
            if "pending" in h:
                metrics.TARGET_PENDING.labels(target=h["target"]).set(h["pending"])
            metrics.TARGET_NEXT_PROBE.labels(target=h["target"]).set(h.get("next_probe_at") or 0)
        return True
    if "probe" in record:
        metrics.TARGET_PROBES.labels(target=record["probe"]["target"], outcome=record["probe"]["outcome"]).inc()
        return True
    return False


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent
    or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one attempt's result means: the outbox outcome, when to try again, whether the
    target should be paused (410) and whether it counts against the target's health."""

    outcome: model.Outcome
    next_at: float | None = None
    reason: str | None = None
    pause: bool = False
    target_failure: bool = False
    warning: str | None = None


def next_delay(schedule: tuple[float, ...], attempts_done: int, jitter: float, rand: Callable[[], float]) -> float | None:
    """Delay before the next attempt after `attempts_done` attempts of this round failed; None
    when the schedule is exhausted (-> dead letter). Entry 0 is the first attempt (always
    immediate), entry k the pause before attempt k+1."""
    if attempts_done >= len(schedule):
        return None
    base = max(0.0, float(schedule[attempts_done]))
    return base * (1.0 + jitter * (2.0 * rand() - 1.0))


def decide(
    target: model.Target,
    status: int | None,
    error: str | None,
    attempts_done: int,
    now: float,
    *,
    retry_after: float | None = None,
    location: str | None = None,
    jitter: float = 0.1,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """The retry policy. `attempts_done` counts this attempt (1 after the first one)."""
    if status is not None and 200 <= status < 300:
        return Decision("delivered")
    if status == 410:
        return Decision("dead", reason="410 Gone: the receiver asks to be disabled", pause=True)
    if status is not None and 300 <= status < 400:
        return Decision("dead", reason=f"HTTP {status}: redirect to {location or '?'} not followed")
    warning = None
    if status is None:
        reason = error or "no response"
    elif status in (408, 429) or status >= 500:
        reason = f"HTTP {status}"
    elif status == 404 and target.kind == "n8n":
        reason = "HTTP 404"
        warning = "n8n answered 404: is the workflow active and the URL a production webhook URL?"
    else:
        return Decision("dead", reason=f"HTTP {status}")
    delay = next_delay(tuple(target.retry_schedule), attempts_done, jitter, rand)
    if delay is None:
        return Decision("dead", reason=f"{reason}; retry schedule exhausted", target_failure=True, warning=warning)
    if retry_after is not None:
        delay = min(retry_after, MAX_RETRY_AFTER_S)
    return Decision("retry", next_at=now + delay, reason=reason, target_failure=True, warning=warning)


class TokenBucket:
    """Rate limit: `rate` per second with a burst of max(1, rate)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._tokens = self.burst
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self) -> int:
        self._refill()
        return int(self._tokens)

    def take(self, n: int) -> None:
        self._refill()
        self._tokens -= n

    def wait_s(self) -> float:
        """Time until one more token is there."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate


@dataclass
class Breaker:
    """Circuit breaker of one target: closed -> (threshold failures) open -> (cool-down)
    half-open: one probe at a time; a success closes it, a failure opens it for twice as long."""

    threshold: int
    cooldown_s: float
    max_cooldown_s: float
    failures: int = 0
    open_until: float = 0.0
    current_cooldown: float = field(default=0.0)

    def state(self, now: float) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    def success(self) -> bool:
        """Returns True if this closed a tripped breaker."""
        tripped = self.failures >= self.threshold
        self.failures = 0
        self.current_cooldown = 0.0
        return tripped

    def failure(self, now: float) -> bool:
        """Returns True if this (re)opened the breaker."""
        self.failures += 1
        if self.failures < self.threshold:
            return False
        if now < self.open_until:  # already open: a straggler sent before it opened
            return False
        self.current_cooldown = (
            self.cooldown_s if not self.current_cooldown else min(self.max_cooldown_s, self.current_cooldown * 2)
        )
        self.open_until = now + self.current_cooldown
        return True


# ---- the sender ----------------------------------------------------------------------------


class Sender:
    """Delivers what is in the outbox. One aiohttp session, pooled connections.

    `targets` is called at every round (rules hot-reload): a delivery whose target vanished
    stays pending and is logged. `wake()` after a `put` makes new work go out at once instead
    of at the next poll.
    """

    def __init__(
        self,
        outbox: Outbox,
        targets: Callable[[], Mapping[str, model.Target]],
        *,
        per_ticket_order: bool = True,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        batch: int = 200,
        breaker_threshold: int = 1,
        breaker_cooldown_s: float = 1.0,
        breaker_max_cooldown_s: float = 5.0,
        jitter: float = 0.1,
        retention_s: float | None = 7 * 86400,
        housekeeping_s: float = 5.0,
        recover_on_start: bool = True,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self._targets = targets
        self.per_ticket_order = per_ticket_order
        self.poll_interval = poll_interval
        self._clock = clock
        self._batch = batch
        self._breaker_args = (breaker_threshold, breaker_cooldown_s, breaker_max_cooldown_s)
        self._jitter = jitter
        self._retention_s = retention_s
        self._housekeeping_s = housekeeping_s
        self._recover_on_start = recover_on_start
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._breakers: dict[str, Breaker] = {}
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        self._paused: dict[str, TargetPause] = {}
        self._health: dict[str, TargetHealth] = {}
        self._failed_probes: dict[str, int] = {}  # since the target became failing
        self._next_housekeeping = 0.0
        self._next_retention = 0.0
        self._warned_missing: dict[str, float] = {}
        self._last_loop_error: str | None = None
        # Optional observer of every attempt: (delivery_id, target, outcome, detail), outcome in
        # delivered | retry | dead. The gateway uses it to annotate flows in the viewer.
        self.on_outcome: Callable[[str, str, str, str], None] | None = None
        # The same, with the figures a parent process needs to keep its metrics (delivery worker).
        self.on_attempt: Callable[[dict], None] | None = None

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, enable_cleanup_closed=True),
            auto_decompress=True,
            trust_env=False,
        )
        if self._recover_on_start:
            try:
                n = await self.outbox.recover()
                if n:
                    log.info("deliver.recovered_leases", count=n)
            except OutboxError as exc:
                log.error("deliver.recover_failed", error=str(exc))
        try:  # a target that was failing when we stopped is probed before anything else is sent
            for name, health in (await self.outbox.target_health()).items():
                if health.state == FAILING:
                    breaker = self._breaker(name)
                    breaker.failures = max(breaker.threshold, 1)
                    breaker.current_cooldown = breaker.cooldown_s
                    breaker.open_until = 0.0  # probe due now
                    self._failed_probes[name] = max(1, health.probes)
                    self._health[name] = health
        except OutboxError as exc:
            log.warning("deliver.health_not_loaded", error=str(exc))
        self._task = asyncio.create_task(self._run(), name="whazing-sender")
        log.info("deliver.started", per_ticket_order=self.per_ticket_order)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let in-flight deliveries finish for up to `timeout` s, then cancel them
        (they stay leased and are sent again after a restart: same webhook-id)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("deliver.stopped_with_inflight", count=len(pending))
        if self._session is not None:
            await self._session.close()
            self._session = None
        log.info("deliver.stopped")

    def wake(self) -> None:
        """Non-blocking hint that new work was put (call from the event loop's thread)."""
        self._wake.set()

    @property
    def inflight(self) -> int:
        return sum(self._inflight.values())

    def breaker_state(self, target: str) -> str:
        b = self._breakers.get(target)
        return "closed" if b is None else b.state(time.monotonic())

    # ---- the loop ----

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            timeout = self.poll_interval
            claimed = 0
            try:
                await self._housekeeping()
                claimed, timeout = await self._pump()
                self._last_loop_error = None
            except OutboxError as exc:
                self._loop_error(exc)
            except Exception as exc:  # a bug must not stop delivery for good
                metrics.STAGE_ERRORS.labels(stage="deliver").inc()
                self._loop_error(exc, exc_info=True)
            if claimed and not self._stopping:
                await asyncio.sleep(0)  # more may be due: go again, but let others run
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.001, timeout))
            except asyncio.TimeoutError:
                pass

    def _loop_error(self, exc: BaseException, exc_info: bool = False) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_loop_error:  # loud once per distinct error, not every poll
            log.error("deliver.loop_error", error=text, exc_info=exc_info)
        self._last_loop_error = text

    def _breaker(self, name: str) -> Breaker:
        b = self._breakers.get(name)
        if b is None:
            b = self._breakers[name] = Breaker(*self._breaker_args)
        return b

    def _bucket(self, target: model.Target) -> TokenBucket | None:
        if not target.rate_per_s:
            return None
        rate, bucket = self._buckets.get(target.name, (None, None))
        if bucket is None or rate != target.rate_per_s:
            bucket = TokenBucket(target.rate_per_s)
            self._buckets[target.name] = (target.rate_per_s, bucket)
        return bucket

    def _capacity(self, targets: Mapping[str, model.Target]) -> tuple[dict[str, int], float]:
        """Free slots per target now, and how long to wait at most before looking again."""
        caps, probes, wait = self._slots(targets)
        caps.update(probes)
        return caps, wait

    def _slots(self, targets: Mapping[str, model.Target]) -> tuple[dict[str, int], dict[str, int], float]:
        """Free slots per healthy target, probe slots per failing target whose probe is due,
        and how long to wait at most before looking again."""
        mono = time.monotonic()
        caps: dict[str, int] = {}
        probes: dict[str, int] = {}
        wait = self.poll_interval
        for name, target in targets.items():
            pause = self._paused.get(name)
            if pause is not None and pause.url == target.url:
                caps[name] = 0
                continue
            inflight = self._inflight.get(name, 0)
            state = self._breaker(name).state(mono)
            if state == "open":
                caps[name] = 0
                wait = min(wait, max(0.01, self._breakers[name].open_until - mono))
                continue
            if state == "half-open":  # failing, probe due: one held delivery, nothing else
                probes[name] = max(0, 1 - inflight)
                continue
            free = max(1, target.concurrency) - inflight
            bucket = self._bucket(target)
            if bucket is not None and free > 0:
                tokens = bucket.available()
                if tokens < free:
                    wait = min(wait, bucket.wait_s() or wait)
                free = min(free, tokens)
            caps[name] = max(0, free)
        return caps, probes, wait

    async def _pump(self) -> tuple[int, float]:
        targets = dict(self._targets())
        caps, probes, wait = self._slots(targets)
        lease_s = 30.0 + 2 * max((t.timeout_ms for t in targets.values()), default=10_000) / 1000
        now = self._clock()
        claimed: list[tuple[OutboxItem, bool]] = []
        limit = min(self._batch, sum(caps.values()))
        if limit > 0:
            items = await self.outbox.claim(now, limit, lease_s=lease_s, targets=caps, ordered=self.per_ticket_order)
            claimed += [(item, False) for item in items]
        for name, cap in probes.items():
            if cap > 0:
                items = await self.outbox.claim(now, 1, lease_s=lease_s, targets={name: 1},
                                                ordered=self.per_ticket_order, probe=True)
                if not items:  # nothing held: probe again when something is
                    self._breaker(name).open_until = time.monotonic() + self._breaker(name).current_cooldown
                claimed += [(item, True) for item in items]
        for item, probe in claimed:
            target = targets.get(item.target)
            if target is None:  # cannot happen with `targets=caps`, but an engine may be lax
                await self.outbox.release([item.id])
                continue
            bucket = self._bucket(target)
            if bucket is not None:
                bucket.take(1)
            self._inflight[item.target] = self._inflight.get(item.target, 0) + 1
            task = asyncio.create_task(self._deliver(item, target, probe), name=f"deliver-{item.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed), wait

    async def _housekeeping(self) -> None:
        mono = time.monotonic()
        if mono < self._next_housekeeping:
            return
        self._next_housekeeping = mono + self._housekeeping_s
        self._paused = await self.outbox.paused_targets()
        by_target = await self.outbox.pending_by_target()
        metrics.OUTBOX_PENDING.set(sum(by_target.values()))
        known = self._targets()
        self._publish({"target_health": [
            {"target": name, "state": self._health_of(name).state, "pending": by_target.get(name, 0),
             "next_probe_at": self._health_of(name).next_probe_at}
            for name in sorted(set(known) | set(by_target))
        ]})
        for name, count in by_target.items():
            if name not in known and self._warned_missing.get(name, 0.0) <= mono:
                self._warned_missing[name] = mono + 300.0
                log.warning("deliver.target_missing", target=name, pending=count,
                            hint="no such target in the rules: its deliveries wait until it comes back")
        for name, pause in self._paused.items():
            target = known.get(name)
            if target is not None and target.url == pause.url and self._warned_missing.get("paused:" + name, 0.0) <= mono:
                self._warned_missing["paused:" + name] = mono + 300.0
                log.error("deliver.target_paused", target=name, reason=pause.reason, pending=by_target.get(name, 0),
                          hint="resume with `whazing-gateway deliveries retry --target NAME` or change its URL")
        if self._retention_s is not None and mono >= self._next_retention:
            self._next_retention = mono + 3600.0
            cutoff = self._clock() - self._retention_s
            removed = await self.outbox.purge(OutboxFilter(status=DELIVERED, until=cutoff, limit=None))
            if removed:
                log.info("deliver.retention_purged", count=removed)

    # ---- one delivery ----

    async def _deliver(self, item: OutboxItem, target: model.Target, probe: bool = False) -> None:
        attempt_no = item.round_attempts + 1
        blog = log.bind(delivery_id=item.id, target=item.target, event_type=item.event_type,
                        ticket_id=item.ticket_id, attempt=attempt_no)
        if probe:
            blog = blog.bind(probe=True)
        try:
            await self._attempt(item, target, attempt_no, blog, probe)
        except asyncio.CancelledError:
            raise
        except OutboxError as exc:  # lease expires; the item goes again later (same webhook-id)
            blog.error("deliver.record_failed", error=str(exc))
        except Exception:
            metrics.STAGE_ERRORS.labels(stage="deliver").inc()
            blog.exception("deliver.failed_unexpectedly")
        finally:
            self._inflight[item.target] = self._inflight.get(item.target, 1) - 1
            self._wake.set()

    def _notify(self, item: OutboxItem, decision: Decision, status: int | None, latency_ms: float,
                latency_s: float, age_s: float) -> None:
        if self.on_outcome is None and self.on_attempt is None:
            return
        if decision.outcome == "delivered":
            detail = f"HTTP {status} in {latency_ms:.0f} ms"
        elif decision.outcome == "retry":
            detail = f"{decision.reason}; next try in {max(0.0, (decision.next_at or 0) - self._clock()):.0f} s"
        else:
            detail = decision.reason or "dead"
        try:
            if self.on_outcome is not None:
                self.on_outcome(item.id, item.target, decision.outcome, detail)
            if self.on_attempt is not None:
                self.on_attempt({"id": item.id, "target": item.target, "outcome": decision.outcome,
                                 "detail": detail, "latency_s": latency_s, "age_s": age_s})
        except Exception:  # an observer must never break delivery
            log.exception("deliver.on_outcome_failed", delivery_id=item.id)

    async def _attempt(self, item: OutboxItem, target: model.Target, attempt_no: int, blog,
                       probe: bool = False) -> None:
        assert self._session is not None
        started_at = self._clock()
        headers = build_headers(target, item.delivery, int(started_at))
        status: int | None = None
        error: str | None = None
        retry_after_raw: str | None = None
        location: str | None = None
        t0 = time.perf_counter()
        try:
            async with self._session.post(
                target.url,
                data=item.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=target.timeout_ms / 1000),
            ) as resp:
                status = resp.status
                retry_after_raw = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
                read = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    read += len(chunk)
                    if read >= MAX_BODY_READ:
                        break
        except asyncio.TimeoutError:
            if status is None:
                error = f"timeout after {target.timeout_ms} ms"
        except aiohttp.ClientError as exc:
            if status is None:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = time.perf_counter() - t0
        now = self._clock()
        decision = decide(
            target, status, error, attempt_no, now,
            retry_after=parse_retry_after(retry_after_raw, now) if status in (429, 503) else None,
            location=location, jitter=self._jitter, rand=self._rand,
        )
        counted = True
        if probe and decision.target_failure and item.next_at > started_at:
            # A probe ahead of the delivery's own schedule: it keeps its place in that schedule
            # (no dead letter from probing), and its due time.
            decision = Decision("retry", next_at=None, reason=decision.reason, target_failure=True,
                                warning=decision.warning)
            counted = False
        attempt = Attempt(at=started_at, status_code=status, latency_ms=round(latency * 1000, 3),
                          error=None if decision.outcome == "delivered" else decision.reason)
        await self.outbox.record_attempt(item.id, attempt, decision.outcome, decision.next_at,  # type: ignore[arg-type]
                                         counted=counted)

        count_attempt(item.target, decision.outcome, latency, max(0.0, now - item.created_at))
        self._notify(item, decision, status, attempt.latency_ms, latency, max(0.0, now - item.created_at))
        breaker = self._breaker(item.target)
        mono = time.monotonic()
        if probe:
            self._publish({"probe": {"target": item.target,
                                     "outcome": "success" if decision.outcome == "delivered" else "failure"}})
        if decision.outcome == "delivered":
            if breaker.success():
                await self._recovered(item.target, blog)
            blog.debug("deliver.delivered", status=status, latency_ms=attempt.latency_ms)
            return
        if decision.warning and not probe:
            blog.warning("deliver.n8n_not_found", status=status, hint=decision.warning)
        if decision.target_failure:
            if probe:
                self._failed_probes[item.target] = self._failed_probes.get(item.target, 0) + 1
            if breaker.failure(mono):
                retry_after = parse_retry_after(retry_after_raw, now) if status in (429, 503) else None
                if retry_after is not None:  # the receiver said how long: probe no sooner
                    breaker.open_until = max(breaker.open_until, mono + min(retry_after, MAX_RETRY_AFTER_S))
                await self._failing(item.target, breaker, decision.reason, blog, tripped=not probe)
        if probe and decision.outcome == "retry":
            blog.info("deliver.probe_failed", status=status, reason=decision.reason,
                      next_probe_in_s=round(max(0.0, breaker.open_until - mono), 3))
            return
        if decision.outcome == "retry":
            blog.info("deliver.retry", status=status, reason=decision.reason,
                      in_s=round((decision.next_at or now) - now, 3))
            return
        blog.warning("deliver.dead_letter", status=status, reason=decision.reason, attempts=item.attempts + 1)
        if decision.pause:
            pause = TargetPause(target=item.target, url=target.url, reason=decision.reason or "410 Gone", at=now)
            self._paused[item.target] = pause
            await self.outbox.pause_target(pause)
            await self._set_health(TargetHealth(item.target, PAUSED, since=now, last_error=pause.reason))
            blog.error("deliver.target_gone", url=target.url,
                       hint="target paused; resume with `whazing-gateway deliveries retry --target NAME`")

    # ---- target health ----

    def _health_of(self, name: str) -> TargetHealth:
        pause = self._paused.get(name)
        if pause is not None:
            known = self._targets().get(name)
            if known is not None and known.url == pause.url:
                return TargetHealth(name, PAUSED, since=pause.at, last_error=pause.reason)
        return self._health.get(name) or TargetHealth(name, HEALTHY, updated_at=0.0)

    def _publish(self, record: dict) -> None:
        """Metrics here, and the same record to a parent process (delivery worker)."""
        publish_target_health(record)
        if self.on_attempt is not None:
            try:
                self.on_attempt(record)
            except Exception:  # an observer must never break delivery
                log.exception("deliver.on_attempt_failed")

    async def _set_health(self, health: TargetHealth) -> None:
        self._health[health.target] = health
        self._publish({"target_health": [{"target": health.target, "state": health.state,
                                          "next_probe_at": health.next_probe_at}]})
        try:
            await self.outbox.set_target_health(health)
        except OutboxError as exc:  # only the CLI's view is stale; delivery goes on
            log.warning("deliver.health_not_saved", target=health.target, error=str(exc))

    async def _failing(self, name: str, breaker: Breaker, reason: str | None, blog, *, tripped: bool) -> None:
        now = self._clock()
        before = self._health.get(name)
        since = before.since if before is not None and before.state == FAILING else now
        next_probe_at = now + max(0.0, breaker.open_until - time.monotonic())
        probes = self._failed_probes.get(name, 0)
        await self._set_health(TargetHealth(name, FAILING, failures=breaker.failures, since=since,
                                            next_probe_at=next_probe_at, last_error=reason, probes=probes, updated_at=now))
        if tripped:
            blog.warning("deliver.target_failing", failures=breaker.failures, reason=reason,
                         next_probe_in_s=round(next_probe_at - now, 3),
                         hint="held back; probed with one delivery at a time until it answers")

    async def _recovered(self, name: str, blog) -> None:
        """The target answers again: what was held goes out now, in order (not at its retry time)."""
        now = self._clock()
        before = self._health.get(name)
        failed_probes = self._failed_probes.pop(name, 0)
        released = 0
        if failed_probes:  # it was down, not one delivery failing on its own: release the rest
            released = await self.outbox.wake_target(name, now)
        await self._set_health(TargetHealth(name, HEALTHY, since=now, updated_at=now))
        self._wake.set()
        blog.info("deliver.target_recovered", failed_probes=failed_probes, released=released,
                  down_s=round(now - before.since, 3) if before is not None else None)
