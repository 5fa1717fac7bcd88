"""`whazing-gateway deliveries` as an operator types it: --config after the action, purge that
asks (on a terminal) or needs --yes, and `targets`. Real command lines on a real outbox file."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whazing_gateway import model
from whazing_gateway.cli import build_parser
from whazing_gateway.outbox.admin import ENV_OUTBOX
from whazing_gateway.outbox.base import FAILING, Attempt, TargetHealth, TargetPause
from whazing_gateway.outbox.sqlite import SqliteOutbox

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # real command lines, in processes


def _d(i: int, target: str) -> model.Delivery:
    return model.Delivery(id=f"msg_{i}", target=target, event_id=f"evt_{i}", event_type=model.TICKET_CREATED,
                          order_key=None, body=b"{}", created_at=time.time(), ticket_id=i)


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    db = tmp_path / "data" / "outbox.db"

    async def fill():
        async with SqliteOutbox(db) as ob:
            await ob.put([_d(1, "n8n"), _d(2, "n8n"), _d(3, "crm"), _d(4, "n8n")])
            await ob.claim(time.time(), 10, ordered=False)
            await ob.record_attempt("msg_1", Attempt(time.time(), 200, 1.0), "delivered", None)
            await ob.record_attempt("msg_2", Attempt(time.time(), 400, 1.0, "HTTP 400"), "dead", None)
            await ob.record_attempt("msg_3", Attempt(time.time(), 410, 1.0, "410 Gone"), "dead", None)
            await ob.record_attempt("msg_4", Attempt(time.time(), 404, 1.0, "HTTP 404"), "retry", time.time() + 300)
            await ob.pause_target(TargetPause("crm", "http://crm/hook", "410 Gone: the receiver asks to be disabled"))
            await ob.set_target_health(TargetHealth("n8n", FAILING, failures=3, since=time.time() - 60,
                                                    next_probe_at=time.time() + 4, last_error="HTTP 404", probes=2))

    asyncio.run(fill())
    config = tmp_path / "gateway.yaml"
    config.write_text(f"storage:\n  backend: sqlite\n  sqlite:\n    path: {db}\n")
    return db, config


def run(tmp_path: Path, *argv: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_OUTBOX}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "deliveries", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env, stdin=stdin)


def statuses(db: Path) -> dict[str, str]:
    async def get():
        async with SqliteOutbox(db) as ob:
            from whazing_gateway.outbox.base import OutboxFilter

            return {i.id: i.status for i in await ob.find(OutboxFilter(limit=None))}

    return asyncio.run(get())


def test_config_is_accepted_after_the_action_too(setup, tmp_path):
    db, config = setup
    for argv in (("list", "--config", str(config), "--json"), ("--config", str(config), "list", "--json")):
        res = run(tmp_path, *argv)
        assert res.returncode == 0, res.stderr
        assert {d["id"] for d in json.loads(res.stdout)} == {"msg_1", "msg_2", "msg_3", "msg_4"}
    res = run(tmp_path, "show", "msg_2", "--config", str(config))
    assert res.returncode == 0 and "HTTP 400" in res.stdout
    # the value after the action wins; absent, the one before (or the default) stays
    p = build_parser()
    assert p.parse_args(["deliveries", "--config", "a.yaml", "list"]).config == "a.yaml"
    assert p.parse_args(["deliveries", "--config", "a.yaml", "list", "--config", "b.yaml"]).config == "b.yaml"
    assert p.parse_args(["deliveries", "targets"]).config == "gateway.yaml"


def test_purge_without_filter_refuses_when_not_interactive_and_purges_with_yes(setup, tmp_path):
    db, config = setup
    res = run(tmp_path, "purge", "--config", str(config))
    assert res.returncode == 1 and "--yes" in res.stderr
    assert len(statuses(db)) == 4  # nothing deleted
    res = run(tmp_path, "purge", "--config", str(config), "--yes")
    assert res.returncode == 0 and res.stdout.startswith("3 deliveries purged"), res.stderr
    assert statuses(db) == {"msg_4": "pending"}  # pending ones are never purged


def test_purge_with_a_filter_needs_no_confirmation(setup, tmp_path):
    db, config = setup
    res = run(tmp_path, "purge", "--status", "dead", "--config", str(config))
    assert res.returncode == 0 and res.stdout.startswith("2 deliveries purged")


@pytest.mark.parametrize("answer,purged", [("y", True), ("n", False)])
def test_purge_without_filter_asks_on_a_terminal(setup, tmp_path, answer, purged):
    db, config = setup
    controller, terminal = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k != ENV_OUTBOX}
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.Popen([sys.executable, "-m", "whazing_gateway.cli", "deliveries", "purge", "--config",
                                 str(config)], cwd=tmp_path, env=env, stdin=terminal, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.write(controller, (answer + "\n").encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert "[y/N]" in out
    if purged:
        assert proc.returncode == 0 and "3 deliveries purged" in out, err
        assert statuses(db) == {"msg_4": "pending"}
    else:
        assert proc.returncode == 1 and "nothing purged" in out
        assert len(statuses(db)) == 4


def test_targets_shows_health_pause_and_held(setup, tmp_path):
    db, config = setup
    res = run(tmp_path, "targets", "--config", str(config), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["target"]: r for r in json.loads(res.stdout)}
    assert rows["n8n"]["state"] == "failing" and rows["n8n"]["held"] == 1 and rows["n8n"]["failed_probes"] == 2
    assert rows["n8n"]["next_probe"] is not None and rows["n8n"]["last_error"] == "HTTP 404"
    assert rows["crm"]["state"] == "paused" and rows["crm"]["held"] == 0 and "410" in rows["crm"]["last_error"]
    res = run(tmp_path, "targets", "--config", str(config))
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["target", "state"]
    assert any(line.startswith("n8n") and "failing" in line for line in lines)
