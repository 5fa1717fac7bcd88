"""The outbox contract: what the pipeline writes to and the Sender works from.

An event counts as accepted only once `put` has returned: the deliveries are then committed and
survive `kill -9`. The Sender `claim`s due deliveries (a lease, so a crashed worker's items come
back), sends them and `record_attempt`s the outcome. Engines: `sqlite.py` (default, one gateway
process per file) and `redis_backend.py` (shared by replicas). Everything here is engine-neutral:
plain dataclasses in, plain dataclasses out, all times are unix seconds (floats).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from whazing_gateway import model

# Status of a delivery in the outbox. A retrying delivery is `pending` with attempts > 0.
PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
STATUSES = (PENDING, DELIVERED, DEAD)

# Outcome of one attempt, as the Sender decides it.
Outcome = Literal["delivered", "retry", "dead"]


class OutboxError(RuntimeError):
    """The outbox could not be written or read (disk full, locked, Redis down...).

    `put` raising this means the event was NOT accepted; the caller logs/counts and lets the
    traffic go on.
    """


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt: when, what came back (None: no response at all), how long, what failed."""

    at: float
    status_code: int | None
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A delivery as the outbox holds it: the Delivery plus its progress.

    `attempts` counts every attempt ever made; `round_attempts` counts those since the last
    (re)queue, so the retry schedule starts again after an admin `retry` of a dead letter.
    `lease_until` is set while a worker holds the item (claimed, not yet recorded).
    """

    delivery: model.Delivery
    status: str = PENDING
    attempts: int = 0
    round_attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    last_status: int | None = None
    accepted_at: float = 0.0
    updated_at: float = 0.0
    lease_until: float | None = None

    # The Delivery's fields, flat, for callers that think of an item as "a delivery".
    @property
    def id(self) -> str:
        return self.delivery.id

    @property
    def target(self) -> str:
        return self.delivery.target

    @property
    def event_id(self) -> str:
        return self.delivery.event_id

    @property
    def event_type(self) -> str:
        return self.delivery.event_type

    @property
    def order_key(self) -> str | None:
        return self.delivery.order_key

    @property
    def body(self) -> bytes:
        return self.delivery.body

    @property
    def created_at(self) -> float:
        return self.delivery.created_at

    @property
    def ticket_id(self) -> int | None:
        return self.delivery.ticket_id


@dataclass(frozen=True, slots=True)
class OutboxFilter:
    """Admin selection. Empty fields match everything; since/until bound the event time
    (Delivery.created_at, inclusive since, exclusive until). `limit` applies to `list` only."""

    ids: tuple[str, ...] = ()
    target: str | None = None
    event_type: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = 100

    def matches(self, item: OutboxItem) -> bool:
        """The reference semantics every engine must agree with (and a helper for simple ones)."""
        if self.ids and item.id not in self.ids:
            return False
        if self.target is not None and item.target != self.target:
            return False
        if self.event_type is not None and item.event_type != self.event_type:
            return False
        if self.status is not None and item.status != self.status:
            return False
        if self.since is not None and item.created_at < self.since:
            return False
        if self.until is not None and item.created_at >= self.until:
            return False
        return True


@dataclass(frozen=True, slots=True)
class TargetPause:
    """A target paused by the Sender (a 410 Gone). It applies only while the target still has
    this `url`: changing the URL in the rules, or an admin `retry` for the target, resumes it."""

    target: str
    url: str
    reason: str
    at: float = field(default_factory=time.time)


# Health of a target, as the Sender sees it (and `deliveries targets` shows it).
HEALTHY = "healthy"
FAILING = "failing"  # its last attempts failed: held back, probed with backoff
PAUSED = "paused"  # 410 Gone: nothing is sent until an admin resumes it
TARGET_STATES = (HEALTHY, FAILING, PAUSED)


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One target's delivery health, written by the Sender on every change so that the admin
    CLI (another process) and a parent process's /metrics can show it. `failures` counts the
    consecutive failed attempts; `next_probe_at` (unix s) is when a failing target is tried again."""

    target: str
    state: str = HEALTHY
    failures: int = 0
    since: float = 0.0
    next_probe_at: float | None = None
    last_error: str | None = None
    probes: int = 0
    updated_at: float = field(default_factory=time.time)


class Outbox(abc.ABC):
    """Durable queue of deliveries. All methods are coroutines and never block the event loop.

    Health: `healthy` is False while the last write failed; `last_error` says why. Engines call
    `_failed(exc)` / `_succeeded()` to keep them (and metrics.OUTBOX_ERRORS) current.
    """

    _last_error: str | None = None
    _last_error_at: float | None = None
    _healthy: bool = True

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Why the outbox is unhealthy NOW; None once it works again (/readyz shows the current
        state, never an error that is over)."""
        return self._last_error if self._troubled() else None

    def _troubled(self) -> bool:
        """Is something wrong right now? Engines with a degraded-but-working mode say so too."""
        return not self._healthy

    @property
    def previous_error(self) -> str | None:
        """The most recent failure, kept after recovery (with `previous_error_at`)."""
        return self._last_error

    @property
    def previous_error_at(self) -> float | None:
        return self._last_error_at

    def _failed(self, exc: BaseException) -> None:
        from whazing_gateway.ops import metrics

        metrics.OUTBOX_ERRORS.inc()
        self._healthy = False
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = time.time()

    def _succeeded(self) -> None:
        self._healthy = True

    # lifecycle
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # the pipeline's side
    @abc.abstractmethod
    async def put(self, deliveries: Sequence[model.Delivery]) -> None:
        """Commit deliveries; returns only once they are durable (= accepted).

        Idempotent: a delivery whose id is already in the outbox is ignored (same event seen
        twice, or replayed). Raises OutboxError when nothing could be committed.
        """

    # the Sender's side
    @abc.abstractmethod
    async def claim(
        self,
        now: float,
        limit: int,
        *,
        lease_s: float = 60.0,
        targets: Mapping[str, int] | None = None,
        ordered: bool = True,
        probe: bool = False,
    ) -> list[OutboxItem]:
        """Lease and return up to `limit` pending items with next_at <= now and no live lease.

        `targets` (name -> n): only those targets, at most n items each (the Sender's free
        concurrency; 0 = none). `ordered`: per (target, order_key) only the oldest unfinished
        item (by acceptance order) may be returned, and only when it is due and not leased;
        items without an order_key are independent. Oldest-first. The lease ends at
        now + lease_s; an item whose lease expired is claimable again (crashed worker).

        `probe`: the Sender probes a failing target: next_at is ignored (held items qualify)
        and the least recently attempted claimable items come first (then acceptance order),
        so one delivery that fails on its own cannot be the only probe for ever.
        """

    @abc.abstractmethod
    async def record_attempt(
        self, item_id: str, attempt: Attempt, outcome: Outcome, next_at: float | None,
        *, counted: bool = True,
    ) -> None:
        """Store the attempt and move the item: delivered / dead (final) or pending again at
        `next_at` (retry). Clears the lease. Unknown ids are ignored. `counted=False` (a probe
        that was not due by its own schedule) keeps `round_attempts`: a probe never moves a
        delivery closer to its dead letter."""

    @abc.abstractmethod
    async def wake_target(self, target: str, now: float) -> int:
        """Make every pending, unleased delivery of `target` that already failed and waits for
        its retry due at `now` (a probe succeeded: the target is back). Returns how many."""

    @abc.abstractmethod
    async def set_target_health(self, health: TargetHealth) -> None: ...

    @abc.abstractmethod
    async def target_health(self) -> dict[str, TargetHealth]: ...

    @abc.abstractmethod
    async def release(self, item_ids: Sequence[str], next_at: float | None = None) -> None:
        """Give leases back without an attempt (target vanished or paused, shutting down).
        `next_at` None keeps the item's due time."""

    @abc.abstractmethod
    async def recover(self) -> int:
        """Release leases left by a previous life of this worker (after a crash); returns how
        many. The sqlite engine (one process per file) releases every lease; shared engines may
        release nothing and let leases expire."""

    @abc.abstractmethod
    async def pending_count(self) -> int: ...

    @abc.abstractmethod
    async def pending_by_target(self) -> dict[str, int]: ...

    # target pauses (410 Gone), shared by the Sender and the admin CLI
    @abc.abstractmethod
    async def pause_target(self, pause: TargetPause) -> None: ...

    @abc.abstractmethod
    async def resume_target(self, target: str) -> bool:
        """True if the target was paused."""

    @abc.abstractmethod
    async def paused_targets(self) -> dict[str, TargetPause]: ...

    # admin
    @abc.abstractmethod
    async def find(self, flt: OutboxFilter) -> list[OutboxItem]:
        """Matching items, newest event first, at most flt.limit."""

    @abc.abstractmethod
    async def get(self, item_id: str) -> tuple[OutboxItem, list[Attempt]] | None:
        """One item with every attempt, oldest first; None if unknown."""

    @abc.abstractmethod
    async def retry(self, flt: OutboxFilter, now: float) -> int:
        """Queue matching delivered/dead/pending items again: pending, due at `now`, lease and
        round_attempts cleared (the retry schedule restarts). Returns how many. flt.limit is
        ignored."""

    @abc.abstractmethod
    async def purge(self, flt: OutboxFilter) -> int:
        """Delete matching FINISHED items (delivered or dead) and their attempts; pending items
        are never purged. Returns how many. flt.limit is ignored."""

    async def __aenter__(self) -> "Outbox":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
