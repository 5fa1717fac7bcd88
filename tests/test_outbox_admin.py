"""`whazing-gateway deliveries list|show|retry|purge` on a real outbox file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whazing_gateway import model
from whazing_gateway.cli import build_parser
from whazing_gateway.outbox.admin import ENV_OUTBOX, deliveries_command, parse_time
from whazing_gateway.outbox.base import Attempt, TargetPause
from whazing_gateway.outbox.sqlite import SqliteOutbox

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z


def _d(i: int, target: str, etype: str, at: float) -> model.Delivery:
    return model.Delivery(id=f"msg_{i}", target=target, event_id=f"evt_{i}", event_type=etype,
                          order_key=None, body=json.dumps({"i": i}).encode(), created_at=at, ticket_id=i)


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "outbox.db"

    async def fill():
        async with SqliteOutbox(path) as ob:
            await ob.put([
                _d(1, "n8n", model.TICKET_CREATED, T0),
                _d(2, "n8n", model.MESSAGE_RECEIVED, T0 + 60),
                _d(3, "crm", model.MESSAGE_RECEIVED, T0 + 120),
                _d(4, "crm", model.TICKET_CLOSED, T0 + 180),
            ])
            await ob.claim(time.time(), 10, ordered=False)
            await ob.record_attempt("msg_1", Attempt(T0 + 1, 200, 12.5), "delivered", None)
            await ob.record_attempt("msg_2", Attempt(T0 + 61, 500, 30.0, "HTTP 500"), "retry", T0 + 65)
            await ob.record_attempt("msg_2", Attempt(T0 + 66, 400, 8.0, "HTTP 400"), "dead", None)
            await ob.record_attempt("msg_3", Attempt(T0 + 121, 410, 3.0, "410 Gone"), "dead", None)
            await ob.release(["msg_4"])
            await ob.pause_target(TargetPause("crm", "http://crm/hook", "410 Gone", T0 + 121))

    asyncio.run(fill())
    return path


def cli(db: Path, *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["deliveries", *argv])
    out = io.StringIO()
    code = deliveries_command(args, outbox_factory=lambda a: SqliteOutbox(db), out=out)
    return code, out.getvalue()


def state(db: Path, item_id: str):
    async def get():
        async with SqliteOutbox(db) as ob:
            return await ob.get(item_id), await ob.paused_targets()

    return asyncio.run(get())


def test_list_with_filters(db):
    code, out = cli(db, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "target", "type", "status"]
    assert [line.split()[0] for line in lines[1:]] == ["msg_4", "msg_3", "msg_2", "msg_1"]
    ids = lambda *a: [i["id"] for i in json.loads(cli(db, "list", "--json", *a)[1])]  # noqa: E731
    assert ids("--target", "n8n") == ["msg_2", "msg_1"]
    assert ids("--type", model.MESSAGE_RECEIVED, "--status", "dead") == ["msg_3", "msg_2"]
    assert ids("--since", "2025-01-01T00:01:00Z", "--until", str(T0 + 180)) == ["msg_3", "msg_2"]
    assert ids("--limit", "1") == ["msg_4"]
    assert ids("msg_1", "msg_4") == ["msg_4", "msg_1"]


def test_show_prints_every_attempt(db):
    code, out = cli(db, "show", "msg_2", "--json")
    data = json.loads(out)
    assert code == 0 and data["status"] == "dead" and data["body"] == {"i": 2}
    assert [(a["status_code"], a["error"]) for a in data["attempt_log"]] == [(500, "HTTP 500"), (400, "HTTP 400")]
    assert data["attempt_log"][0]["latency_ms"] == 30.0
    code, out = cli(db, "show", "msg_2")
    assert code == 0 and "HTTP 500" in out and "2025-01-01T00:01:01Z" in out
    assert cli(db, "show", "msg_nope")[0] == 1


def test_retry_defaults_to_dead_letters_and_resumes_paused_targets(db):
    code, out = cli(db, "retry", "--json")
    assert code == 0 and json.loads(out) == {"retried": 2, "resumed_targets": ["crm"]}
    (item, attempts), paused = state(db, "msg_3")
    assert item.status == "pending" and item.round_attempts == 0 and len(attempts) == 1
    assert paused == {}
    assert state(db, "msg_1")[0][0].status == "delivered"  # a delivered one is left alone
    code, out = cli(db, "retry", "msg_1")  # ... unless named
    assert code == 0 and out.startswith("1 deliveries queued again")
    assert state(db, "msg_1")[0][0].status == "pending"


def test_purge_only_finished(db):
    code, out = cli(db, "purge", "--target", "n8n", "--json")
    assert code == 0 and json.loads(out) == {"purged": 2}
    assert state(db, "msg_1")[0] is None and state(db, "msg_4")[0] is not None
    assert cli(db, "purge", "--status", "pending")[1].startswith("0 ")


def test_bad_time_is_an_error(db):
    assert cli(db, "list", "--since", "yesterday-ish")[0] == 2
    assert parse_time("1735689600") == T0 and parse_time("2025-01-01T00:00:00+00:00") == T0


@pytest.mark.slow
def test_real_command_line_with_config_and_env(db, tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(f"storage:\n  backend: sqlite\n  sqlite:\n    path: {db}\n")
    env = {k: v for k, v in os.environ.items() if k != ENV_OUTBOX}
    env["PYTHONPATH"] = str(ROOT)
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "deliveries", *a],  # noqa: E731
                                          cwd=tmp_path, capture_output=True, text=True, timeout=60, **kw)
    res = run("--config", str(config), "list", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 4  # stdout is pure JSON: logs go to stderr
    res = run("show", "msg_1", env={**env, ENV_OUTBOX: str(db)})
    assert res.returncode == 0 and "delivered" in res.stdout
