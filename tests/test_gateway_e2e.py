"""The tap end to end: a real gateway process in reverse mode in front of the Whazing stand-in,
real socket.io clients as browsers, the stand-in's scenario, a real webhook receiver.

For every way of watching (observer only, 1 browser, 3 browsers, 1 browser on polling) the
scenario must yield exactly the expected events: same types, tickets, changes and order per
ticket, and not one duplicate.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from tests.harness import GatewayProcess, RawBrowser, login, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_standin import seed
from whazing_standin.client import TolerantAsyncClient
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

A, B, C, D = 1, 2, 3, 4
V, S, F = seed.QUEUE_VENDAS, seed.QUEUE_SUPORTE, seed.QUEUE_FINANCEIRO


def _expected(agent1: int, agent2: int) -> dict[int, list[tuple]]:
    """What the day means, ticket by ticket (section 7 of the Whazing notes)."""
    return {
        A: [("ticket.created", "NewTicket", {"status": [None, "pending"]}),
            ("message.received",), ("message.sent",),  # the bot's "you will be served by Vendas"
            ("ticket.transferred", None, {"queueId": [None, V]}),
            ("ticket.accepted", None, {"status": ["pending", "open"], "userId": [None, agent1]}),
            ("message.sent",), ("message.received",), ("message.sent",),  # text, inbound, file
            ("ticket.transferred", None, {"queueId": [V, F], "userId": [agent1, agent2], "status": ["open", "pending"]}),
            ("message.sent",),  # the transfer notice Whazing sends the contact
            ("ticket.accepted", None, {"status": ["pending", "open"]}),
            ("ticket.closed", None, {"status": ["open", "closed"]}),
            ("ticket.reopened", None, {"status": ["closed", "pending"]}),
            ("message.received",),
            ("ticket.closed", None, {"status": ["pending", "closed"]})],
        B: [("ticket.created", "NewTicket", {"status": [None, "pending"]}), ("message.received",),
            ("ticket.transferred", None, {"queueId": [None, S]}),
            ("ticket.transferred", None, {"queueId": [S, V]}),  # external API, no isTransference
            ("ticket.accepted", None, {"status": ["pending", "open"], "userId": [None, agent1]}),
            ("message.sent",),
            ("ticket.closed", None, {"status": ["open", "closed"]}),
            ("ticket.reopened", None, {"status": ["closed", "open"]}),
            ("ticket.closed", None, {"status": ["open", "closed"]})],
        C: [("ticket.created", "NewTicketUserCreate", {"status": [None, "open"], "userId": [None, agent2]}),
            ("message.sent",),
            ("ticket.closed", None, {"status": ["open", "closed"]})],
        D: [("ticket.created", "NewTicket", {"status": [None, "pending"]}), ("message.received",), ("message.received",),
            ("ticket.accepted", None, {"status": ["pending", "open"], "userId": [None, agent1]}),
            ("message.sent",),
            ("ticket.closed", None, {"status": ["open", "closed"]})],
    }


def _summary(body: dict) -> tuple:
    if body["type"].startswith("message."):
        return (body["type"],)
    changes = {k: [v["from"], v["to"]] for k, v in body["data"]["changes"].items()}
    return (body["type"], body["data"]["origin"], changes)


async def _browser(url: str, token: str, transport: str) -> TolerantAsyncClient:
    client = TolerantAsyncClient(reconnection=False)
    client.frames = []

    @client.on("*")
    async def _any(event, *args):
        client.frames.append((event, args))

    await client.connect(url, auth={"token": token}, transports=[transport], wait_timeout=10)
    return client


@pytest.mark.parametrize("browsers, transport, observer", [
    (0, "websocket", True),
    (1, "websocket", False),
    (3, "websocket", False),
    (1, "polling", False),
], ids=["observer-only", "1-browser", "3-browsers", "1-browser-polling"])
@pytest.mark.slow
async def test_scenario_yields_exactly_the_expected_events(tmp_path, browsers, transport, observer):
    standin = await start_standin()
    receiver = await Receiver().start()
    env = {"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL, "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD} if observer else {
        "WHAZING_OBSERVER_EMAIL": "", "WHAZING_OBSERVER_PASSWORD": ""}
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url())).start() if not observer else None
    if observer:
        gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()), env=env).start()
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
    clients = []
    try:
        token = await login(gw.url)
        clients = [await _browser(gw.url, token, transport) for _ in range(browsers)]
        day = await play_day(gw.url, step_delay=0.1 if transport == "polling" else 0.05)
        agent1 = day.step("login_agent1").detail["user_id"]
        agent2 = day.step("login_agent2").detail["user_id"]
        assert day.tickets == {"A": A, "B": B, "C": C, "D": D}
        expected = _expected(agent1, agent2)
        total = sum(len(v) for v in expected.values())
        await receiver.wait_for(total, timeout=60)
        await asyncio.sleep(1.5)  # anything extra (a duplicate) would arrive by now
        got: dict[int, list[tuple]] = defaultdict(list)
        for req in receiver.requests:
            body = req.json()
            got[body["data"]["ticket"]["id"]].append(_summary(body))
        assert dict(got) == expected
        assert len(receiver.requests) == total
        ids = [r.webhook_id for r in receiver.requests]
        assert len(set(ids)) == len(ids)
        for c in clients:  # the browsers really were fed through the gateway
            assert sum(1 for e, _ in c.frames if e.endswith(":ticketList")) >= 40
    finally:
        for c in clients:
            await c.disconnect()
        await gw.stop()
        await receiver.stop()
        await standin.stop()


@pytest.mark.slow
async def test_plain_mitmdump_with_the_script_and_byte_identical_frames(tmp_path):
    """`mitmdump -s whazing_gateway/edge/addon.py` works as documented, and a browser behind it receives
    exactly the frames a browser connected directly receives, byte for byte."""
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()), plain_mitmdump=True,
                              env={"WHAZING_OBSERVER_EMAIL": ""}).start()
    try:
        direct = await RawBrowser(standin.url, await login(standin.url)).start()
        proxied = await RawBrowser(gw.url, await login(gw.url)).start()
        await play_day(gw.url)
        await receiver.wait_for(sum(len(v) for v in _expected(0, 0).values()), timeout=60)
        await wait_until(lambda: len(proxied.events()) >= len(direct.events()) > 40, 20, what="frames")
        assert proxied.events() == direct.events()
        await direct.stop()
        await proxied.stop()
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
