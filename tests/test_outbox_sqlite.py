"""What only the SQLite outbox has, on real files: WAL, batched commits, a locked database, an
unwritable place, a full disk. The contract both engines share is tests/test_outbox_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from whazing_gateway import model
from whazing_gateway.ops import metrics
from whazing_gateway.outbox import OutboxError, OutboxFilter, open_outbox
from whazing_gateway.outbox.base import Attempt
from whazing_gateway.outbox.sqlite import SqliteOutbox


def d(i: int, target: str = "t1", order_key: str | None = None, etype: str = model.TICKET_CREATED,
      created_at: float | None = None) -> model.Delivery:
    return model.Delivery(
        id=f"msg_{target}_{i}", target=target, event_id=f"evt_{i}", event_type=etype, order_key=order_key,
        body=f'{{"i":{i}}}'.encode(), created_at=time.time() if created_at is None else created_at,
        ticket_id=i,
    )


async def test_the_database_is_in_wal_mode(tmp_path):
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path)
    await ob.open()
    try:
        await ob.put([d(1)])
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await ob.close()


@pytest.fixture
async def outbox(tmp_path):
    ob = SqliteOutbox(tmp_path / "data" / "outbox.db")
    await ob.open()
    yield ob
    await ob.close()


def ok(at: float | None = None) -> Attempt:
    return Attempt(at=at or time.time(), status_code=200, latency_ms=1.5)


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
