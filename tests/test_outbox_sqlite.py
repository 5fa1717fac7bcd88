"""The SQLite outbox on real files: acceptance, ordered claims, leases, admin, failures."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from whazing_gateway import model
from whazing_gateway.ops import metrics
from whazing_gateway.outbox import OutboxError, OutboxFilter, open_outbox
from whazing_gateway.outbox.base import DEAD, PENDING, Attempt, TargetPause
from whazing_gateway.outbox.sqlite import SqliteOutbox


def d(i: int, target: str = "t1", order_key: str | None = None, etype: str = model.TICKET_CREATED,
      created_at: float | None = None) -> model.Delivery:
    return model.Delivery(
        id=f"msg_{target}_{i}", target=target, event_id=f"evt_{i}", event_type=etype, order_key=order_key,
        body=f'{{"i":{i}}}'.encode(), created_at=time.time() if created_at is None else created_at,
        ticket_id=i,
    )


@pytest.fixture
async def outbox(tmp_path):
    ob = SqliteOutbox(tmp_path / "data" / "outbox.db")
    await ob.open()
    yield ob
    await ob.close()


def ok(at: float | None = None) -> Attempt:
    return Attempt(at=at or time.time(), status_code=200, latency_ms=1.5)


async def test_put_is_durable_and_idempotent(tmp_path):
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path)
    await ob.open()
    await ob.put([d(1), d(2)])
    await ob.put([d(1)])  # the same delivery again (replayed event): ignored
    await ob.close()
    ob2 = SqliteOutbox(path)
    await ob2.open()
    try:
        assert await ob2.pending_count() == 2
        item, attempts = await ob2.get("msg_t1_1")
        assert item.body == b'{"i":1}' and item.status == PENDING and attempts == []
        assert item.delivery == d(1, created_at=item.created_at)
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        await ob2.close()


async def test_claim_leases_and_record(outbox):
    await outbox.put([d(1), d(2), d(3)])
    now = time.time()
    first = await outbox.claim(now, 2, lease_s=30)
    assert [i.id for i in first] == ["msg_t1_1", "msg_t1_2"]
    assert all(i.lease_until == pytest.approx(now + 30) for i in first)
    # leased items are not claimed again; the third is
    assert [i.id for i in await outbox.claim(now, 10)] == ["msg_t1_3"]
    assert await outbox.claim(now, 10) == []
    # an expired lease (crashed worker) makes the item claimable again
    again = await outbox.claim(now + 31, 10)
    assert {i.id for i in again} == {"msg_t1_1", "msg_t1_2"}

    await outbox.record_attempt("msg_t1_1", ok(), "delivered", None)
    await outbox.record_attempt("msg_t1_2", Attempt(now, 503, 10.0, "HTTP 503"), "retry", now + 100)
    await outbox.record_attempt("msg_t1_3", Attempt(now, 400, 3.0, "HTTP 400"), "dead", None)
    await outbox.record_attempt("nope", ok(), "delivered", None)  # unknown: ignored
    assert await outbox.pending_count() == 1
    assert await outbox.claim(now + 99, 10) == []  # not due yet
    (item,) = await outbox.claim(now + 100, 10)
    assert item.id == "msg_t1_2" and item.attempts == 1 and item.round_attempts == 1
    assert item.last_error == "HTTP 503" and item.last_status == 503
    got, attempts = await outbox.get("msg_t1_3")
    assert got.status == DEAD and [a.status_code for a in attempts] == [400]


async def test_ordered_claim_returns_only_heads_and_a_failing_ticket_holds_only_itself(outbox):
    await outbox.put([d(1, order_key="A"), d(2, order_key="A"), d(3, order_key="B"),
                      d(4, order_key="A"), d(5, order_key="B"), d(6)])
    now = time.time()
    heads = await outbox.claim(now, 10)
    assert [i.id for i in heads] == ["msg_t1_1", "msg_t1_3", "msg_t1_6"]
    # nothing else while the heads are in flight
    assert await outbox.claim(now, 10) == []
    # A's head fails and waits; B moves on, A does not
    await outbox.record_attempt("msg_t1_1", Attempt(now, 500, 1.0), "retry", now + 60)
    await outbox.record_attempt("msg_t1_3", ok(), "delivered", None)
    assert [i.id for i in await outbox.claim(now, 10)] == ["msg_t1_5"]
    # A's head dead-lettered: the rest of A goes, in order
    await outbox.release(["msg_t1_5"])
    (a_head,) = [i for i in await outbox.claim(now + 61, 10) if i.order_key == "A"]
    assert a_head.id == "msg_t1_1"
    await outbox.record_attempt("msg_t1_1", Attempt(now, 500, 1.0), "dead", None)
    assert [i.id for i in await outbox.claim(now + 200, 10) if i.order_key == "A"] == ["msg_t1_2"]


async def test_same_order_key_on_two_targets_is_independent_and_unordered_mode(outbox):
    await outbox.put([d(1, "t1", "A"), d(2, "t1", "A"), d(3, "t2", "A")])
    now = time.time()
    assert {i.id for i in await outbox.claim(now, 10)} == {"msg_t1_1", "msg_t2_3"}
    await outbox.recover()
    assert len(await outbox.claim(now, 10, ordered=False)) == 3


async def test_claim_respects_per_target_capacity(outbox):
    await outbox.put([d(i, "t1") for i in range(5)] + [d(i, "t2") for i in range(5)] + [d(9, "t3")])
    items = await outbox.claim(time.time(), 100, targets={"t1": 2, "t2": 0, "t3": 1})
    assert sorted(i.id for i in items) == ["msg_t1_0", "msg_t1_1", "msg_t3_9"]
    assert len(await outbox.claim(time.time(), 1, targets={"t1": 5, "t2": 5})) == 1


async def test_recover_releases_every_lease(outbox):
    await outbox.put([d(1), d(2)])
    assert len(await outbox.claim(time.time(), 10, lease_s=3600)) == 2
    assert await outbox.recover() == 2
    assert len(await outbox.claim(time.time(), 10)) == 2


async def test_admin_list_filter_retry_purge(outbox):
    base = 1_700_000_000.0
    await outbox.put([
        d(1, "t1", etype=model.TICKET_CREATED, created_at=base),
        d(2, "t1", etype=model.MESSAGE_RECEIVED, created_at=base + 10),
        d(3, "t2", etype=model.MESSAGE_RECEIVED, created_at=base + 20),
    ])
    await outbox.claim(time.time(), 10)
    await outbox.record_attempt("msg_t1_1", ok(), "delivered", None)
    await outbox.record_attempt("msg_t1_2", Attempt(time.time(), 400, 1.0, "HTTP 400"), "dead", None)

    ids = lambda items: [i.id for i in items]  # noqa: E731
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
    # purge removes finished items only
    assert await outbox.purge(OutboxFilter(status=PENDING)) == 0
    assert await outbox.purge(OutboxFilter(limit=None)) == 1  # only msg_t1_1 (delivered)
    assert await outbox.get("msg_t1_1") is None
    assert await outbox.pending_by_target() == {"t1": 1, "t2": 1}


async def test_target_pauses_persist(outbox):
    await outbox.pause_target(TargetPause("t1", "http://x/hook", "410 Gone", 5.0))
    assert (await outbox.paused_targets())["t1"].url == "http://x/hook"
    assert await outbox.resume_target("t1") is True
    assert await outbox.resume_target("t1") is False
    assert await outbox.paused_targets() == {}


async def test_concurrent_puts_are_coalesced_into_few_transactions(outbox):
    before = outbox.commits
    await asyncio.gather(*(outbox.put([d(i)]) for i in range(300)))
    assert await outbox.pending_count() == 300
    assert outbox.commits - before < 100


async def test_locked_database_fails_loudly_without_blocking_the_loop(tmp_path):
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path, busy_timeout_ms=600)
    await ob.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        errors_before = metrics.REGISTRY.get_sample_value("whazing_gateway_outbox_errors_total") or 0
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        with pytest.raises(OutboxError, match="locked"):
            await ob.put([d(1)])
        tick_task.cancel()
        assert ticks >= 10  # the event loop kept running while sqlite waited for the lock
        assert ob.healthy is False and "locked" in (ob.last_error or "")
        assert metrics.REGISTRY.get_sample_value("whazing_gateway_outbox_errors_total") == errors_before + 1
        other.execute("ROLLBACK")
        await ob.put([d(1)])  # works again, health recovers
        assert ob.healthy is True and await ob.pending_count() == 1
    finally:
        other.close()
        await ob.close()


async def test_unwritable_location_fails_on_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ob = SqliteOutbox(blocker / "sub" / "o.db")
    with pytest.raises(OutboxError):
        await ob.open()
    assert ob.healthy is False and ob.last_error


async def test_open_outbox_factory(tmp_path):
    class S:
        storage_backend = "sqlite"
        sqlite_path = None
        data_dir = tmp_path / "dd"

    ob = open_outbox(S())
    assert isinstance(ob, SqliteOutbox) and ob.path == str(tmp_path / "dd" / "outbox.db")
    async with ob:
        await ob.put([d(1)])
    assert (tmp_path / "dd" / "outbox.db").exists()
    S.storage_backend = "nope"
    with pytest.raises(ValueError):
        open_outbox(S())


async def test_full_disk_fails_loudly_and_recovers_after_purge(tmp_path):
    ob = SqliteOutbox(tmp_path / "o.db", max_bytes=160 * 1024)  # a tiny disk budget stands for a full disk
    await ob.open()
    try:
        errors_before = metrics.REGISTRY.get_sample_value("whazing_gateway_outbox_errors_total") or 0
        big = lambda i: model.Delivery(id=f"big_{i}", target="t", event_id=f"e{i}",  # noqa: E731
                                       event_type=model.MESSAGE_RECEIVED, order_key=None,
                                       body=b"x" * 8000, created_at=time.time())
        # some old, delivered deliveries take room (as they do until the retention purge)
        await ob.put([big(i) for i in range(3)])
        for item in await ob.claim(time.time(), 100):
            await ob.record_attempt(item.id, ok(), "delivered", None)
        accepted = 0
        with pytest.raises(OutboxError, match="full"):
            for i in range(3, 100):
                await ob.put([big(i)])
                accepted += 1
        assert 0 < accepted < 97
        assert ob.healthy is False and "full" in ob.last_error
        assert metrics.REGISTRY.get_sample_value("whazing_gateway_outbox_errors_total") > errors_before
        assert await ob.pending_count() == accepted  # what was accepted is intact
        # room again (the delivered ones purged): writes succeed, health comes back
        assert await ob.purge(OutboxFilter(limit=None)) == 3
        await ob.put([model.Delivery(id="small", target="t", event_id="e", event_type="x", order_key=None,
                                     body=b"{}", created_at=time.time())])
        assert await ob.pending_count() == accepted + 1
        assert ob.healthy is True
    finally:
        await ob.close()
