"""Crash test of the whole gateway: with thousands of events in flight, `kill -9` the gateway
process, start it again, and count: every accepted event (a row committed in the outbox) is
delivered, none is lost, and duplicates only ever repeat a `webhook-id`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter

import aiohttp
import pytest

from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Hang, Receiver
from whazing_standin import seed
from whazing_standin.server import start_standin

N_MESSAGES = 2000


def accepted_ids(db) -> set[str]:
    """What the killed process had committed: read straight from its SQLite file."""
    con = sqlite3.connect(db)
    try:
        return {row[0] for row in con.execute("SELECT id FROM deliveries")}
    finally:
        con.close()


@pytest.mark.slow
async def test_kill_9_mid_load_loses_no_accepted_event(tmp_path):
    standin = await start_standin()
    receiver = await Receiver(then=Hang(0.01)).start()  # a receiver a little slower than Whazing
    env = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}
    rules = rules_yaml(receiver.url(), fmt="whazing").replace("kind: generic", "kind: generic\n    concurrency: 2")
    gw = await GatewayProcess(tmp_path, standin.url, rules, env=env).start()
    await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
    sent = 0

    async def inbound(session, i):
        async with session.post(standin.url + "/__sim/inbound",
                                json={"whatsappId": 1 + i % 2, "number": f"55119{i % 50:08d}", "body": f"msg {i}"}) as r:
            assert r.status == 200

    async def produce():
        nonlocal sent
        async with aiohttp.ClientSession() as s:
            for start in range(0, N_MESSAGES, 20):
                await asyncio.gather(*(inbound(s, i) for i in range(start, start + 20)))
                sent += 20

    producer = asyncio.create_task(produce())
    try:
        # kill while deliveries are going out and more are accepted than delivered
        await wait_until(lambda: len(receiver.requests) >= 200, 120, what="deliveries before the kill")
        gw.proc.send_signal(signal.SIGKILL)
        await gw.stop()
        # its delivery worker does not outlive it (no orphan sending behind the next gateway's back)
        workers = [r["pid"] for r in gw.log_records() if r.get("event") == "deliver_worker.spawned"]
        assert workers
        for pid in workers:
            await wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}")
                             or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 20, what=f"worker {pid} gone")
        accepted_before_kill = accepted_ids(gw.workdir / "data" / "outbox.db")
        delivered_before_restart = {r.webhook_id for r in receiver.requests}
        assert len(accepted_before_kill) > len(delivered_before_restart)  # some were in flight or queued
        await producer

        await gw.start()  # the same folder, ports and outbox file
        await wait_until(lambda: accepted_before_kill <= {r.webhook_id for r in receiver.requests}, 180,
                         interval=0.5, what="every accepted delivery")
        counts = Counter(r.webhook_id for r in receiver.requests)
        dupes = {k: v for k, v in counts.items() if v > 1}
        # a duplicate is the same webhook with the same id and the same body, never a new id
        for wid in dupes:
            bodies = {r.body for r in receiver.requests if r.webhook_id == wid}
            assert len(bodies) == 1
        assert accepted_before_kill <= set(counts)
        await gw.stop()
    finally:
        producer.cancel()
        if gw.proc and gw.proc.poll() is None:
            await gw.stop()
        await receiver.stop()
        await standin.stop()
