"""The stand-in's REST routes, auth, socket pushes and control API, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from whazing_standin import seed
from whazing_standin.client import TolerantAsyncClient
from whazing_standin.server import start_standin

T = seed.TENANT_ID


async def wait_for(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Recorder:
    """Collects `<tenant>:ticketList` / `:contactList` events of one client, in arrival order."""

    def __init__(self, client: socketio.AsyncClient) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        for name in (f"{T}:ticketList", f"{T}:contactList"):
            client.on(name, self._make(name))

    def _make(self, name: str):
        async def handler(data: dict[str, Any]) -> None:
            self.events.append((name, data))
        return handler

    def types(self) -> list[str]:
        return [d["type"] for _, d in self.events]


async def login(http: aiohttp.ClientSession, url: str, email: str = seed.AGENT1_EMAIL) -> dict[str, Any]:
    async with http.post(url + "/auth/login/", json={"email": email, "password": seed.PASSWORD}) as r:
        assert r.status == 200
        return await r.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def agent(standin, http):
    return await login(http, standin.url)


@pytest.fixture
async def sock(standin, agent):
    c = TolerantAsyncClient()
    rec = Recorder(c)
    await c.connect(standin.url, auth={"token": agent["token"]}, transports=["websocket"], wait_timeout=10)
    yield c, rec
    await c.disconnect()


async def sim(http, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url + "/__sim/" + path, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def inbound(http, url: str, number: str = "5511977770001", body: str = "oi", channel: int = 1) -> dict[str, Any]:
    return await sim(http, url, "inbound", {"whatsappId": channel, "number": number, "name": "Cliente", "body": body})


# ---- auth ------------------------------------------------------------------------------------

async def test_login_issues_whazing_jwt(standin, http):
    body = await login(http, standin.url, seed.AGENT2_EMAIL)
    claims = jwt.decode(body["token"], seed.JWT_SECRET, algorithms=["HS256"])
    assert (claims["id"], claims["tenantId"], claims["profile"]) == (seed.AGENT2_ID, T, "user")
    assert body["userId"] == seed.AGENT2_ID and body["tenantId"] == T
    assert [q["queue"] for q in body["queues"]] == ["Suporte", "Financeiro"]


async def test_auth_errors_are_shaped_like_whazing(standin, http):
    async with http.post(standin.url + "/auth/login/", json={"email": seed.ADMIN_EMAIL, "password": "x"}) as r:
        assert (r.status, await r.json()) == (401, {"error": "ERR_INVALID_CREDENTIALS"})
    async with http.get(standin.url + "/tickets") as r:
        assert (r.status, await r.json()) == (403, {"error": "Token was not provided."})
    async with http.get(standin.url + "/tickets", headers=bearer("not.a.jwt")) as r:
        assert (r.status, await r.json()) == (403, {"error": "Invalid token."})
    expired = jwt.encode({"id": 2, "tenantId": T, "profile": "user", "exp": int(time.time()) - 60},
                         seed.JWT_SECRET, algorithm="HS256")
    async with http.get(standin.url + "/tickets", headers=bearer(expired)) as r:
        assert (r.status, await r.json()) == (401, {"error": "ERR_SESSION_EXPIRED"})


async def test_refresh_token_and_logout(standin, http, agent):
    async with http.post(standin.url + "/auth/refresh_token") as r:  # the jrt cookie from login
        assert r.status == 200
        token = (await r.json())["token"]
    async with http.get(standin.url + "/queue", headers=bearer(token)) as r:
        assert [q["queue"] for q in await r.json()] == ["Vendas", "Suporte", "Financeiro"]
    async with http.post(standin.url + "/auth/logout/", json={"id": agent["userId"]}, headers=bearer(token)) as r:
        assert await r.json() == {"message": "USER_LOGOUT"}


# ---- tickets and their pushes ----------------------------------------------------------------

async def test_inbound_opens_ticket_with_is_created(standin, http, sock):
    _, rec = sock
    r = await inbound(http, standin.url)
    assert r["isCreated"] is True and r["ticketId"] == 1 and r["messageId"].startswith("3EB0")
    await wait_for(lambda: len(rec.events) >= 3)
    assert rec.types() == ["contact:update", "ticket:update", "chat:create"]
    assert rec.events[0][0] == f"{T}:contactList"
    ticket = rec.events[1][1]["payload"]
    assert ticket["isCreated"] is True and ticket["status"] == "pending" and ticket["contact"]["number"] == "5511977770001"
    msg = rec.events[2][1]["payload"]
    assert (msg["id"], msg["fromMe"], msg["ticket"]["id"]) == (r["messageId"], False, 1)
    r2 = await inbound(http, standin.url, body="de novo")
    assert (r2["ticketId"], r2["isCreated"]) == (1, False)


async def test_put_emits_old_state_then_new(standin, http, agent, sock):
    _, rec = sock
    tid = (await inbound(http, standin.url))["ticketId"]
    await wait_for(lambda: len(rec.events) >= 3)
    rec.events.clear()
    async with http.put(f"{standin.url}/tickets/{tid}", json={"status": "open", "userId": agent["userId"]},
                        headers=bearer(agent["token"])) as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "open" and body["user"]["id"] == agent["userId"]
    await wait_for(lambda: len(rec.events) >= 2)
    old, new = (d["payload"] for _, d in rec.events[:2])
    assert (old["status"], old["userId"]) == ("pending", None)
    assert (new["status"], new["userId"]) == ("open", agent["userId"])


async def test_transfer_from_ui_flags_and_notifies(standin, http, agent, sock):
    _, rec = sock
    tid = (await inbound(http, standin.url))["ticketId"]
    await wait_for(lambda: len(rec.events) >= 3)
    rec.events.clear()
    async with http.put(f"{standin.url}/tickets/{tid}", headers=bearer(agent["token"]),
                        json={"userId": seed.AGENT2_ID, "queueId": 3, "status": "pending", "isTransference": 1}) as r:
        assert r.status == 200
    await wait_for(lambda: len(rec.events) >= 4)
    assert rec.types() == ["ticket:update", "ticket:update", "notification:new", "chat:create"]
    new = rec.events[1][1]["payload"]
    assert new["isTransference"] is True and new["queueId"] == 3 and new["queue"]["queue"] == "Financeiro"
    notice = rec.events[3][1]["payload"]
    assert notice["fromMe"] is True and "transferido" in notice["body"]


async def test_external_updatequeue_is_an_unflagged_transfer(standin, http, sock):
    _, rec = sock
    tid = (await inbound(http, standin.url))["ticketId"]
    await wait_for(lambda: len(rec.events) >= 3)
    rec.events.clear()
    url = f"{standin.url}/v1/api/external/{seed.API_ID}/updatequeue"
    async with http.post(url, json={"ticketId": tid, "queueId": 2}, headers=bearer("wrong")) as r:
        assert (r.status, await r.json()) == (403, {"error": "Invalid token."})
    async with http.post(url, json={"ticketId": tid, "queueId": 2}, headers=bearer(seed.API_TOKEN)) as r:
        assert r.status == 200 and (await r.json())["queueId"] == 2
    await wait_for(lambda: rec.events)
    first = rec.events[0][1]["payload"]
    assert first["queueId"] == 2 and first["isTransference"] is None  # no old state, no flag


async def test_agent_created_ticket_has_active_demand_not_is_created(standin, http, agent, sock):
    _, rec = sock
    async with http.post(standin.url + "/contacts", json={"name": "Bia", "number": "5511966660001"},
                         headers=bearer(agent["token"])) as r:
        contact = await r.json()
    async with http.post(standin.url + "/tickets", headers=bearer(agent["token"]),
                         json={"contactId": contact["id"], "status": "open", "userId": agent["userId"],
                               "whatsappId": 2}) as r:
        assert r.status == 200
        ticket = await r.json()
    await wait_for(lambda: "ticket:update" in rec.types())
    pushed = next(d["payload"] for _, d in rec.events if d["type"] == "ticket:update")
    assert pushed["id"] == ticket["id"] and pushed["isActiveDemand"] is True
    assert pushed["isCreated"] is None and pushed["queueId"] is None
    async with http.post(standin.url + "/tickets", headers=bearer(agent["token"]),
                         json={"contactId": contact["id"], "status": "open"}) as r:
        assert (r.status, await r.json()) == (409, {"error": "ERR_OTHER_OPEN_TICKET"})


async def test_send_message_answers_empty_and_pushes(standin, http, agent, sock):
    _, rec = sock
    tid = (await inbound(http, standin.url))["ticketId"]
    await wait_for(lambda: len(rec.events) >= 3)
    rec.events.clear()
    async with http.post(f"{standin.url}/messages/{tid}", json={"body": "Olá!"}, headers=bearer(agent["token"])) as r:
        assert (r.status, await r.read()) == (200, b"")
    form = aiohttp.FormData()
    form.add_field("medias", b"PNGDATA", filename="foto.png", content_type="image/png")
    async with http.post(f"{standin.url}/messages/{tid}", data=form, headers=bearer(agent["token"])) as r:
        assert (r.status, await r.read()) == (200, b"")
    await wait_for(lambda: len(rec.events) >= 2)
    text, media = (d["payload"] for _, d in rec.events[:2])
    assert (text["body"], text["fromMe"], text["sendType"], text["userId"]) == ("Olá!", True, "chat", agent["userId"])
    assert media["mediaType"] == "image" and media["mediaUrl"].startswith(standin.url + "/public/")
    async with http.get(media["mediaUrl"]) as r:
        assert await r.read() == b"PNGDATA"


async def test_external_send_pushes_after_answering(standin, http, sock):
    _, rec = sock
    async with http.post(f"{standin.url}/v1/api/external/{seed.API_ID}", headers=bearer(seed.API_TOKEN),
                         json={"body": "Pedido enviado", "number": "5511955550001", "externalKey": "k1"}) as r:
        assert (r.status, await r.json()) == (200, {"message": "Message added to queue"})
    await wait_for(lambda: "chat:create" in rec.types())
    assert rec.types() == ["contact:update", "ticket:update", "chat:create"]
    msg = rec.events[2][1]["payload"]
    assert (msg["sendType"], msg["fromMe"], msg["body"]) == ("API", True, "Pedido enviado")


async def test_ack_edit_and_silent_delete(standin, http, agent, sock):
    _, rec = sock
    r = await inbound(http, standin.url)
    await sim(http, standin.url, "ack", {"messageId": r["messageId"], "ack": 3})
    async with http.post(f"{standin.url}/messages/edit/{r['messageId']}", json={"body": "editada"},
                         headers=bearer(agent["token"])) as resp:
        assert resp.status == 200
    async with http.delete(f"{standin.url}/messages/{r['messageId']}", headers=bearer(agent["token"])) as resp:
        assert resp.status == 200
    async with http.delete(f"{standin.url}/tickets/{r['ticketId']}", headers=bearer(agent["token"])) as resp:
        assert (resp.status, await resp.json()) == (200, {"message": "ticket deleted"})
    await inbound(http, standin.url, number="5511977770002")  # a marker after the silent deletions
    await wait_for(lambda: rec.types()[-1:] == ["chat:create"] and len(rec.events) >= 8)
    assert rec.types() == ["contact:update", "ticket:update", "chat:create", "chat:ack", "chat:update",
                           "contact:update", "ticket:update", "chat:create"]
    assert rec.events[3][1]["payload"]["ack"] == 3 and rec.events[4][1]["payload"]["edited"] is True


async def test_reopen_setting_reuses_closed_ticket(standin, http, sock):
    _, rec = sock
    await sim(http, standin.url, "settings", {"reopenTicket": True})
    tid = (await inbound(http, standin.url))["ticketId"]
    await sim(http, standin.url, "auto-close", {"ticketId": tid})
    r = await inbound(http, standin.url, body="voltei")
    assert (r["ticketId"], r["isCreated"], r["reopened"]) == (tid, True, True)
    await wait_for(lambda: len(rec.events) >= 6)
    closed, reopened = rec.events[3][1]["payload"], rec.events[4][1]["payload"]
    assert closed["status"] == "closed" and (reopened["id"], reopened["status"], reopened["isCreated"]) == (tid, "pending", True)
    await sim(http, standin.url, "settings", {"reopenTicket": False})
    await sim(http, standin.url, "auto-close", {"ticketId": tid})
    assert (await inbound(http, standin.url))["ticketId"] == tid + 1


async def test_group_message_contact_is_the_sender_ticket_contact_the_group(standin, http, sock):
    _, rec = sock
    r = await sim(http, standin.url, "group", {"whatsappId": 1, "groupNumber": "120363999", "groupName": "Grupo",
                                                "number": "5511944440001", "name": "Rui", "body": "oi grupo"})
    await wait_for(lambda: "chat:create" in rec.types())
    msg = rec.events[-1][1]["payload"]
    assert msg["ticket"]["isGroup"] is True and msg["ticket"]["contact"]["isGroup"] is True
    assert msg["ticket"]["contact"]["number"] == "120363999"
    assert msg["contact"]["number"] == "5511944440001" and msg["contact"]["isGroup"] is False
    assert msg["contactId"] == msg["contact"]["id"] == r["senderContactId"] != msg["ticket"]["contactId"]


async def test_close_with_rating_holds_response_after_push(standin, http, agent, sock):
    _, rec = sock
    await sim(http, standin.url, "channels/1", {"ratingEnabled": True, "timeRating": 2.5})
    tid = (await inbound(http, standin.url))["ticketId"]
    await wait_for(lambda: len(rec.events) >= 3)
    rec.events.clear()
    put = asyncio.ensure_future(http.put(f"{standin.url}/tickets/{tid}", json={"status": "closed"},
                                         headers=bearer(agent["token"])))
    await wait_for(lambda: len(rec.events) >= 2)
    assert rec.events[1][1]["payload"]["status"] == "closed"
    assert not put.done()  # the socket push came, the HTTP answer is still held
    resp = await asyncio.wait_for(put, 30)
    assert resp.status == 200 and (await resp.json())["status"] == "closed"
    resp.release()


async def test_client_events_join_rooms(standin, http, sock):
    c, _ = sock
    await c.emit("joinChatBox", "7")
    await c.emit("joinTickets", "open")
    await c.emit("joinNotification")
    sid = c.get_sid("/")
    want = {str(T), f"{T}:7", f"{T}:open", f"{T}:notification"}
    await wait_for(lambda: want <= set(standin.standin.sio.rooms(sid)))


async def test_sim_reset_and_state(standin, http):
    await inbound(http, standin.url)
    async with http.get(standin.url + "/__sim/state") as r:
        state = await r.json()
    assert [t["id"] for t in state["tickets"]] == [1] and len(state["messages"]) == 1
    await sim(http, standin.url, "reset", {})
    async with http.get(standin.url + "/__sim/state") as r:
        assert (await r.json())["tickets"] == []
    assert (await inbound(http, standin.url))["ticketId"] == 1


# ---- socket.io handshake and the auth-error quirk ------------------------------------------------

async def raw_handshake(url: str, token: str | None) -> list[str]:
    """The text frames a raw websocket client gets after sending CONNECT with `{token}`."""
    frames: list[str] = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url + "/socket.io/?EIO=4&transport=websocket") as ws:
            opening = await ws.receive_str(timeout=10)
            assert opening.startswith("0{") and json.loads(opening[1:])["pingInterval"] == 5000
            await ws.send_str("40" + json.dumps({"token": token} if token else {}))
            while len(frames) < 2:
                try:
                    msg = await ws.receive(timeout=1.5)
                except asyncio.TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                if msg.data != "2":
                    frames.append(msg.data)
    return frames


async def test_wire_quirk_valid_token_gets_connect_then_44(standin, agent):
    frames = await raw_handshake(standin.url, agent["token"])
    assert frames[0].startswith('40{"sid":"') and frames[1] == '44{"message":"authentication error"}'


async def test_wire_invalid_token_gets_only_44(standin):
    assert await raw_handshake(standin.url, "bad") == ['44{"message":"authentication error"}']


async def test_plain_python_socketio_client_does_not_survive_the_quirk(standin, agent):
    """python-socketio 5.x takes the 44 as a rejection of the namespace: it fires connect_error,
    forgets the namespace and can no longer emit. Whether connect() itself raises depends on
    which the client handles first, the 44 or its own wake-up after the 40 (a race inside
    python-socketio: on Python 3.11 connect() usually returns, on 3.13 it usually raises), so the
    test pins the outcome, not the path. That is why the stand-in ships TolerantAsyncClient (and
    the gateway's observer needs one)."""
    c = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    c.on("connect_error", lambda *a: errors.append(a))
    try:
        await c.connect(standin.url, auth={"token": agent["token"]}, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError as exc:
        assert "namespaces failed to connect" in str(exc)
    await wait_for(lambda: bool(errors))
    assert errors == [({"message": "authentication error"},)]
    assert not c.connected and "/" not in c.namespaces
    with pytest.raises(socketio.exceptions.BadNamespaceError):
        await c.emit("joinNotification")
    await c.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_tolerant_client_survives_the_quirk(standin, http, agent, transport):
    c = TolerantAsyncClient(reconnection=False)
    rec = Recorder(c)
    errors: list[Any] = []
    c.on("connect_error", lambda *a: errors.append(a))
    await c.connect(standin.url, auth={"token": agent["token"]}, transports=[transport], wait_timeout=10)
    await wait_for(lambda: c.quirk_errors == 1)
    assert c.connected and errors == [({"message": "authentication error"},)]
    await c.emit("joinNotification")  # still usable for emits
    await inbound(http, standin.url)
    await wait_for(lambda: "chat:create" in rec.types())
    await c.disconnect()


async def test_without_quirk_plain_client_connects(http):
    srv = await start_standin(auth_error_quirk=False)
    try:
        token = (await login(http, srv.url))["token"]
        assert (await raw_handshake(srv.url, token))[0].startswith('40{"sid":"')
        assert len(await raw_handshake(srv.url, token)) == 1
        c = socketio.AsyncClient(reconnection=False)
        rec = Recorder(c)
        await c.connect(srv.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        await inbound(http, srv.url)
        await wait_for(lambda: "chat:create" in rec.types())
        await c.disconnect()
    finally:
        await srv.stop()
