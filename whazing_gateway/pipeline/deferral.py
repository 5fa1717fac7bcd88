"""Hold the pipeline's work while the proxy is saturated: its traffic first, the same work later.

The pipeline process runs in the idle CPU class, yet on two cores its work still slows the
proxy (they share caches, memory bandwidth and, on a VM, often a physical core): measured with
the children paused, the proxy's own cost on ws-mixed is 1.03x plain mitmdump's CPU per frame,
and 1.11x with them working. So while the proxy's event loop keeps a core busy, the pipeline
waits, in steps of `POLL_S`, until the proxy calms down.

Two bounds keep that from costing more than it saves:
- no record is held longer than `max_s`;
- saturation that has lasted `max_s` is not a burst: the work has to be done during it anyway,
  so holding would only make webhooks late. The pipeline then works as records come (its lag
  back near zero) until the proxy has had room for `calm_s` (a dip of a second or two does not
  end a saturation); the next saturation is held again.

Nothing is dropped (the records wait in the journal) and nothing is reordered.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import structlog

from whazing_gateway.ops import metrics

log = structlog.get_logger(__name__)

POLL_S = 0.1
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `pid`'s main thread (where the proxy's event loop runs); None if unknown."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:  # not Linux, or the process is gone
        return None
    fields = text[text.rfind(b")") + 2:].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return None


@dataclass
class ProxyLoad:
    """The share of a core the proxy's event loop used over the last `window_s` or more."""

    pid: int
    window_s: float = 0.5
    cpu: Callable[[int], float | None] = thread_cpu_seconds
    clock: Callable[[], float] = time.monotonic
    _since: tuple[float, float] | None = field(default=None, init=False)
    _share: float | None = field(default=None, init=False)
    last_window_s: float = field(default=0.0, init=False)  # how long the last share was measured over

    def share(self) -> float | None:
        used, now = self.cpu(self.pid), self.clock()
        if used is None:
            self._since, self._share = None, None
            return None
        if self._since is None:
            self._since = (now, used)
        elif now - self._since[0] >= max(self.window_s, 1e-6):
            self.last_window_s = now - self._since[0]
            self._share = (used - self._since[1]) / self.last_window_s
            self._since = (now, used)
        return self._share


@dataclass
class Deferral:
    """Decides, before each batch, whether to let a saturated proxy go first."""

    load: ProxyLoad
    max_s: float = 10.0
    busy_share: float = 0.85
    calm_s: float = 2.0  # a saturation ends once the proxy has had room this long (not at a dip)
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    log_every_s: float = 60.0
    _logged_at: float | None = field(default=None, init=False)
    _held_s: float = field(default=0.0, init=False)
    _busy_since: float | None = field(default=None, init=False)  # this saturation, first seen
    _calm_since: float | None = field(default=None, init=False)

    def should_wait(self, oldest_ts: float) -> bool:
        share = self.load.share()  # sampled at every batch, so the window is current when needed
        now = self.wall()
        if share is None or share < self.busy_share:
            if self._calm_since is None:  # the room began with the window that shows it (an idle
                self._calm_since = now - self.load.last_window_s  # pipeline samples seldom)
            if now - self._calm_since >= self.calm_s:
                self._busy_since = None
            return False
        self._calm_since = None
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since >= self.max_s:  # sustained, not a burst: holding only delays
            return False
        return now - oldest_ts < self.max_s

    async def hold(self, oldest_ts: float) -> float:
        """Wait while the proxy is saturated (a burst), never past the batch being `max_s` old."""
        waited = 0.0
        while self.should_wait(oldest_ts):
            await self.sleep(POLL_S)
            waited += POLL_S
        if waited:
            metrics.PIPELINE_DEFERRED.inc(waited)
            self._held_s += waited
            now = self.wall()
            if self._logged_at is None or now - self._logged_at >= self.log_every_s:
                log.info("pipeline.deferred", reason="the proxy was saturated: the traffic first, "
                         "webhooks later (nothing dropped)",
                         held_s=round(self._held_s, 1), lag_s=round(now - oldest_ts, 2), max_s=self.max_s)
                self._logged_at, self._held_s = now, 0.0
        return waited
