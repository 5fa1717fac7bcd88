"""A target that is down (n8n answering 404 while its workflow is inactive), then back: it is
probed with backoff, not hammered, and the first success releases everything held, in
per-ticket order, long before the retry schedule's 300 s wait. Both outbox engines, real
receivers, a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from whazing_gateway import model
from whazing_gateway.deliver.sender import Sender
from whazing_gateway.ops import metrics
from whazing_gateway.outbox.base import DELIVERED, FAILING, HEALTHY, OutboxFilter
from whazing_gateway.outbox.redis import RedisOutbox
from whazing_gateway.outbox.sqlite import SqliteOutbox

try:
    from tests.receivers import Receiver
except ImportError:  # pragma: no cover - run from inside tests/
    from receivers import Receiver
    from redis_server import redis_server  # noqa: F401

# Whazing-like schedule: after the second failure the next retry is 300 s away.
SCHEDULE = (0, 5, 300, 1800, 7200)
TICKETS = (101, 102, 103)


def delivery(ticket: int, n: int, target: str) -> model.Delivery:
    return model.Delivery(
        id=f"msg_{target}_{ticket}_{n}", target=target, event_id=f"evt_{ticket}_{n}",
        event_type=model.MESSAGE_RECEIVED, order_key=f"ticket:{ticket}",
        body=json.dumps({"ticket": ticket, "n": n}).encode(), created_at=time.time(), ticket_id=ticket,
    )


def probes(target: str, outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "whazing_gateway_target_probes_total", {"target": target, "outcome": outcome}) or 0.0


def state_metric(target: str, state: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "whazing_gateway_target_state", {"target": target, "state": state}) or 0.0


@pytest.fixture(params=["sqlite", "redis"])
async def outbox(request, tmp_path):
    if request.param == "sqlite":
        ob = SqliteOutbox(tmp_path / "outbox.db")
    else:
        server = request.getfixturevalue("redis_server")
        ob = RedisOutbox(server.url, "probe", spool_path=tmp_path / "spool.db", reorder_window_s=0)
    await ob.open()
    yield ob
    await ob.close()


async def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_down_then_up_target_is_probed_and_released_in_order(outbox, tmp_path):
    name = f"n8n_{type(outbox).__name__}"
    async with Receiver(then=404) as rx:
        target = model.Target(name=name, url=rx.url(), kind="n8n", concurrency=4, retry_schedule=SCHEDULE)
        sender = Sender(outbox, lambda: {name: target}, poll_interval=0.05, housekeeping_s=0.2)
        await sender.start()
        try:
            sent = [delivery(t, 0, name) for t in TICKETS]
            await outbox.put(sent)
            sender.wake()
            await rx.wait_for(1)
            await wait_until(lambda: _state(outbox, name, FAILING), 10, "target failing")
            for n in range(1, 4):  # more events while it is down: held, in order
                batch = [delivery(t, n, name) for t in TICKETS]
                await outbox.put(batch)
                sent += batch
                sender.wake()
                await asyncio.sleep(1.5)
            await asyncio.sleep(2.0)
            down_requests = len(rx.requests)
            failed_probes = probes(name, "failure")
            health = (await outbox.target_health())[name]
            assert health.state == FAILING and health.next_probe_at is not None and health.probes >= 1
            assert state_metric(name, FAILING) == 1.0
            # ~6.5 s down: a probe at most every few seconds, not one request per held delivery
            # (12 held) and not one per poll (130 polls).
            assert 1 <= failed_probes <= 6
            assert down_requests <= len(TICKETS) + failed_probes
            assert await outbox.pending_count() == len(sent)

            up_at = time.time()
            rx.then = 200
            await wait_until(lambda: _all_delivered(outbox, sent), 30, "everything delivered after the target came back")
            ok = [r for r in rx.requests if r.at >= up_at]
            recovery_s = max(r.at for r in ok) - up_at
            print(f"\n[{type(outbox).__name__}] down requests={down_requests} failed probes={failed_probes:.0f}"
                  f" held={len(sent)} recovery: all delivered {recovery_s:.2f} s after the receiver came back")
            assert all(r.at >= up_at for r in rx.requests[down_requests:])
            delivered_ids = [r.webhook_id for r in ok]
            assert sorted(set(delivered_ids)) == sorted(d.id for d in sent)  # nothing dropped
            for t in TICKETS:  # per-ticket order
                seq = [json.loads(r.body)["n"] for r in ok if json.loads(r.body)["ticket"] == t]
                assert seq == sorted(seq) and set(seq) == {0, 1, 2, 3}
            assert probes(name, "success") >= 1
            await wait_until(lambda: _state(outbox, name, HEALTHY), 5, "target healthy again")
            items = await outbox.find(OutboxFilter(target=name, limit=None))
            assert all(i.round_attempts <= 3 for i in items)  # probes did not eat the schedule
        finally:
            await sender.stop(timeout=1)


async def _state(outbox, name: str, state: str) -> bool:
    h = (await outbox.target_health()).get(name)
    return h is not None and h.state == state


async def _all_delivered(outbox, sent) -> bool:
    items = await outbox.find(OutboxFilter(ids=tuple(d.id for d in sent), limit=None))
    return len(items) == len(sent) and all(i.status == DELIVERED for i in items)


N8N_RULES = """\
targets:
  - name: n8n
    url: {url}
    kind: n8n
channels:
  - name: everything
    channel: "*"
    targets: [n8n]
    events: [message.received, ticket.created]
    open: true
    pending: true
"""


@pytest.mark.slow
async def test_a_real_gateway_shows_target_health_in_metrics_and_the_cli(tmp_path):
    """The delivery worker (a child process) probes; the gateway's /metrics and `deliveries
    targets` show the target failing while n8n answers 404, healthy once it is back."""
    import subprocess
    import sys

    import aiohttp

    from tests.harness import REPO, GatewayProcess, wait_until
    from whazing_standin import seed
    from whazing_standin.server import start_standin

    def targets() -> dict:
        res = subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "deliveries", "targets", "--config",
                              str(gw.config), "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        return {r["target"]: r for r in json.loads(res.stdout)}

    async def sample(name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(await gw.metrics()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    standin = await start_standin()
    async with Receiver(then=404) as rx:
        env = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}
        gw = GatewayProcess(tmp_path, standin.url, N8N_RULES.format(url=rx.url()), env=env)
        await gw.start()
        try:
            await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
            async with aiohttp.ClientSession() as s:
                for i in range(3):
                    async with s.post(standin.url + "/__sim/inbound", json={
                            "whatsappId": seed.CHANNEL_VENDAS, "number": f"551190000{i:04d}", "body": "oi"}) as r:
                        assert r.status == 200
            deadline = time.monotonic() + 30
            while await sample("whazing_gateway_target_state", target="n8n", state="failing") != 1.0:
                assert time.monotonic() < deadline, gw.log()[-3000:]
                await asyncio.sleep(0.2)
            row = await asyncio.to_thread(targets)
            assert row["n8n"]["state"] == "failing" and row["n8n"]["held"] >= 1
            assert await sample("whazing_gateway_target_next_probe_timestamp_seconds", target="n8n") > 0
            await asyncio.sleep(3.0)
            down = len(rx.requests)
            up_at = time.time()
            rx.then = 200
            deadline = time.monotonic() + 30
            while await sample("whazing_gateway_deliveries_total", target="n8n", outcome="delivered") < 6:
                assert time.monotonic() < deadline, gw.log()[-3000:]
                await asyncio.sleep(0.1)
            print(f"\n[gateway] 6 deliveries held while n8n answered 404 ({down} requests, "
                  f"{await sample('whazing_gateway_target_probes_total', target='n8n', outcome='failure'):.0f} "
                  f"failed probes), all delivered {max(r.at for r in rx.requests) - up_at:.2f} s after it came back")
            assert down <= 3 + 6  # first attempts, then a few probes: not one per poll
            assert await sample("whazing_gateway_target_probes_total", target="n8n", outcome="success") >= 1
            deadline = time.monotonic() + 15
            while await sample("whazing_gateway_target_state", target="n8n", state="healthy") != 1.0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert (await asyncio.to_thread(targets))["n8n"]["state"] == "healthy"
        finally:
            await gw.stop()
            await standin.stop()


async def test_a_target_failing_at_stop_is_probed_first_after_a_restart(tmp_path):
    """The health survives the restart (it is in the outbox): one probe, then the rest, in order."""
    outbox = SqliteOutbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        async with Receiver(then=503) as rx:
            target = model.Target(name="t", url=rx.url(), kind="generic", concurrency=4, retry_schedule=(0, 300, 1800))
            sender = Sender(outbox, lambda: {"t": target}, poll_interval=0.05, housekeeping_s=0.2)
            await sender.start()
            await outbox.put([delivery(101, n, "t") for n in range(3)])
            sender.wake()
            await wait_until(lambda: _state(outbox, "t", FAILING), 10, "target failing")
            await sender.stop(timeout=1)
            before = len(rx.requests)
            rx.then = 200
            sender = Sender(outbox, lambda: {"t": target}, poll_interval=0.05, housekeeping_s=0.2)
            await sender.start()
            try:
                await wait_until(lambda: _state(outbox, "t", HEALTHY), 10, "healthy after the restart")
                await wait_until(lambda: _all_delivered(outbox, [delivery(101, n, "t") for n in range(3)]), 10,
                                 "all delivered")
            finally:
                await sender.stop(timeout=1)
            after = [json.loads(r.body)["n"] for r in rx.requests[before:]]
            assert after == [0, 1, 2]  # the probe (the held head), then the rest, in order
    finally:
        await outbox.close()
