"""kill -9 with thousands of deliveries in flight, restart, count on the receiver side."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from whazing_gateway.deliver import signing
from whazing_gateway.outbox.sqlite import SqliteOutbox

try:
    from tests.delivery_worker import delivery_id
    from tests.receivers import Receiver
except ImportError:  # pragma: no cover
    from delivery_worker import delivery_id
    from receivers import Receiver

ROOT = Path(__file__).resolve().parent.parent
COUNT = 4000


def _spawn(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.delivery_worker", *args],
        cwd=ROOT, env=env, stdout=open(tmp_path / f"{name}.out", "w"), stderr=subprocess.STDOUT,
    )


def _accepted(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    return [line for line in text.split("\n")[:-1] if line]  # a torn last line was not written whole


async def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    await _until(lambda: proc.poll() is not None, timeout, "the worker to exit")
    return proc.returncode


@pytest.mark.slow
async def test_kill_9_loses_nothing(tmp_path):
    secret = signing.new_secret()
    db, accepted_file = tmp_path / "outbox.db", tmp_path / "accepted.txt"
    async with Receiver() as rx:
        common = ["--db", str(db), "--url", rx.url("/webhook_whazing"), "--secret", secret]
        worker = _spawn(tmp_path, "first", *common, "--count", str(COUNT), "--batch", "20",
                        "--accepted", str(accepted_file), "--pause", "0.005")
        try:
            # kill in the middle: many accepted, some delivered, production not finished
            await _until(lambda: len(_accepted(accepted_file)) >= 1500 and len(rx.requests) >= 300
                         or worker.poll() is not None, 60, "production and delivery to be under way")
            assert worker.poll() is None, (tmp_path / "first.out").read_text()
            os.kill(worker.pid, signal.SIGKILL)
            assert await _wait_exit(worker, 10) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
        accepted = _accepted(accepted_file)
        received_at_kill = len(rx.requests)
        assert 0 < received_at_kill < len(accepted)  # thousands accepted, not yet delivered

        # restart and kill again while draining, then drain for good
        second = _spawn(tmp_path, "second", *common, "--drain")
        try:
            await _until(lambda: len(rx.requests) >= received_at_kill + 200 or second.poll() is not None,
                         60, "the second run to deliver")
            if second.poll() is None:
                os.kill(second.pid, signal.SIGKILL)
            await _wait_exit(second, 10)
        finally:
            if second.poll() is None:
                second.kill()
        third = _spawn(tmp_path, "third", *common, "--drain")
        try:
            assert await _wait_exit(third, 90) == 0, (tmp_path / "third.out").read_text()
        finally:
            if third.poll() is None:
                third.kill()
        requests = list(rx.requests)

    # every accepted event was delivered at least once
    received_ids = [r.webhook_id for r in requests]
    missing = set(accepted) - set(received_ids)
    assert not missing, f"{len(missing)} accepted deliveries never arrived"
    # duplicates only ever carry the same webhook-id as the original; every copy is signed right
    wh = Webhook(secret)
    first_seen: dict[int, list[int]] = defaultdict(list)
    seen = set()
    for r in requests:
        body = wh.verify(r.body, r.headers)
        assert r.webhook_id == delivery_id(body["seq"])
        if r.webhook_id not in seen:
            seen.add(r.webhook_id)
            first_seen[body["ticket"]].append(body["seq"])
    # per-ticket order of first arrivals survives the crashes
    for ticket, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"ticket {ticket} out of order"
    # and the outbox agrees: nothing left pending
    ob = SqliteOutbox(db)
    await ob.open()
    try:
        assert await ob.pending_count() == 0
    finally:
        await ob.close()
    assert len(requests) >= len(seen) >= len(accepted)
