"""Faults with real gateway processes on one real redis-server, counted end to end:
a replica killed mid-load, and Redis itself restarted mid-load. Every event still arrives."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import aiohttp
import pytest

from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Hang
from whazing_standin import seed

OBSERVER = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}
NUMBERS = 40


async def _produce(url: str, n: int) -> None:
    """n inbound messages from NUMBERS contacts: NUMBERS tickets created, n messages received."""
    async with aiohttp.ClientSession() as s:
        async def one(i):
            async with s.post(url + "/__sim/inbound", json={"whatsappId": 1 + i % 2, "number": f"55219{i % NUMBERS:08d}",
                                                             "body": f"m{i}"}) as r:
                assert r.status == 200
        for start in range(0, n, 10):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10))))
            await asyncio.sleep(0.02)


def _what(receiver) -> Counter:
    """How many distinct webhooks each (type, ticket, message text) got; copies must share an id."""
    first: dict[str, bytes] = {}
    for r in receiver.requests:
        assert first.setdefault(r.webhook_id, r.body) == r.body  # a copy is the same webhook
    kinds: Counter = Counter()
    for raw in first.values():
        body = json.loads(raw)
        text = (body["data"]["message"] or {}).get("body") if body["type"].startswith("message.") else None
        kinds[(body["type"], body["data"]["ticket"]["id"], text)] += 1
    return kinds


async def _gateways(start_gateway, tmp_path, standin, receiver, redis, n: int) -> list[GatewayProcess]:
    settings = f"storage: {{backend: redis, redis: {{url: '{redis.url}', prefix: fx, spool_max: 100000}}}}\n"
    gws = await asyncio.gather(*(start_gateway(tmp_path / f"gw{k}", standin.url, rules_yaml(receiver.url()),
                                               env=OBSERVER, settings=settings) for k in range(n)))
    for gw in gws:
        await wait_until(lambda gw=gw: "observer connected" in gw.log(), 30, what="observers")
    return gws


@pytest.mark.slow
async def test_killing_a_replica_mid_load_loses_nothing(tmp_path, redis_server_aof, standin, make_receiver,
                                                        start_gateway):
    n = 400
    receiver = await make_receiver(then=Hang(0.01))
    gws = await _gateways(start_gateway, tmp_path, standin, receiver, redis_server_aof, 3)
    producer = asyncio.create_task(_produce(standin.url, n))
    await wait_until(lambda: len(receiver.requests) >= 60, 90, what="deliveries before the kill")
    gws[0].proc.send_signal(signal.SIGKILL)
    await producer
    expected = n + NUMBERS  # every message received, every ticket created
    await wait_until(lambda: len(_what(receiver)) >= expected, 180, interval=0.5, what="every event")
    kinds = _what(receiver)
    assert len(kinds) == expected
    assert all(v == 1 for v in kinds.values())  # each distinct webhook once (copies share an id)
    assert sum(1 for k in kinds if k[0] == "ticket.created") == NUMBERS
    assert gws[1].proc.poll() is None and gws[2].proc.poll() is None


@pytest.mark.slow
async def test_redis_restart_mid_load_loses_nothing(tmp_path, redis_server_aof, standin, receiver, start_gateway):
    n = 300
    gws = await _gateways(start_gateway, tmp_path, standin, receiver, redis_server_aof, 2)
    producer = asyncio.create_task(_produce(standin.url, n))
    await wait_until(lambda: len(receiver.requests) >= 50, 90, what="deliveries before the outage")
    redis_server_aof.stop()
    await asyncio.sleep(2.0)  # traffic goes on while Redis is away
    redis_server_aof.start()
    await producer
    expected = n + NUMBERS
    await wait_until(lambda: len(_what(receiver)) >= expected, 180, interval=0.5, what="every event")
    kinds = _what(receiver)
    assert len(kinds) == expected and all(v == 1 for v in kinds.values())
    assert any("outbox.redis_down_spooling" in gw.log() for gw in gws)  # the outage hit the load
    for gw in gws:
        text = await gw.metrics()
        assert "whazing_gateway_spool_dropped_total 0.0" in text
        assert gw.proc.poll() is None
