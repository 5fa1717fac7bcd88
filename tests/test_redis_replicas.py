"""Replicas in separate real processes sharing one real redis-server; every delivery counted.

Each replica is `tests/redis_replica.py`: the real Sender on a RedisOutbox, posting to a real
aiohttp receiver in this process. One replica is killed with SIGKILL while it holds leases; in
the other test Redis itself is stopped and restarted while deliveries keep being put.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whazing_gateway.ops import metrics
from whazing_gateway.outbox.redis import RedisOutbox
from whazing_gateway.state.redis import make_client

from tests.receivers import Hang, Receiver
from tests.redis_replica import delivery

ROOT = Path(__file__).resolve().parent.parent
REPLICA = ROOT / "tests" / "redis_replica.py"


class Replica:
    def __init__(self, tmp: Path, name: str, redis_url: str, prefix: str, target_url: str, *extra: str):
        self.ready = tmp / f"{name}.ready"
        self.logfile = open(tmp / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPLICA), "--redis", redis_url, "--prefix", prefix, "--target-url", target_url,
             "--ready", str(self.ready), "--spool", str(tmp / f"{name}.spool.db"), *extra],
            stdout=self.logfile, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        self.replica_id: str | None = None

    async def wait_ready(self, timeout_s: float = 60.0) -> "Replica":
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited {self.proc.returncode}: {Path(self.logfile.name).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("replica not ready in time")
            await asyncio.sleep(0.05)
        self.replica_id = self.ready.read_text()
        return self

    def accepted(self) -> list[str]:
        path = Path(str(self.ready) + ".accepted")
        return path.read_text().split() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.logfile.close()


async def wait_until(cond, timeout_s: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"{what}: not reached within {timeout_s}s")


def first_arrivals(receiver: Receiver) -> list[str]:
    seen: dict[str, None] = {}
    for r in receiver.requests:
        seen.setdefault(r.webhook_id, None)
    return list(seen)


def assert_ticket_order(ids: list[str], order_keys: int, producers: list[range] | None = None) -> None:
    """Per ticket, deliveries arrive in acceptance order. One producer accepts its indexes in
    increasing order; producers interleave, so compare within each producer's range."""
    numbers = [int(i.split("_")[1]) for i in ids]
    for part in producers or [range(0, max(numbers) + 1)]:
        for k in range(order_keys):
            mine = [x for x in numbers if x % order_keys == k and x in part]
            assert mine == sorted(mine), f"ticket {k} delivered out of order"


@pytest.mark.slow
async def test_killing_a_replica_mid_load_loses_nothing(redis_server, tmp_path):
    n, keys = 600, 20
    go = tmp_path / "go"
    # Each request takes a little while, so a replica always has leases in hand. The replicas
    # produce only once all are up (a slow start must not let one finish alone), and the victim
    # produces slower, so it is still producing when the kill comes, however loaded the machine.
    # Heartbeats expire after 5 s: a survivor stalled by a busy machine keeps its leases.
    async with Receiver(then=Hang(0.02)) as receiver:
        replicas = [
            Replica(tmp_path, f"r{k}", redis_server.url, "kill", receiver.url(),
                    "--produce", f"{k * n // 3}:{(k + 1) * n // 3}", "--order-keys", str(keys),
                    "--pause", "0.1" if k == 0 else "0.02", "--heartbeat-ttl", "5", "--go", str(go))
            for k in range(3)
        ]
        try:
            for r in replicas:
                await r.wait_ready()
            go.write_text("go")
            victim = replicas[0]
            client = make_client(redis_server.url)
            # Kill it while it is producing AND holding leases on deliveries in flight.
            deadline = time.monotonic() + 60
            while True:
                leased = await client.scard(f"kill:ob:own:{victim.replica_id}")
                if leased > 0 and len(receiver.requests) > 60 and 0 < len(victim.accepted()):
                    break
                assert len(victim.accepted()) < n // 3, "the victim finished producing before the kill"
                assert time.monotonic() < deadline, "victim never held a lease"
                await asyncio.sleep(0.01)
            victim.proc.kill()
            victim.proc.wait(10)
            assert victim.proc.returncode == -signal.SIGKILL
            await asyncio.sleep(0.5)  # let the file settle: what it accepted is what it wrote before dying
            accepted = set(victim.accepted()) | set(replicas[1].accepted()) | set(replicas[2].accepted())

            # The survivors finish their own production; then everything accepted must arrive.
            def done():
                now_accepted = set(victim.accepted()) | set(replicas[1].accepted()) | set(replicas[2].accepted())
                return len(now_accepted) >= len(accepted) and now_accepted <= set(first_arrivals(receiver)) \
                    and len(replicas[1].accepted()) + len(replicas[2].accepted()) == 2 * n // 3

            await wait_until(done, 60, "every accepted delivery received")
            accepted = set(victim.accepted()) | set(replicas[1].accepted()) | set(replicas[2].accepted())
            got = first_arrivals(receiver)
            assert accepted <= set(got)  # nothing accepted was lost
            assert set(got) <= {f"msg_{i}" for i in range(n)}  # nothing invented
            assert len(victim.accepted()) < n // 3  # it really died mid-production
            assert len(accepted) == len(victim.accepted()) + 2 * n // 3
            # at-least-once: copies only of what the victim had in flight when it died
            copies = len(receiver.requests) - len(got)
            assert 0 <= copies <= 8
            assert_ticket_order(got, keys, [range(k * n // 3, (k + 1) * n // 3) for k in range(3)])
            # the survivors' outboxes agree: nothing pending
            survivor = RedisOutbox(redis_server.url, "kill")
            await survivor.open()
            try:
                await wait_until_async(lambda: survivor.pending_count(), 0, 30)
            finally:
                await survivor.close()
            await client.aclose()
        finally:
            for r in replicas:
                r.stop()


async def wait_until_async(fn, expected, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fn()
        if value == expected:
            return
        assert time.monotonic() < deadline, f"{value!r} != {expected!r}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_redis_restart_spools_and_counts_exactly(redis_server_aof, tmp_path):
    """Puts go on while Redis is down; the spool keeps 50, the overflow is counted; after the
    restart the receiver gets exactly what was accepted (nothing more, nothing less)."""
    keys, spool_max = 10, 50
    async with Receiver() as receiver:
        replicas = [Replica(tmp_path, f"r{k}", redis_server_aof.url, "rs", receiver.url(), "--order-keys", str(keys))
                    for k in range(2)]
        producer = RedisOutbox(redis_server_aof.url, "rs", spool_max, spool_path=tmp_path / "producer.spool.db",
                               flush_interval_s=0.1, timeout_s=1.0)
        await producer.open()
        try:
            for r in replicas:
                await r.wait_ready()
            for i in range(100):  # Redis up
                await producer.put([delivery(i, keys)])
            await receiver.wait_for(100, timeout=60)

            redis_server_aof.stop()
            dropped_before = metrics.REGISTRY.get_sample_value("whazing_gateway_spool_dropped_total") or 0.0
            for i in range(100, 180):  # Redis down: 50 spooled, 30 refused
                await producer.put([delivery(i, keys)])
            assert producer.spooled == spool_max
            dropped = (metrics.REGISTRY.get_sample_value("whazing_gateway_spool_dropped_total") or 0.0) - dropped_before
            assert dropped == 30

            redis_server_aof.start()
            for i in range(180, 230):  # Redis back: these queue behind the spool, in order
                await producer.put([delivery(i, keys)])
            expected = {f"msg_{i}" for i in range(230)} - {f"msg_{i}" for i in range(150, 180)}
            await wait_until(lambda: set(first_arrivals(receiver)) >= expected, 60, "all accepted received")
            await asyncio.sleep(1.0)  # anything extra would show up now
            got = first_arrivals(receiver)
            assert set(got) == expected and len(got) == 200
            assert len(receiver.requests) == 200  # no copies: nobody died, nothing re-sent
            assert_ticket_order(got, keys)
            assert producer.spooled == 0 and producer.redis_up
            assert all(r.proc.poll() is None for r in replicas)  # the replicas rode out the outage
        finally:
            await producer.close()
            for r in replicas:
                r.stop()
