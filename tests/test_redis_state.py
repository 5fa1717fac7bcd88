"""RedisState against a real redis-server: shared de-duplication, JSON values, expiry, fallback."""

from __future__ import annotations

import asyncio
import time

import pytest

from whazing_gateway.state.redis import RedisState, make_client

pytestmark = pytest.mark.slow  # every test starts a redis-server


async def wait_for(cond, timeout_s: float = 20.0, step: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


async def test_values_round_trip_as_json(redis_server):
    s = RedisState(make_client(redis_server.url), prefix="t1")
    assert await s.get("ticket:1") is None
    value = {"status": "open", "queueId": 3, "userId": None, "tags": ["a", "b"]}
    await s.set("ticket:1", value)
    assert await s.get("ticket:1") == value
    # Stored under the prefix, as JSON a human can read with redis-cli.
    raw = await make_client(redis_server.url).get("t1:state:ticket:1")
    assert raw is not None and b'"queueId":3' in raw
    await s.close()


async def test_add_once_is_shared_between_two_stores(redis_server):
    """Two replicas (two clients) seeing the same event id: exactly one wins."""
    a = RedisState(make_client(redis_server.url), prefix="p")
    b = RedisState(make_client(redis_server.url), prefix="p")
    ids = [f"evt_{i}" for i in range(200)]
    results = await asyncio.gather(*(s.add_once(i, ttl_s=60) for i in ids for s in (a, b)))
    assert sum(results) == len(ids)
    # And a third time, later, still a duplicate.
    assert not await a.add_once("evt_7", ttl_s=60)
    # Different prefixes do not collide (two deployments on one Redis).
    c = RedisState(make_client(redis_server.url), prefix="other")
    assert await c.add_once("evt_7", ttl_s=60)
    for s in (a, b, c):
        await s.close()


async def test_ttl_expires_keys(redis_server):
    s = RedisState(make_client(redis_server.url), prefix="ttl")
    assert await s.add_once("k", ttl_s=0.2)
    await s.set("v", {"x": 1}, ttl_s=0.2)
    client = make_client(redis_server.url)
    pttl = await client.pttl("ttl:state:v")
    assert 0 < pttl <= 200

    async def gone():
        return await client.exists("ttl:state:k", "ttl:state:v") == 0

    await wait_for(gone)
    assert await s.get("v") is None
    assert await s.add_once("k", ttl_s=60)
    await s.close()


async def test_falls_back_to_memory_when_redis_is_down_and_recovers(redis_server):
    s = RedisState(make_client(redis_server.url, timeout_s=1.0), prefix="fb", retry_s=0.1)
    await s.set("ticket:9", {"status": "pending"})
    assert await s.add_once("seen-before", ttl_s=60)

    redis_server.stop()
    # Inference goes on: reads answer from the local copy, writes and de-dup work locally.
    t0 = time.monotonic()
    assert await s.get("ticket:9") == {"status": "pending"}
    assert s.degraded
    await s.set("ticket:9", {"status": "open"})
    assert await s.get("ticket:9") == {"status": "open"}
    assert await s.add_once("new-while-down", ttl_s=60)
    assert not await s.add_once("new-while-down", ttl_s=60)
    assert not await s.add_once("seen-before", ttl_s=60)
    assert time.monotonic() - t0 < 15  # never stalls on a dead Redis (generous bound)

    redis_server.start()  # empty: no persistence

    async def back():
        await s.set("after", 1)
        return not s.degraded

    await wait_for(back)
    assert await s.get("after") == 1
    assert await make_client(redis_server.url).get("fb:state:after") == b"1"
    await s.close()


async def test_a_late_writer_never_puts_an_older_version_back(redis_server):
    """Two replicas commit one ticket's state in any order: the higher version stays, whoever
    writes last; without a version held, or at an equal one, the write goes through."""
    a = RedisState(make_client(redis_server.url), prefix="v")
    b = RedisState(make_client(redis_server.url), prefix="v")
    assert await a.set_newer("t:1:9", {"status": "open"}, 200.0, 60) is True
    assert await b.set_newer("t:1:9", {"status": "pending"}, 100.0, 60) is False  # the late one
    assert await b.get("t:1:9") == {"status": "open"}
    assert await b.set_newer("t:1:9", {"status": "closed"}, 200.0, 60) is True
    assert await a.set_newer("t:1:9", {"status": "open"}, 300.0) is True  # no expiry
    assert await a.get("t:1:9") == {"status": "open"}
    raw = make_client(redis_server.url)
    assert await raw.pttl("v:state:t:1:9") == -1 and await raw.get("v:state:t:1:9#v") == b"300.0"
    await raw.aclose()
    await a.close()
    await b.close()
