"""The scripted day against the stand-in: same events over websocket and polling, determinism,
payload shapes, and the `python -m whazing_standin` entry point."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.standin_schemas import MESSAGE, TICKET, check, check_emit
from whazing_standin import seed
from whazing_standin.client import TolerantAsyncClient
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

T = seed.TENANT_ID
ROOT = Path(__file__).resolve().parents[1]
TIME_FIELDS = {"createdAt", "updatedAt", "timestamp", "lastMessageAt"}

# (type, ticket id or contact id, ticket status) of every push of the day, in order.
EXPECTED = [
    ("contact:update", 1, None), ("ticket:update", 1, "pending"), ("chat:create", 1, "pending"),
    ("chat:create", 1, "pending"), ("ticket:update", 1, "pending"),
    ("contact:update", 2, None), ("ticket:update", 2, "pending"), ("chat:create", 2, "pending"),
    ("ticket:update", 2, "pending"),
    ("ticket:update", 1, "pending"), ("ticket:update", 1, "open"),  # accept: old, new
    ("chat:create", 1, "open"), ("ticket:update", 1, "open"), ("chat:create", 1, "open"),
    ("chat:ack", 1, "open"), ("chat:create", 1, "open"),
    ("ticket:update", 1, "open"), ("ticket:update", 1, "pending"), ("notification:new", 1, "pending"),
    ("chat:create", 1, "pending"),  # transfer: old, new, notification, notice
    ("ticket:update", 1, "pending"), ("ticket:update", 1, "open"),
    ("ticket:update", 2, "pending"), ("notification:new", 2, "pending"),  # external updatequeue
    ("ticket:update", 2, "pending"), ("ticket:update", 2, "open"), ("chat:create", 2, "open"),
    ("ticket:update", 2, "open"), ("ticket:update", 2, "closed"),
    ("ticket:update", 2, "closed"), ("ticket:update", 2, "open"),
    ("contact:update", 3, None), ("ticket:update", 3, "open"), ("chat:create", 3, "open"),
    ("ticket:update", 1, "open"), ("ticket:update", 1, "closed"),
    ("ticket:update", 1, "pending"), ("chat:create", 1, "pending"),  # reopen by an inbound message
    ("contact:update", 4, None), ("contact:update", 5, None), ("ticket:update", 4, "pending"),
    ("chat:create", 4, "pending"),
    ("contact:update", 6, None), ("ticket:update", 4, "pending"), ("chat:create", 4, "pending"),
    ("ticket:update", 4, "pending"), ("ticket:update", 4, "open"), ("chat:create", 4, "open"),
    ("ticket:update", 3, "closed"),
    ("ticket:update", 1, "closed"), ("ticket:update", 2, "closed"), ("ticket:update", 4, "closed"),
]


def summary(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int, str | None]]:
    out = []
    for _, data in events:
        p = data["payload"]
        if data["type"].startswith("contact:"):
            out.append((data["type"], p["id"], None))
        elif data["type"].startswith("chat:"):
            out.append((data["type"], p["ticketId"], p["ticket"]["status"]))
        else:
            out.append((data["type"], p["id"], p["status"]))
    return out


def untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in TIME_FIELDS}
    if isinstance(obj, (list, tuple)):
        return [untimed(v) for v in obj]
    return obj


async def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def standin():
    srv = await start_standin()
    yield srv
    await srv.stop()


async def play_with_client(srv, transport: str) -> tuple[Any, list[tuple[str, dict[str, Any]]], list[Any]]:
    """Connect one real socket.io client, play the day, return (log, received, emitted)."""
    received: list[tuple[str, dict[str, Any]]] = []
    c = TolerantAsyncClient(reconnection=False)
    drops: list[Any] = []
    c.on("disconnect", lambda *a: drops.append(a))
    for name in (f"{T}:ticketList", f"{T}:contactList"):
        c.on(name, (lambda n: (lambda data: received.append((n, data))))(name))
    async with aiohttp.ClientSession() as s:
        async with s.post(srv.url + "/auth/login/", json={"email": seed.ADMIN_EMAIL, "password": seed.PASSWORD}) as r:
            token = (await r.json())["token"]
        await c.connect(srv.url, auth={"token": token}, transports=[transport], wait_timeout=10)
        await wait_for(lambda: c.quirk_errors == 1)
        log = await play_day(srv.url, session=s)
    emitted = list(srv.standin.emitted)
    await wait_for(lambda: len(received) >= len(emitted) or bool(drops))
    assert not drops, f"the {transport} client was dropped: {drops}"
    assert c.eio.current_transport == transport
    await c.disconnect()
    return log, received, emitted


def as_wire(emitted: list[Any]) -> list[tuple[str, Any]]:
    return [(e.event, json.loads(json.dumps(e.data))) for e in emitted]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_client_receives_every_push_in_order(standin, transport):
    log, received, emitted = await play_with_client(standin, transport)
    assert received == as_wire(emitted)  # complete, same order, same content
    assert summary(received) == EXPECTED  # and the same sequence on both transports
    assert log.tickets == {"A": 1, "B": 2, "C": 3, "D": 4}


async def test_every_push_matches_the_documented_fields(standin):
    log, received, _ = await play_with_client(standin, "websocket")
    problems = [err for event, data in received for err in check_emit(event, data, T)]
    assert problems == []
    async with aiohttp.ClientSession() as s:
        async with s.post(standin.url + "/auth/login/", json={"email": seed.ADMIN_EMAIL, "password": seed.PASSWORD}) as r:
            h = {"Authorization": f"Bearer {(await r.json())['token']}"}
        for tid in log.tickets.values():
            async with s.get(f"{standin.url}/tickets/{tid}", headers=h) as r:
                assert check(await r.json(), TICKET) == []
            async with s.get(f"{standin.url}/messages/{tid}", headers=h) as r:
                msgs = (await r.json())["messages"]
            assert msgs and [e for m in msgs for e in check(m, MESSAGE)] == []


async def test_pushes_carry_the_documented_signals(standin):
    log, received, _ = await play_with_client(standin, "websocket")
    A, B, C, D = (log.tickets[k] for k in "ABCD")
    tickets = [(d["type"], d["payload"]) for _, d in received if d["type"] == "ticket:update"]
    created = [p["id"] for _, p in tickets if p["isCreated"]]
    assert created == [A, B, A, D]  # A twice: the ReopenTicket reuse of a closed id
    assert log.step("inbound_reopen").ticket_id == A and log.step("inbound_reopen").detail["reopened"] is True
    flagged = [p for _, p in tickets if p["isTransference"]]
    assert [(p["id"], p["queueId"], p["userId"]) for p in flagged] == [(A, seed.QUEUE_FINANCEIRO, seed.AGENT2_ID)]
    agent_made = next(p for _, p in tickets if p["id"] == C)
    assert agent_made["isActiveDemand"] is True and agent_made["isCreated"] is None
    sent = [d["payload"] for _, d in received if d["type"] == "chat:create" and d["payload"]["fromMe"]]
    assert any("transferido" in m["body"] and m["ticketId"] == A for m in sent)
    assert any(m["mediaType"] == "document" and m["mediaUrl"].endswith("catalogo.pdf") for m in sent)
    group = [d["payload"] for _, d in received if d["type"] == "chat:create" and d["payload"]["ticketId"] == D
             and not d["payload"]["fromMe"]]
    assert [m["contact"]["number"] for m in group] == ["5511988880004", "5511988880005"]
    assert {m["ticket"]["contact"]["number"] for m in group} == {"120363000000000001"}
    async with aiohttp.ClientSession() as s:
        async with s.get(standin.url + "/__sim/state") as r:
            state = await r.json()
    assert {t["id"]: t["status"] for t in state["tickets"]} == {A: "closed", B: "closed", C: "closed", D: "closed"}
    assert log.step("bulk_close").detail["ticket_ids"] == [A, B, D]


async def test_day_is_deterministic_after_reset(standin):
    async with aiohttp.ClientSession() as s:
        first = await play_day(standin.url, session=s, step_delay=0.01)
        pushes1 = untimed(as_wire(standin.standin.emitted))
        async with s.post(standin.url + "/__sim/reset") as r:
            assert r.status == 200
        second = await play_day(standin.url, session=s, step_delay=0.01)
        pushes2 = untimed(as_wire(standin.standin.emitted))
    assert [(x.name, x.ticket_id, x.detail) for x in first.steps] == [(x.name, x.ticket_id, x.detail) for x in second.steps]
    assert pushes1 == pushes2 and len(pushes1) == len(EXPECTED)
    ids = [d["payload"]["id"] for _, d in pushes1 if d["type"] == "chat:create"]
    assert all(i.startswith("3EB0") and len(i) == 20 for i in ids) and len(set(ids)) == len(ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
async def test_runs_as_a_module():
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "whazing_standin", "--host", "127.0.0.1", "--port", str(port),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines: list[str] = []
        while not any("listening on" in ln for ln in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the stand-in exited: " + "".join(lines)
            lines.append(line.decode())
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/__sim/inbound",
                              json={"whatsappId": 1, "number": "5511900001111", "body": "oi"}) as r:
                assert (await r.json())["ticketId"] == 1
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        rest = (await proc.stdout.read()).decode()
        assert "standin.emit" in "".join(lines) + rest  # it logs what it emits
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
