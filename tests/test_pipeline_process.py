"""The pipeline in its own process, through a real gateway in front of the stand-in: killed
with -9 mid-load it is restarted and no message is lost (the journal is read again from its
checkpoint, duplicates keep their webhook id); frames above inspect_max_bytes are passed on
unread and counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import pytest

from tests.harness import GatewayProcess, wait_until
from tests.receivers import Receiver
from whazing_standin import seed
from whazing_standin.demo import metric_sum, parse_metrics
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow

OBSERVER = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}


def inbound_rules(url: str) -> str:
    return (f"targets:\n  - name: recv\n    url: {url}\n    format: envelope\n    kind: generic\n"
            "channels:\n  - name: inbound\n    channel: \"*\"\n    targets: [recv]\n"
            "    events: [message.received]\n    open: true\n    pending: true\n    groups: true\n")


def pipeline_pids(gw: GatewayProcess) -> list[int]:
    return [r["pid"] for r in gw.log_records() if r.get("event") == "pipeline.spawned"]


def cpu_policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of a process (the outbox's and the journal's too)."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def message_bodies(receiver: Receiver) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for r in receiver.requests:
        out.setdefault(r.headers.get("webhook-id", ""), set()).add(r.body)
    return out


async def inbound(session: aiohttp.ClientSession, base: str, i: int, body: str | None = None) -> None:
    async with session.post(base + "/__sim/inbound", json={"whatsappId": 1, "number": f"55118{i % 40:08d}",
                                                            "body": body or f"msg {i}"}) as r:
        assert r.status == 200


async def test_pipeline_killed_mid_load_restarts_and_loses_nothing(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, inbound_rules(receiver.url()), env=OBSERVER).start()
    n = 300
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        [first] = pipeline_pids(gw)
        async with aiohttp.ClientSession() as s:
            for start in range(0, n, 10):
                await asyncio.gather(*(inbound(s, standin.url, i) for i in range(start, start + 10)))
                if start == 100:
                    os.kill(first, signal.SIGKILL)
        await wait_until(lambda: len(message_bodies(receiver)) >= n, 90, interval=0.2,
                         what=f"{n} distinct message webhooks")
        bodies = message_bodies(receiver)
        assert len(bodies) == n  # every inbound message, once per webhook id
        assert all(len(b) == 1 for b in bodies.values())  # a repeat is the same webhook, never a new id
        texts = {json.loads(next(iter(b)))["data"]["message"]["body"] for b in bodies.values()}
        assert texts == {f"msg {i}" for i in range(n)}
        pids = pipeline_pids(gw)
        assert len(pids) == 2 and pids[0] == first
        # Both children, the restarted one included, take only the CPU the proxy leaves idle.
        workers = [r["pid"] for r in gw.log_records() if r.get("event") == "deliver_worker.spawned"]
        assert cpu_policies(pids[1]) == cpu_policies(workers[-1]) == {os.SCHED_IDLE}
        assert cpu_policies(gw.proc.pid) == {os.SCHED_OTHER}
        assert any(r.get("event", "").startswith("pipeline.died") for r in gw.log_records())
        m = parse_metrics(await gw.metrics())
        assert metric_sum(m, "whazing_gateway_pipeline_restarts_total") == 1
        assert metric_sum(m, "whazing_gateway_records_dropped_total") == 0
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
    # it dies with the gateway: no pipeline process outlives it
    for pid in pipeline_pids(gw):
        await wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}")
                         or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 20, what=f"pipeline {pid} gone")


async def test_children_cpu_low_runs_both_children_at_nice_10(tmp_path):
    """`proxy.children_cpu: low`: a share beside busy programs instead of the idle class."""
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, inbound_rules(receiver.url()), env=OBSERVER,
                              settings="proxy: {children_cpu: low}\n").start()
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        async with aiohttp.ClientSession() as s:
            await inbound(s, standin.url, 1, body="at nice 10")
        await receiver.wait_for(1, timeout=30)
        [pipeline] = pipeline_pids(gw)
        [worker] = [r["pid"] for r in gw.log_records() if r.get("event") == "deliver_worker.spawned"]
        proxy_nice = os.getpriority(os.PRIO_PROCESS, gw.proc.pid)
        for pid in (pipeline, worker):
            assert cpu_policies(pid) == {os.SCHED_OTHER}
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, proxy_nice + 10)
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()


async def test_frames_above_the_inspection_limit_are_passed_on_unread(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, inbound_rules(receiver.url()), env=OBSERVER,
                              settings="proxy: {inspect_max_bytes: 8k}\n").start()
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        async with aiohttp.ClientSession() as s:
            await inbound(s, standin.url, 1, body="x" * 20_000)  # its push is > 8 KB: not read
            await inbound(s, standin.url, 2, body="small")
        await receiver.wait_for(1, timeout=30)
        await asyncio.sleep(1.0)  # a webhook for the big one would have come by now
        assert [json.loads(r.body)["data"]["message"]["body"] for r in receiver.requests] == ["small"]
        m = parse_metrics(await gw.metrics())
        assert metric_sum(m, "whazing_gateway_uninspected_total", kind="frame") >= 1
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
