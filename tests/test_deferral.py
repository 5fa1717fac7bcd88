"""The pipeline's deferral: a saturated proxy goes first, but a record is never held past max_s,
and saturation that lasts max_s (not a burst) is not held at all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from whazing_gateway.ops import metrics
from whazing_gateway.pipeline.deferral import Deferral, ProxyLoad, thread_cpu_seconds


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


def load_of(share: float | None, clock: Clock) -> ProxyLoad:
    """A proxy whose main thread uses `share` of a core (None: its CPU time is unreadable)."""
    return ProxyLoad(pid=1, window_s=0.5, clock=clock,
                     cpu=lambda pid: None if share is None else clock.now * share)


def varying_load(share: dict[str, float], clock: Clock) -> ProxyLoad:
    """A proxy whose main thread uses `share["now"]` of a core since the last reading (set it
    to change the load from then on)."""
    used = {"cpu": 0.0, "at": clock.now}

    def cpu(pid):
        used["cpu"] += (clock.now - used["at"]) * share["now"]
        used["at"] = clock.now
        return used["cpu"]

    return ProxyLoad(pid=1, window_s=0.5, clock=clock, cpu=cpu)


def deferral(share: float | None, clock: Clock, **kw) -> Deferral:
    d = Deferral(load_of(share, clock), wall=clock, sleep=clock.sleep, **kw)
    d.load.share()  # the consumer samples at every batch: a window is under way
    clock.now += 0.5
    return d


def test_a_backlog_waits_while_the_proxy_is_saturated_but_never_past_max():
    clock = Clock()
    d = deferral(0.97, clock, max_s=10.0)
    before = metrics.PIPELINE_DEFERRED._value.get()
    oldest = clock.now - 2.0  # the pipeline is 2 s behind
    waited = asyncio.run(d.hold(oldest))
    # it waited until the record was max_s old, not a poll longer, and counted it
    assert 7.5 <= waited <= 8.2
    assert 10.0 <= clock.now - oldest < 10.2
    assert metrics.PIPELINE_DEFERRED._value.get() - before == pytest.approx(waited)


def test_no_wait_when_the_proxy_has_room_or_the_record_is_max_s_old():
    clock = Clock()
    assert asyncio.run(deferral(0.5, clock).hold(clock.now - 3.0)) == 0  # proxy not saturated
    assert asyncio.run(deferral(None, clock).hold(clock.now - 3.0)) == 0  # load unknown (not Linux)
    assert asyncio.run(deferral(1.0, clock, max_s=10.0).hold(clock.now - 11.0)) == 0  # already max_s late


def test_a_fresh_record_waits_during_a_burst():
    clock = Clock()
    # the pipeline keeps up (its record is 0.1 s old), but a burst is the traffic's
    assert asyncio.run(deferral(1.0, clock, max_s=10.0).hold(clock.now - 0.1)) > 9.0


def test_saturation_that_lasts_max_s_is_not_held_until_the_proxy_has_room():
    clock = Clock()
    share = {"now": 1.0}
    d = Deferral(varying_load(share, clock), max_s=10.0, wall=clock, sleep=clock.sleep)
    d.load.share()
    clock.now += 0.5
    first = asyncio.run(d.hold(clock.now))  # a burst begins: held up to max_s
    assert 9.5 <= first <= 10.2
    for _ in range(20):  # the saturation goes on: every record is processed as it comes
        clock.now += 0.5
        assert asyncio.run(d.hold(clock.now - 0.05)) == 0
    share["now"] = 0.2  # a dip of a second...
    clock.now += 0.6
    assert asyncio.run(d.hold(clock.now - 0.05)) == 0
    share["now"] = 1.0  # ...does not end the saturation: still not held
    for _ in range(2):
        clock.now += 0.6
        assert asyncio.run(d.hold(clock.now - 0.05)) == 0
    share["now"] = 0.2  # the load eases for longer than calm_s...
    for _ in range(5):
        clock.now += 0.6
        assert asyncio.run(d.hold(clock.now - 0.05)) == 0
    share["now"] = 1.0  # ...and the next burst is held again
    clock.now += 0.6
    assert asyncio.run(d.hold(clock.now - 0.05)) > 9.0


def test_it_resumes_as_soon_as_the_proxy_calms_down():
    clock = Clock()

    def cpu(pid):  # saturated for 2 s, then idle
        return min(clock.now - 1000.0, 2.0)

    d = Deferral(ProxyLoad(pid=1, window_s=0.5, clock=clock, cpu=cpu), wall=clock, sleep=clock.sleep)
    d.load.share()
    clock.now += 0.5
    waited = asyncio.run(d.hold(clock.now - 2.0))
    assert 1.5 <= waited <= 2.6, waited  # the first window after the load ended shows it


def test_the_first_sample_only_starts_a_window():
    clock = Clock()
    d = Deferral(load_of(1.0, clock), wall=clock, sleep=clock.sleep)
    assert asyncio.run(d.hold(clock.now - 3.0)) == 0  # no window yet: no reason to hold
    clock.now += 0.5
    assert asyncio.run(d.hold(clock.now - 3.0)) > 0


@pytest.mark.slow
def test_proxy_load_reads_a_real_busy_thread_and_a_sleeping_one():
    if thread_cpu_seconds(os.getpid()) is None:
        pytest.fail("no /proc/<pid>/task/<pid>/stat here: the deferral would never hold (not Linux?)")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        loads = [ProxyLoad(busy.pid, window_s=0.5), ProxyLoad(idle.pid, window_s=0.5)]
        for load in loads:
            assert load.share() is None  # the first call only starts the window
        time.sleep(1.0)
        busy_share, idle_share = (load.share() for load in loads)
        assert idle_share is not None and idle_share < 0.05
        # a spinning thread on a shared 2-core machine: most of a core, whatever else runs
        assert busy_share is not None and busy_share > 0.3
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert ProxyLoad(busy.pid).share() is None  # gone: unknown, so never a reason to hold


class Batches:
    """The pipeline's side of the consumer: what it was given, when."""

    max_batch = 64

    def __init__(self) -> None:
        self.seen: list[tuple[float, list]] = []
        self.wake = None

    async def process_batch(self, records) -> None:
        self.seen.append((time.time(), list(records)))

    def flow_ids(self) -> list[str]:
        return [r.flow_id for _, batch in self.seen for r in batch]


class NoReports:
    sent_at = 0.0

    def __call__(self) -> None:
        pass


async def consume(tmp_path, share: float, max_s: float, n: int = 300) -> Batches:
    """A real journal written with records already 2 s old, read by the real consumer."""
    from whazing_gateway.edge.records import WsFrame
    from whazing_gateway.pipeline.child import Consumer
    from whazing_gateway.pipeline.journal import JournalReader, JournalWriter

    writer = JournalWriter(tmp_path)
    writer.start()
    old = time.time() - 2.0
    for i in range(n):
        writer.submit(WsFrame(f"f{i}", old, False, b'42["x",%d]' % i))
    while writer.written < n:
        await asyncio.sleep(0.01)
    writer.stop()
    batches = Batches()
    load = ProxyLoad(pid=1, window_s=0.0, cpu=lambda pid: time.monotonic() * share)
    load.share()  # a window under way, as at every batch of a running consumer
    consumer = Consumer(JournalReader(tmp_path), batches, NoReports(), deferral=Deferral(load, max_s=max_s))
    task = asyncio.create_task(consumer.run())
    try:
        while len(batches.flow_ids()) < n:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return batches


async def test_the_consumer_holds_a_late_journal_then_reads_all_of_it_in_order(tmp_path):
    before = metrics.PIPELINE_DEFERRED._value.get()
    batches = await consume(tmp_path, share=1.0, max_s=3.0)
    assert batches.flow_ids() == [f"f{i}" for i in range(300)]  # every record, once, in order
    # held while the proxy was saturated, but only until the records were max_s old
    assert all(at - batch[0].ts >= 3.0 for at, batch in batches.seen)
    assert metrics.PIPELINE_DEFERRED._value.get() - before >= 0.5


async def test_the_consumer_does_not_hold_when_the_proxy_has_room(tmp_path):
    before = metrics.PIPELINE_DEFERRED._value.get()
    batches = await consume(tmp_path, share=0.3, max_s=60.0)
    assert batches.flow_ids() == [f"f{i}" for i in range(300)]
    assert metrics.PIPELINE_DEFERRED._value.get() == before


def test_a_burst_after_a_quiet_spell_without_batches_is_held_again():
    """Records stop with the load: no batch samples the proxy while it is quiet, and the next
    burst must not be taken for the old, sustained saturation."""
    clock = Clock()
    share = {"now": 1.0}
    d = Deferral(varying_load(share, clock), max_s=10.0, wall=clock, sleep=clock.sleep)
    d.load.share()
    clock.now += 0.5
    assert asyncio.run(d.hold(clock.now)) > 9.0  # a burst, held
    clock.now += 0.5
    assert asyncio.run(d.hold(clock.now - 0.05)) == 0  # it lasted: sustained, not held
    share["now"] = 0.0  # the load stops, and with it the records: nothing samples for 30 s
    clock.now += 30.0
    d.load.cpu(1)  # (the fake accrues the quiet 30 s at share 0)
    share["now"] = 1.0  # a new burst: its first batch sees the quiet 30 s window (it goes on)...
    assert asyncio.run(d.hold(clock.now - 0.05)) == 0
    clock.now += 0.5
    assert asyncio.run(d.hold(clock.now - 0.05)) > 9.0  # ...and the next is held: a new burst
