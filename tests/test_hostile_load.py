"""Bad luck on a real gateway: its SQLite outbox locked by another process for longer than its
busy timeout while messages arrive. No event with a delivery is counted or logged as accepted
before the outbox has it, the writes are retried, and once the lock goes every message is
delivered once. (An event no rule routes has nothing to wait for: the first inbound's
`ticket.created` may be accepted while the lock holds, when it is alone in its batch.)"""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from tests.harness import GatewayProcess, wait_until
from tests.receivers import Receiver
from tests.test_pipeline_process import OBSERVER, inbound, inbound_rules, message_bodies
from whazing_standin.demo import metric_sum, parse_metrics
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow


async def test_locked_outbox_holds_events_back_then_delivers_all(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, inbound_rules(receiver.url()), env=OBSERVER).start()
    n = 40
    locker = None
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        locker = sqlite3.connect(gw.workdir / "data" / "outbox.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # longer than the outbox's 2 s busy timeout
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(inbound(s, standin.url, i) for i in range(n)))
            await wait_until(lambda: "outbox write failed: retrying" in gw.log(), 30, what="a retried write")
            m = parse_metrics(await gw.metrics())
            # nothing routed is accepted yet...
            assert metric_sum(m, "whazing_gateway_events_total", type="message.received") == 0
            assert not [e for e in gw.events() if e["type"] == "message.received"]  # ...nor logged so
            assert not receiver.requests
            for _ in range(50):  # the pipeline process reports the outbox's health twice a second
                async with s.get(gw.metrics_url + "/readyz") as r:
                    failing = (await r.json()).get("failing", [])
                if "outbox" in failing:
                    break
                await asyncio.sleep(0.1)
            assert "outbox" in failing
        locker.execute("ROLLBACK")
        await wait_until(lambda: len(message_bodies(receiver)) >= n, 60, interval=0.2, what="every message")
        assert len(message_bodies(receiver)) == n
        await wait_until(lambda: len(gw.events()) >= n, 10, what="the event lines")
        m = parse_metrics(await gw.metrics())
        for _ in range(100):  # the pipeline process's counts reach /metrics in its next report
            if metric_sum(m, "whazing_gateway_events_total", type="message.received") >= n:
                break
            await asyncio.sleep(0.1)
            m = parse_metrics(await gw.metrics())
        assert metric_sum(m, "whazing_gateway_events_total", type="message.received") == n
        assert metric_sum(m, "whazing_gateway_outbox_retries_total") >= 1
        assert metric_sum(m, "whazing_gateway_records_dropped_total") == 0
        assert len([e for e in gw.events() if e["type"] == "message.received"]) == n
    finally:
        if locker is not None:
            locker.close()
        await gw.stop()
        await receiver.stop()
        await standin.stop()
