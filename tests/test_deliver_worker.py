"""The delivery worker process: killed, it is restarted and nothing accepted is lost; and the
inline mode (sender in the proxy's own loop) still delivers the whole day."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Hang, Receiver
from tests.test_gateway_e2e import _expected
from whazing_standin import seed
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

OBSERVER = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}


def _worker_pids(gw: GatewayProcess) -> list[int]:
    return [r["pid"] for r in gw.log_records() if r.get("event") == "deliver_worker.spawned"]


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_loses_nothing(tmp_path):
    standin = await start_standin()
    receiver = await Receiver(then=Hang(0.02)).start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()), env=OBSERVER).start()
    try:
        await wait_until(lambda: "observer connected" in gw.log() and _worker_pids(gw), 30, what="observer and worker")
        async with aiohttp.ClientSession() as s:
            for i in range(300):
                async with s.post(standin.url + "/__sim/inbound", json={"whatsappId": 1, "number": f"5531{i % 10:09d}",
                                                                       "body": f"w{i}"}) as r:
                    assert r.status == 200
                if i == 100:
                    os.kill(_worker_pids(gw)[0], signal.SIGKILL)
        await wait_until(lambda: len(_worker_pids(gw)) >= 2, 30, what="the worker's restart")
        expected = 300 + 10  # messages, and one ticket per number
        await wait_until(lambda: len({r.webhook_id for r in receiver.requests}) >= expected, 120, interval=0.5,
                         what="every delivery")
        assert len({r.webhook_id for r in receiver.requests}) == expected
        assert any(r.get("event", "").startswith("deliver_worker.died") for r in gw.log_records())
        assert gw.proc.poll() is None
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
    # the worker went away with the gateway: no orphan delivering behind its back
    for pid in _worker_pids(gw):
        await wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or
                         open(f"/proc/{pid}/stat").read().split()[2] == "Z", 20, what=f"worker {pid} gone")


@pytest.mark.slow
async def test_inline_delivery_mode(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()), env=OBSERVER,
                              settings="delivery: {worker: inline}\n").start()
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        await play_day(gw.url)
        total = sum(len(v) for v in _expected(0, 0).values())
        await receiver.wait_for(total, timeout=60)
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == total
        assert not _worker_pids(gw)  # no child process in this mode
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()


async def test_the_worker_reports_counts_in_batches_and_attempts_only_for_the_viewer(capsys):
    """Per delivery the proxy's loop would read and parse a line (about 20 us each): without a
    flow viewer the worker sends none; its counts arrive in its periodic reports instead."""
    import json

    from whazing_gateway.deliver.worker import _Reports
    from whazing_gateway.ops import metrics

    class Outbox:
        async def pending_count(self) -> int:
            return 7

    attempt = {"id": "d1", "target": "t", "outcome": "delivered", "detail": "HTTP 200", "latency_s": 0.01, "age_s": 0.1}
    health = {"target_health": [{"target": "t", "state": "failing", "next_probe_at": 1.0}]}
    quiet, viewer = _Reports(Outbox(), outcomes=False), _Reports(Outbox(), outcomes=True)
    capsys.readouterr()
    quiet.attempted(attempt)
    quiet.attempted(health)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [health]
    viewer.attempted(attempt)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [attempt]

    metrics.DELIVERIES_DONE.labels(target="batch-test", outcome="delivered").inc(3)
    metrics.RULES_RELOADS.labels(outcome="ok").inc()  # the pipeline process reports these
    metrics.TARGET_PROBES.labels(target="batch-test", outcome="success").inc()  # the parent counts the probe lines
    await quiet.report()
    (line,) = capsys.readouterr().out.splitlines()
    report = json.loads(line)
    assert report["pending"] == 7
    assert ["whazing_gateway_deliveries", {"target": "batch-test", "outcome": "delivered"}, 3.0] in report["m"]
    assert not any(name.startswith(("whazing_gateway_rules_reloads", "whazing_gateway_target_probes"))
                   for name, _, _ in report["m"])
    await quiet.report()  # nothing changed: nothing repeated
    assert json.loads(capsys.readouterr().out)["m"] == []
