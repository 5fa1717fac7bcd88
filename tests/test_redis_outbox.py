"""What only the Redis outbox has, against a real redis-server: prefixes, replicas sharing one
store (claims, heartbeats, lease takeover, event-time order) and the spool while Redis is down.
The contract both engines share is tests/test_outbox_contract.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog
import structlog.testing

from whazing_gateway import model
from whazing_gateway.ops import metrics
from whazing_gateway.outbox import OutboxError, open_outbox
from whazing_gateway.outbox.base import DELIVERED, Attempt
from whazing_gateway.outbox.redis import ORDER_TOLERANCE_S, RedisOutbox

pytestmark = pytest.mark.slow  # every test starts a redis-server


def d(i: int, target: str = "t1", order_key: str | None = None, etype: str = model.TICKET_CREATED,
      created_at: float | None = None) -> model.Delivery:
    return model.Delivery(
        id=f"msg_{target}_{i}", target=target, event_id=f"evt_{i}", event_type=etype, order_key=order_key,
        body=f'{{"i":{i}}}'.encode(), created_at=time.time() if created_at is None else created_at,
        ticket_id=i,
    )


def ok(at: float | None = None) -> Attempt:
    return Attempt(at=at or time.time(), status_code=200, latency_ms=1.5)


async def wait_for(cond, timeout_s: float = 30.0, step: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"{what} not met within {timeout_s}s")


@pytest.fixture
async def outbox(redis_server, tmp_path):
    ob = RedisOutbox(redis_server.url, "t", spool_path=tmp_path / "spool.db", reorder_window_s=0)
    await ob.open()
    yield ob
    await ob.close()


def dropped() -> float:
    return metrics.REGISTRY.get_sample_value("whazing_gateway_spool_dropped_total") or 0.0


async def test_prefixes_isolate_deployments(outbox, redis_server):
    await outbox.put([d(1)])
    other = RedisOutbox(redis_server.url, "someone-else")
    await other.open()
    try:
        assert await other.pending_count() == 0 and await other.claim(time.time(), 10) == []
    finally:
        await other.close()


async def test_open_outbox_factory_selects_redis(redis_server, tmp_path):
    class S:
        storage_backend = "redis"
        redis_url = redis_server.url
        redis_prefix = "fac"
        spool_max = 7
        data_dir = tmp_path / "data"

    ob = open_outbox(S())
    assert isinstance(ob, RedisOutbox) and ob.spool.max_items == 7
    assert ob.spool.path == str(tmp_path / "data" / "redis-spool.db")
    async with ob:
        await ob.put([d(1)])
        assert await ob.pending_count() == 1


# ---- replicas ------------------------------------------------------------------------------------


async def test_two_replicas_never_claim_the_same_item_and_keep_ticket_order(redis_server, tmp_path):
    a = RedisOutbox(redis_server.url, "r", replica_id="a")
    b = RedisOutbox(redis_server.url, "r", replica_id="b")
    await a.open()
    await b.open()
    try:
        deliveries = [d(i, order_key=f"tk{i % 7}") for i in range(140)]
        for i, delivery in enumerate(deliveries):  # accepted alternately by the two replicas
            await (a if i % 2 else b).put([delivery])
        await asyncio.gather(a.put(deliveries), b.put(deliveries))  # both saw everything: no copies
        seen: list[tuple[str, str]] = []
        inflight: dict[str, str] = {}

        async def worker(ob: RedisOutbox, name: str):
            while True:
                items = await ob.claim(time.time(), 5, lease_s=60)
                if not items:
                    if await ob.pending_count() == 0:
                        return
                    await asyncio.sleep(0.01)
                    continue
                for item in items:
                    assert item.order_key not in inflight, "two deliveries of one ticket in flight"
                    inflight[item.order_key] = item.id
                for item in items:
                    await asyncio.sleep(0)
                    seen.append((name, item.id))
                    del inflight[item.order_key]
                    await ob.record_attempt(item.id, ok(), "delivered", None)

        await asyncio.wait_for(asyncio.gather(worker(a, "a"), worker(b, "b")), 60)
        ids = [i for _, i in seen]
        assert sorted(ids) == sorted(x.id for x in deliveries)  # each exactly once
        assert {n for n, _ in seen} == {"a", "b"}  # both replicas worked
        for k in range(7):  # per-ticket order across replicas
            mine = [i for i in ids if int(i.rsplit("_", 1)[1]) % 7 == k]
            assert mine == sorted(mine, key=lambda i: int(i.rsplit("_", 1)[1]))
    finally:
        await a.close()
        await b.close()


async def test_dead_replicas_leases_are_taken_over_after_its_heartbeat(redis_server):
    dead = RedisOutbox(redis_server.url, "hb", replica_id="dead", heartbeat_s=0.2, heartbeat_ttl_s=1.0,
                        reorder_window_s=0)
    await dead.open()
    await dead.put([d(1, order_key="A"), d(2, order_key="A"), d(3)])
    assert len(await dead.claim(time.time(), 10, lease_s=3600)) == 2
    for task in dead._tasks:  # simulate kill -9: the heartbeat stops, nothing is released
        task.cancel()
    alive = RedisOutbox(redis_server.url, "hb", replica_id="alive", heartbeat_s=0.2, heartbeat_ttl_s=1.0)
    await alive.open()
    try:
        assert await alive.claim(time.time(), 10) == []  # leased for an hour by a live-looking replica
        got: list[str] = []

        async def taken_over():
            got.extend(i.id for i in await alive.claim(time.time(), 10))
            return len(got) == 2

        await wait_for(taken_over, what="takeover")
        assert sorted(got) == ["msg_t1_1", "msg_t1_3"]
    finally:
        await alive.close()
        dead._opened = False
        await dead.client.aclose()


async def test_clean_close_hands_leases_over_at_once(redis_server):
    a = RedisOutbox(redis_server.url, "cc", replica_id="a")
    b = RedisOutbox(redis_server.url, "cc", replica_id="b")
    await a.open()
    await b.open()
    await a.put([d(1)])
    assert len(await a.claim(time.time(), 10, lease_s=3600)) == 1
    await a.close()
    try:
        assert [i.id for i in await b.claim(time.time(), 10)] == ["msg_t1_1"]
    finally:
        await b.close()


# ---- Redis down: spool ---------------------------------------------------------------------------


async def test_redis_down_spools_and_flushes_in_order_when_back(redis_server_aof, tmp_path):
    ob = RedisOutbox(redis_server_aof.url, "sp", spool_path=tmp_path / "spool.db", flush_interval_s=0.1,
                     timeout_s=1.0)
    await ob.open()
    try:
        await ob.put([d(0, order_key="A")])
        redis_server_aof.stop()
        t0 = time.monotonic()
        for i in range(1, 40):
            await ob.put([d(i, order_key="A")])  # never raises
        assert time.monotonic() - t0 < 20  # only the first put waits on the dead Redis
        assert ob.spooled == 39 and not ob.redis_up and ob.healthy
        assert "spooling" in (ob.last_error or "")
        with pytest.raises(OutboxError):
            await ob.claim(time.time(), 10)

        redis_server_aof.start()  # with its append-only file: d(0) is still there

        async def flushed():
            return ob.spooled == 0 and ob.redis_up

        await wait_for(flushed, what="spool flush")
        await ob.put([d(40, order_key="A")])  # direct again
        order = []
        while len(order) < 41:
            items = await ob.claim(time.time(), 10)
            assert len(items) <= 1  # one ticket: one at a time
            for item in items:
                order.append(item.id)
                await ob.record_attempt(item.id, ok(), "delivered", None)
        assert order == [f"msg_t1_{i}" for i in range(41)]
    finally:
        await ob.close()


async def test_spool_overflow_is_counted_logged_and_survives_restart(redis_server, tmp_path):
    spool = tmp_path / "spool.db"
    ob = RedisOutbox(redis_server.url, "ov", 5, spool_path=spool, flush_interval_s=0.1, timeout_s=1.0)
    await ob.open()
    redis_server.stop()
    before = dropped()
    with structlog.testing.capture_logs() as logged:  # independent of how other tests set up logging
        await ob.put([d(i) for i in range(3)])
        await ob.put([d(i) for i in range(3, 8)])
    assert ob.spooled == 5
    assert dropped() == before + 3
    assert ob.healthy is False and "dropped" in (ob.last_error or "")
    assert any(r["event"] == "outbox.spool_overflow_dropped" for r in logged)
    await ob.close()  # the spool stays on disk

    redis_server.start()
    again = RedisOutbox(redis_server.url, "ov", 5, spool_path=spool, flush_interval_s=0.1)
    await again.open()
    try:
        async def flushed():
            return again.spooled == 0 and await again.pending_count() == 5

        await wait_for(flushed, what="flush of the previous run's spool")
        assert sorted(i.id for i in await again.claim(time.time(), 10)) == [f"msg_t1_{i}" for i in range(5)]
    finally:
        await again.close()


async def test_outcome_recorded_while_redis_is_down_is_written_when_it_returns(redis_server_aof):
    ob = RedisOutbox(redis_server_aof.url, "ur", flush_interval_s=0.1, timeout_s=1.0, reorder_window_s=0)
    await ob.open()
    try:
        await ob.put([d(1, order_key="A"), d(2, order_key="A")])
        (item,) = await ob.claim(time.time(), 10, lease_s=3600)
        redis_server_aof.stop()
        await ob.record_attempt(item.id, ok(), "delivered", None)  # the webhook went out: no raise
        redis_server_aof.start()

        async def recorded():
            try:
                got = await ob.get(item.id)
            except OutboxError:
                return False
            return got is not None and got[0].status == DELIVERED

        await wait_for(recorded, what="deferred record")
        # the ticket is not held back by the hour-long lease: the next one is claimable now
        assert [i.id for i in await ob.claim(time.time(), 10)] == ["msg_t1_2"]
    finally:
        await ob.close()


async def test_ticket_order_follows_event_time_across_replicas(redis_server):
    """Replica B accepts an event observed earlier than one replica A accepted a moment before:
    within the reorder window the earlier event still goes first; a started one is never passed."""
    a = RedisOutbox(redis_server.url, "ro", replica_id="a", reorder_window_s=0.3)
    b = RedisOutbox(redis_server.url, "ro", replica_id="b", reorder_window_s=0.3)
    await a.open()
    await b.open()
    try:
        t = time.time() - 5.0
        gap = ORDER_TOLERANCE_S + 0.5  # clearly apart by Whazing's clock
        await a.put([d(2, order_key="A", created_at=t + gap)])  # message.received seen by A
        await b.put([d(1, order_key="A", created_at=t)])  # ticket.transferred seen by B
        assert await a.claim(time.time(), 10) == []  # inside the window: nothing yet
        assert await deliver_all(a, 2) == ["msg_t1_1", "msg_t1_2"]

        # once a delivery is in flight, a late earlier event waits behind it
        await a.put([d(4, order_key="B", created_at=t + 2 * gap)])
        (started,) = await wait_claim(a)
        await b.put([d(3, order_key="B", created_at=t + gap)])
        await a.record_attempt(started.id, ok(), "delivered", None)
        (nxt,) = await wait_claim(a)
        assert (started.id, nxt.id) == ("msg_t1_4", "msg_t1_3")
    finally:
        await a.close()
        await b.close()


async def test_ticket_events_close_in_time_keep_acceptance_order(redis_server):
    """The push of a new or reopened ticket can carry an `updatedAt` a few ms after its first
    message's `createdAt` (touched again for its last message before the push, as the stand-in
    does): a ticket event accepted before a message stamped a few ms earlier still goes
    first, from one replica or two. Only events further apart than ORDER_TOLERANCE_S are
    put back in Whazing's order."""
    a = RedisOutbox(redis_server.url, "rc", replica_id="a", reorder_window_s=0.3)
    b = RedisOutbox(redis_server.url, "rc", replica_id="b", reorder_window_s=0.3)
    await a.open()
    await b.open()
    try:
        t = time.time()
        # one replica: ticket.reopened (updatedAt t+40 ms), then message.received (createdAt t+10 ms)
        await a.put([d(1, order_key="A", created_at=t + 0.040)])
        await a.put([d(2, order_key="A", created_at=t + 0.010)])
        # two replicas: the second one accepts the message after the first accepted the ticket event
        await a.put([d(3, order_key="B", created_at=t + 0.900)])
        await b.put([d(4, order_key="B", created_at=t + 0.001)])
        order = await deliver_all(a, 4)
        assert [i for i in order if i in ("msg_t1_1", "msg_t1_2")] == ["msg_t1_1", "msg_t1_2"]
        assert [i for i in order if i in ("msg_t1_3", "msg_t1_4")] == ["msg_t1_3", "msg_t1_4"]
    finally:
        await a.close()
        await b.close()


async def deliver_all(ob: RedisOutbox, count: int) -> list[str]:
    """Claim and deliver until `count` are delivered: their ids, in the order they went."""
    order: list[str] = []

    async def drain():
        for item in await ob.claim(time.time(), 10):
            order.append(item.id)
            await ob.record_attempt(item.id, ok(), "delivered", None)
        return len(order) == count

    await wait_for(drain, what=f"{count} delivered")
    return order


async def wait_claim(ob: RedisOutbox, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        items = await ob.claim(time.time(), 10)
        if items:
            return items
        await asyncio.sleep(0.02)
    raise AssertionError("nothing claimable")
