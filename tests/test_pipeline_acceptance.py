"""Acceptance accounting of the pipeline against a real SQLite outbox file made to fail:
events are logged and counted only once the outbox has them, failed writes are retried and
never mark the state seen, and one bad record costs only itself."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time

from structlog.testing import capture_logs

from whazing_gateway.edge.records import WsFrame
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.model import Delivery
from whazing_gateway.ops import metrics
from whazing_gateway.outbox.sqlite import SqliteOutbox
from whazing_gateway.pipeline.core import GaveUp, Pipeline, RetryPolicy
from whazing_gateway.state.memory import MemoryState

FAST = RetryPolicy(first_s=0.01, max_s=0.05)


def frame(msg_id: str, ticket_id: int = 1, flow: str = "f1") -> WsFrame:
    payload = {"id": msg_id, "body": "oi", "fromMe": False, "ticketId": ticket_id,
               "ticket": {"id": ticket_id, "status": "pending", "queueId": 2, "whatsappId": 1}}
    content = "42" + json.dumps(["1:ticketList", {"type": "chat:create", "payload": payload}])
    return WsFrame(flow, time.time(), False, content.encode())


async def route(event, body: bytes = b"{}"):
    return [Delivery(Delivery.make_id(event.id, "t"), "t", event.id, event.type, None, body, time.time(),
                     event.ticket_id, event.flow_id)]


async def big_route(event):
    return await route(event, b"x" * 200_000)


def count(counter, *labels) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()


def rows(path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    finally:
        con.close()


async def until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_locked_outbox_retries_and_accepts_only_once_written(tmp_path):
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(path, busy_timeout_ms=20)
    await outbox.open()
    events0 = count(metrics.EVENTS, "message.received")
    retries0 = count(metrics.OUTBOX_RETRIES)
    pipe = Pipeline(Inferrer(MemoryState()), route, outbox.put, retry=FAST)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: "database is locked"
    pipe.start()
    try:
        with capture_logs() as logs:
            for i in range(3):
                pipe.submit(frame(f"M{i}", ticket_id=10 + i))
            await until(lambda: count(metrics.OUTBOX_RETRIES) >= retries0 + 3)
            assert count(metrics.EVENTS, "message.received") == events0  # nothing accepted yet
            assert not [r for r in logs if r["event"] == "event"]
            assert pipe.inferrer._writes  # the state is held back, uncommitted
            locker.execute("ROLLBACK")  # the lock goes away: the same batch is written
            await until(lambda: count(metrics.EVENTS, "message.received") == events0 + 3)
        assert rows(path) == 3
        assert len([r for r in logs if r["event"] == "event"]) == 3
        assert any("retrying" in r["event"] for r in logs)
        assert pipe.waiting_since is None
    finally:
        locker.close()
        await pipe.stop()
        await outbox.close()


async def test_full_disk_gives_up_without_marking_state_seen(tmp_path):
    path = tmp_path / "outbox.db"
    full = SqliteOutbox(path, max_bytes=1)  # the smallest budget: every put fails like a full disk
    await full.open()
    state = MemoryState()
    pipe = Pipeline(Inferrer(state), big_route, full.put, retry=RetryPolicy(first_s=0.01, max_s=0.02, give_up_s=0.2))
    rejected0 = count(metrics.EVENTS_REJECTED, "outbox_failing")
    big = frame("M-full", ticket_id=7)
    try:
        await pipe.process(big)
        raise AssertionError("a put into a full outbox was accepted")
    except GaveUp:
        pass
    assert count(metrics.EVENTS_REJECTED, "outbox_failing") == rejected0 + 1
    await full.close()
    # Room again: the same frame is inferred again (nothing was marked seen) and accepted.
    roomy = SqliteOutbox(path)
    await roomy.open()
    pipe.put = roomy.put
    pipe.frames = type(pipe.frames)()  # a copy seen seconds ago is skipped as a browser duplicate
    [result] = await pipe.process_batch([big])
    assert result.accepted and [e.type for e in result.events] == ["message.received"]
    assert rows(path) == 1
    await roomy.close()


async def test_one_bad_record_costs_only_itself(tmp_path):
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(path)
    await outbox.open()
    state = MemoryState()

    async def fragile_route(event):
        if event.ticket_id == 13:
            raise RecursionError("maximum recursion depth exceeded")
        if event.ticket_id == 14:  # a value SQLite cannot store (decode refuses such ids; a bug might not)
            return [dataclasses.replace(d, ticket_id=2 ** 64) for d in await route(event)]
        return await route(event)

    pipe = Pipeline(Inferrer(state), fragile_route, outbox.put, retry=FAST)
    errors0 = count(metrics.RECORD_ERRORS, "route", "RecursionError")
    refused0 = count(metrics.RECORD_ERRORS, "outbox", "OverflowError")
    with capture_logs() as logs:
        results = await pipe.process_batch([
            frame("A", 1, "fa"), frame("B", 13, "fb"), frame("C", 14, "fc"), frame("D", 2, "fd")])
    accepted = {r.record.flow_id: r.accepted and bool(r.events) for r in results}
    # the route failure and the ticket id the outbox cannot store cost only their own record
    assert accepted == {"fa": True, "fb": False, "fc": False, "fd": True}
    assert count(metrics.RECORD_ERRORS, "route", "RecursionError") == errors0 + 1
    assert count(metrics.RECORD_ERRORS, "outbox", "OverflowError") == refused0 + 1
    assert rows(path) == 2
    logged = [r for r in logs if r.get("kind") == "record_route"]
    assert logged and logged[0]["flow_id"] == "fb" and logged[0]["frame"].startswith('42["1:ticketList"')
    assert len([r for r in logs if r["event"] == "event"]) == 2
    # nothing of the failed records was committed: fixed, the same frames become events
    pipe.route = route
    pipe.frames = type(pipe.frames)()
    [again] = await pipe.process_batch([frame("B", 13, "fb")])
    assert again.accepted and len(again.events) == 1
    await outbox.close()


async def test_queue_integration_state_follows_the_records_acceptance():
    """The router remembers which queue integration a ticket is in (state, like the inference's):
    a record whose deliveries the outbox refuses must leave no trace of it, an accepted one must."""
    from whazing_gateway import model
    from whazing_gateway.route.router import QI_PREFIX, Router
    from whazing_gateway.route.rules import QueueRule, RuleSet

    rules = RuleSet(targets={"q": model.Target("q", "http://127.0.0.1:9/")}, channel_rules=(),
                    queue_rules=(QueueRule("queue 2", "t:1", (2,), ("q",)),))

    async def qi_keys(state: MemoryState) -> list:
        return [k for k in list(state._items) if k.startswith(QI_PREFIX)]

    for refuse in (True, False):
        state = MemoryState()
        inferrer = Inferrer(state)
        router = Router(rules, inferrer.uncommitted)

        async def put(deliveries, refuse=refuse):
            if refuse:
                raise ValueError("the outbox cannot store this")  # a refusal of the data, not retried
        pipe = Pipeline(inferrer, router.route, put, retry=FAST)
        result = await pipe.process(frame("Q1", ticket_id=77))
        assert [d.target for d in result.deliveries] == ["q"]
        assert result.accepted is not refuse
        assert bool(await qi_keys(state)) is not refuse, f"refused={refuse}: {await qi_keys(state)}"
