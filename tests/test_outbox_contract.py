"""The outbox contract, one suite run against both engines: SQLite (a real file) and Redis (a
real redis-server). Whatever the sender, the admin CLI and the pipeline rely on is asserted here
once, so the engines cannot drift apart. What only one engine has (SQLite's lock and disk-full
handling; Redis's replicas, heartbeats and spool) stays in tests/test_outbox_sqlite.py and
tests/test_redis_outbox.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from whazing_gateway import model
from whazing_gateway.outbox import OutboxFilter, open_outbox
from whazing_gateway.outbox.base import DEAD, DELIVERED, PENDING, Attempt, Outbox, TargetPause
from whazing_gateway.outbox.redis import RedisOutbox
from whazing_gateway.outbox.sqlite import SqliteOutbox


def d(i: int, target: str = "t1", order_key: str | None = None, etype: str = model.TICKET_CREATED,
      created_at: float | None = None) -> model.Delivery:
    return model.Delivery(
        id=f"msg_{target}_{i}", target=target, event_id=f"evt_{i}", event_type=etype, order_key=order_key,
        body=f'{{"i":{i}}}'.encode(), created_at=time.time() if created_at is None else created_at,
        ticket_id=i,
    )


def ok(at: float | None = None) -> Attempt:
    return Attempt(at=at or time.time(), status_code=200, latency_ms=1.5)


def ids(items) -> list[str]:
    return [i.id for i in items]


@dataclass
class Engine:
    """One engine's store: `handle()` opens another outbox on the same data (a restarted
    process, or another replica), `settings` is what `open_outbox` reads for it."""

    name: str
    handle: Callable[[], Outbox]
    settings: object


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def engine(request, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        path = tmp_path / "data" / "outbox.db"

        class SqliteSettings:
            storage_backend = "sqlite"
            sqlite_path = path
            data_dir = tmp_path / "data"

        return Engine("sqlite", lambda: SqliteOutbox(path), SqliteSettings())
    server = request.getfixturevalue("redis_server")

    class RedisSettings:
        storage_backend = "redis"
        redis_url = server.url
        redis_prefix = "t"
        spool_max = 7
        data_dir = tmp_path / "data"

    return Engine("redis", lambda: RedisOutbox(server.url, "t", spool_path=tmp_path / "spool.db", reorder_window_s=0),
                  RedisSettings())


@pytest.fixture
async def outbox(engine: Engine) -> AsyncIterator[Outbox]:
    ob = engine.handle()
    await ob.open()
    try:
        yield ob
    finally:
        await ob.close()


async def test_put_is_durable_idempotent_and_round_trips(engine, outbox):
    await outbox.put([d(1), d(2)])
    await outbox.put([d(1)])  # the same delivery again (a replayed event, another replica): ignored
    await outbox.put([model.Delivery("x", "t9", "e", model.MESSAGE_SENT, None, b"\x00\xffbin", 1.5)])
    await outbox.close()
    other = engine.handle()  # a restarted process (SQLite) or another replica (Redis)
    await other.open()
    try:
        assert await other.pending_count() == 3
        item, attempts = await other.get("msg_t1_1")
        assert item.body == b'{"i":1}' and item.status == PENDING and attempts == []
        assert item.delivery == d(1, created_at=item.created_at)
        assert await other.get("nope") is None
        x, _ = await other.get("x")  # None fields stay None, bytes stay bytes
        assert x.order_key is None and x.ticket_id is None and x.delivery.flow_id is None
        assert x.body == b"\x00\xffbin" and x.created_at == 1.5
    finally:
        await other.close()
        await outbox.open()  # the fixture closes it again


async def test_claim_leases_and_record(outbox):
    await outbox.put([d(1), d(2), d(3)])
    now = time.time()
    first = await outbox.claim(now, 2, lease_s=30)
    assert ids(first) == ["msg_t1_1", "msg_t1_2"]
    assert all(i.lease_until == pytest.approx(now + 30) for i in first)
    # leased items are not claimed again; the third is
    assert ids(await outbox.claim(now, 10)) == ["msg_t1_3"]
    assert await outbox.claim(now, 10) == []
    # an expired lease (crashed worker) makes the item claimable again
    assert set(ids(await outbox.claim(now + 31, 10))) == {"msg_t1_1", "msg_t1_2"}

    await outbox.record_attempt("msg_t1_1", ok(), "delivered", None)
    await outbox.record_attempt("msg_t1_2", Attempt(now, 503, 10.0, "HTTP 503"), "retry", now + 100)
    await outbox.record_attempt("msg_t1_3", Attempt(now, 400, 3.0, "HTTP 400"), "dead", None)
    await outbox.record_attempt("nope", ok(), "delivered", None)  # unknown: ignored
    assert await outbox.pending_count() == 1
    assert await outbox.claim(now + 99, 10) == []  # not due yet
    (item,) = await outbox.claim(now + 100, 10)
    assert item.id == "msg_t1_2" and item.attempts == 1 and item.round_attempts == 1
    assert item.last_error == "HTTP 503" and item.last_status == 503
    dead, attempts = await outbox.get("msg_t1_3")
    assert dead.status == DEAD and dead.last_error == "HTTP 400" and [a.status_code for a in attempts] == [400]
    delivered, _ = await outbox.get("msg_t1_1")
    assert delivered.status == DELIVERED and delivered.lease_until is None and delivered.last_error is None


async def test_ordered_claim_returns_only_heads_and_a_failing_ticket_holds_only_itself(outbox):
    await outbox.put([d(1, order_key="A"), d(2, order_key="A"), d(3, order_key="B"),
                      d(4, order_key="A"), d(5, order_key="B"), d(6)])
    now = time.time()
    assert ids(await outbox.claim(now, 10)) == ["msg_t1_1", "msg_t1_3", "msg_t1_6"]
    assert await outbox.claim(now, 10) == []  # nothing else while the heads are in flight
    # A's head fails and waits; B moves on, A does not
    await outbox.record_attempt("msg_t1_1", Attempt(now, 500, 1.0), "retry", now + 60)
    await outbox.record_attempt("msg_t1_3", ok(), "delivered", None)
    assert ids(await outbox.claim(now, 10)) == ["msg_t1_5"]
    # A's head dead-lettered: the rest of A goes, in order
    await outbox.release(["msg_t1_5"])
    (a_head,) = [i for i in await outbox.claim(now + 61, 10) if i.order_key == "A"]
    assert a_head.id == "msg_t1_1"
    await outbox.record_attempt("msg_t1_1", Attempt(now, 500, 1.0), "dead", None)
    assert [i.id for i in await outbox.claim(now + 200, 10) if i.order_key == "A"] == ["msg_t1_2"]


async def test_same_order_key_on_two_targets_is_independent_and_unordered_mode(outbox):
    await outbox.put([d(1, "t1", "A"), d(2, "t1", "A"), d(3, "t2", "A")])
    now = time.time()
    assert set(ids(await outbox.claim(now, 10, lease_s=5))) == {"msg_t1_1", "msg_t2_3"}
    assert set(ids(await outbox.claim(now + 6, 10, ordered=False))) == {"msg_t1_1", "msg_t1_2", "msg_t2_3"}


async def test_claim_respects_per_target_capacity(outbox):
    await outbox.put([d(i, "t1") for i in range(5)] + [d(i, "t2") for i in range(5)] + [d(9, "t3")])
    items = await outbox.claim(time.time(), 100, targets={"t1": 2, "t2": 0, "t3": 1})
    assert sorted(ids(items)) == ["msg_t1_0", "msg_t1_1", "msg_t3_9"]
    assert len(await outbox.claim(time.time(), 1, targets={"t1": 5, "t2": 5})) == 1
    assert await outbox.claim(time.time(), 10, targets={"t2": 0}) == []


async def test_recover_makes_what_it_released_claimable_at_once(engine, outbox):
    """SQLite (one process per file) releases every lease; Redis releases only leases of replicas
    whose heartbeat expired (its own could be a live twin's): there, none."""
    await outbox.put([d(1), d(2)])
    assert len(await outbox.claim(time.time(), 10, lease_s=3600)) == 2
    released = await outbox.recover()
    assert released == (2 if engine.name == "sqlite" else 0)
    assert len(await outbox.claim(time.time(), 10)) == released


async def test_admin_find_filter_retry_purge(outbox):
    base = 1_700_000_000.0
    await outbox.put([
        d(1, "t1", etype=model.TICKET_CREATED, created_at=base),
        d(2, "t1", etype=model.MESSAGE_RECEIVED, created_at=base + 10),
        d(3, "t2", etype=model.MESSAGE_RECEIVED, created_at=base + 20),
    ])
    await outbox.claim(time.time(), 10)
    await outbox.record_attempt("msg_t1_1", ok(), "delivered", None)
    await outbox.record_attempt("msg_t1_2", Attempt(time.time(), 400, 1.0, "HTTP 400"), "dead", None)

    assert ids(await outbox.find(OutboxFilter())) == ["msg_t2_3", "msg_t1_2", "msg_t1_1"]  # newest first
    assert ids(await outbox.find(OutboxFilter(target="t1"))) == ["msg_t1_2", "msg_t1_1"]
    assert ids(await outbox.find(OutboxFilter(event_type=model.MESSAGE_RECEIVED, status=DEAD))) == ["msg_t1_2"]
    assert ids(await outbox.find(OutboxFilter(since=base + 5, until=base + 20))) == ["msg_t1_2"]
    assert ids(await outbox.find(OutboxFilter(ids=("msg_t1_1", "x")))) == ["msg_t1_1"]
    assert len(await outbox.find(OutboxFilter(limit=1))) == 1

    # retry a dead letter: pending again, due now, schedule round restarted
    assert await outbox.retry(OutboxFilter(status=DEAD), time.time()) == 1
    item, attempts = await outbox.get("msg_t1_2")
    assert item.status == PENDING and item.round_attempts == 0 and item.attempts == 1 and len(attempts) == 1
    # msg_t2_3 is still leased from the first claim; the retried one is really claimable again
    assert ids(await outbox.claim(time.time(), 10)) == ["msg_t1_2"]
    # purge removes finished items only
    assert await outbox.purge(OutboxFilter(status=PENDING)) == 0
    assert await outbox.purge(OutboxFilter(limit=None)) == 1  # only msg_t1_1 (delivered)
    assert await outbox.get("msg_t1_1") is None
    assert await outbox.pending_by_target() == {"t1": 1, "t2": 1}


async def test_retried_dead_letter_goes_back_in_its_tickets_order(outbox):
    """A dead head re-queued by the admin goes before the later deliveries of its ticket."""
    await outbox.put([d(1, order_key="A"), d(2, order_key="A"), d(3, order_key="A")])
    now = time.time()
    (head,) = await outbox.claim(now, 10)
    await outbox.record_attempt(head.id, Attempt(now, 400, 1.0), "dead", None)
    assert ids(await outbox.claim(now, 10, lease_s=1)) == ["msg_t1_2"]
    await outbox.release(["msg_t1_2"])
    assert await outbox.retry(OutboxFilter(ids=("msg_t1_1",)), now) == 1
    order = []
    for _ in range(3):
        (item,) = await outbox.claim(time.time(), 10)
        order.append(item.id)
        await outbox.record_attempt(item.id, ok(), "delivered", None)
    assert order == ["msg_t1_1", "msg_t1_2", "msg_t1_3"]
    assert await outbox.pending_count() == 0


async def test_target_pauses_persist_and_are_shared(engine, outbox):
    pause = TargetPause("t1", "http://x/hook", "410 Gone", 5.0)
    await outbox.pause_target(pause)
    other = engine.handle()
    await other.open()
    try:
        assert (await other.paused_targets())["t1"] == pause
        assert await other.resume_target("t1") is True
        assert await outbox.resume_target("t1") is False
        assert await outbox.paused_targets() == {}
    finally:
        await other.close()


async def test_open_outbox_factory_selects_the_engine(engine):
    ob = open_outbox(engine.settings)
    assert isinstance(ob, SqliteOutbox if engine.name == "sqlite" else RedisOutbox)
    async with ob:
        await ob.put([d(1)])
        assert await ob.pending_count() == 1
        assert ids(await ob.find(OutboxFilter())) == ["msg_t1_1"]
