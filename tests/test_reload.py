"""Hot reload: a changed rules file is swapped in whole; a broken one is refused, the last good stays."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import structlog

from whazing_gateway import model
from whazing_gateway.config import load_rules
from whazing_gateway.config.reload import RulesWatcher, folder_signature
from whazing_gateway.ops import metrics
from whazing_gateway.route.router import Router
from whazing_gateway.state.memory import MemoryState

TARGETS = "targets:\n  - {name: n8n, url: 'http://127.0.0.1:5678/webhook/whazing'}\n  - {name: b, url: 'http://127.0.0.1:5678/b'}\n"
GOOD_A = "channels:\n  - {channel: 1, targets: n8n, events: [message.received]}\n"
GOOD_B = "channels:\n  - {channel: 1, targets: [n8n, b], events: [message.received]}\n"
BROKEN = "channels:\n  - {channel: 1, targets: [nope], events: [message.recieved]}\n"


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so the change shows even on coarse-mtime filesystems."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    bumped = max(time.time_ns(), old + 2_000_000_000)
    os.utime(path, ns=(bumped, bumped))


def event(n: int) -> model.Event:
    return model.Event(id=f"e{n}", type=model.MESSAGE_RECEIVED, tenant_id=1, ticket_id=5, ts=float(n),
                       ticket={"id": 5, "status": "open", "whatsappId": 1, "queueId": None},
                       message={"id": f"m{n}", "body": "oi", "fromMe": False})


def reloads(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("whazing_gateway_rules_reloads_total", {"outcome": outcome}) or 0.0


async def wait_for(predicate, router, timeout=30.0):
    """Poll the condition while routing events: traffic must go on during reloads."""
    deadline = asyncio.get_running_loop().time() + timeout
    n = 0
    while not predicate():
        n += 1
        out = await router.route(event(n))
        assert out, "routing stopped during a reload"
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_reload_swaps_good_rules_and_refuses_broken_ones(tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    write(rules_dir / "00-targets.yaml", TARGETS)
    write(rules_dir / "channels.yaml", GOOD_A)
    router = Router(load_rules(rules_dir, env={}), MemoryState())
    watcher = RulesWatcher(router, rules_dir, interval_s=0.05)
    watcher.start()
    try:
        await asyncio.sleep(0.2)
        first = router.rules
        assert [d.target for d in await router.route(event(0))] == ["n8n"]

        ok_before = reloads("ok")
        write(rules_dir / "channels.yaml", GOOD_B)
        await wait_for(lambda: router.rules is not first, router)
        assert reloads("ok") == ok_before + 1
        good = router.rules
        assert sorted(d.target for d in await router.route(event(1000))) == ["b", "n8n"]

        refused_before = reloads("refused")
        with structlog.testing.capture_logs() as logs:
            write(rules_dir / "channels.yaml", BROKEN)
            await wait_for(lambda: reloads("refused") > refused_before, router)
        assert router.rules is good  # the last good rules stay
        assert sorted(d.target for d in await router.route(event(2000))) == ["b", "n8n"]
        path = rules_dir / "channels.yaml"
        assert [str(i) for i in watcher.last_issues] == [
            f"{path}:2: unknown event 'message.recieved', did you mean 'message.received'?",
            f"{path}:2: unknown target 'nope'",
        ]
        logged = [e.get("issue") for e in logs if e.get("event") == "rules.reload_refused"]
        assert logged == [str(i) for i in watcher.last_issues]

        # a broken file that stays broken is not re-parsed and re-counted on every poll
        await asyncio.sleep(0.3)
        assert reloads("refused") == refused_before + 1

        # fixing it brings the fix in
        write(rules_dir / "channels.yaml", GOOD_A)
        await wait_for(lambda: router.rules is not good, router)
        assert [d.target for d in await router.route(event(3000))] == ["n8n"]
        assert watcher.last_issues == []
    finally:
        await watcher.stop()


async def test_new_and_removed_files_count_as_changes(tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    write(rules_dir / "00-targets.yaml", TARGETS)
    router = Router(load_rules(rules_dir, env={}), MemoryState())
    watcher = RulesWatcher(router, rules_dir, interval_s=60)
    watcher._signature = folder_signature(rules_dir)
    assert await watcher.poll() is None
    write(rules_dir / "channels.yml", GOOD_A)
    assert await watcher.poll() is True and len(router.rules.channel_rules) == 1
    (rules_dir / "channels.yml").unlink()
    assert await watcher.poll() is True and router.rules.channel_rules == ()
    write(rules_dir / "README.txt", "ignored")
    assert await watcher.poll() is None


async def test_stop_is_idempotent_and_start_needs_no_folder(tmp_path):
    router = Router(load_rules(_empty(tmp_path), env={}), MemoryState())
    watcher = RulesWatcher(router, tmp_path / "missing", interval_s=0.05)
    watcher.start()
    await asyncio.sleep(0.2)
    await watcher.stop()
    await watcher.stop()
    assert router.rules.targets == {}


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d
