"""Shared pieces of the proxy bench: Whazing-shaped payloads, the upstream server, statistics.

The upstream runs in its own process (`python -m bench.common upstream --port-file F`) so it
does not share an event loop with the load generator. It serves:

  GET /tickets/<id>        a ~1.5 KB Ticket JSON (a route the gateway decodes), Bearer required
  /socket.io/?EIO=4&transport=websocket
                           Engine.IO v4 handshake, then, after the client's
                           `42["bench:start",{"mode":..,"room":..,"members":N}]`, pushes
                           frames to every member of the room with credit-based flow control
                           (`42["bench:credit",N]`), so at most `window` frames per connection are
                           in flight and latency stays meaningful under saturation.

Every pushed frame ends with `,"benchSentAt":<unix time, 6 decimals>}]`: the client reads the
send time from the last 19 characters without parsing JSON. Modes:

  mixed   one frame to every member of the room (Whazing emits to the tenant's room, so every
          tab gets byte-identical copies); 1 in 3 frames is a `1:ticketList` event the gateway
          parses (new message -> one event; ticket update with no tracked change; ack), the rest
          are presence / session / online-user pushes it skips.
  paced   like mixed, at a fixed rate (`"rate"` frames/s per room): latency below saturation.
  worst   every frame a `1:ticketList` event with distinct content for each connection, and
          every one of them an event (new message, or a queue transfer): nothing deduplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import WSMsgType, web

TENANT = 1
CREATED_AT = "2025-01-02T10:00:00.000Z"
# An unsigned-in-spirit HS256 JWT: the gateway only reads its claims (tenant, user).
_JWT_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"


def bench_token() -> str:
    import base64

    claims = {"username": "Maria Atendente", "tenantId": TENANT, "profile": "admin", "id": 7,
              "iat": 1735812000, "exp": 4102444800}
    body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{_JWT_HEADER}.{body}.bench-signature-not-checked-by-the-gateway"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def contact(cid: int) -> dict[str, Any]:
    return {
        "id": cid, "name": f"Cliente {cid} da Silva", "number": f"55119{cid:08d}", "email": "",
        "profilePicUrl": f"https://pps.whatsapp.net/v/t61.24694-24/{cid}_n.jpg?ccb=11-4&oh=01_Q5AaIB&oe=67A1B2C3",
        "pushname": f"Cliente {cid}", "isGroup": False, "isWAContact": True, "tenantId": TENANT,
        "lid": None, "kanbanId": None, "followupId": None, "telegramId": None, "instagramPK": None,
        "messengerId": None, "createdAt": CREATED_AT, "updatedAt": CREATED_AT,
    }


def ticket(tid: int, *, status: str = "open", queue_id: int | None = 3, updated_at: str = CREATED_AT) -> dict[str, Any]:
    """A Ticket as Whazing serializes it (with contact, user, queue and channel loaded): ~1.5 KB."""
    cid = 1000 + tid
    return {
        "id": tid, "status": status, "unreadMessages": 0, "lastMessage": "Boa tarde, gostaria de saber o prazo de entrega do pedido 48213, comprei na semana passada",
        "channel": "whatsapp", "answered": True, "isGroup": False, "isActiveDemand": False,
        "isFarewellMessage": False, "isTransference": False, "createdAt": CREATED_AT, "updatedAt": updated_at,
        "lastMessageAt": 1735812000000, "lastInteractionBot": None, "botRetries": 0, "botStatus": None,
        "protocol": f"2025010210{tid:08d}", "userId": 7, "contactId": cid, "whatsappId": 1, "queueId": queue_id,
        "tenantId": TENANT, "chatFlowId": None, "stepAutoReplyId": None, "autoReplyId": None, "apiConfig": None,
        "closingReasonId": None, "contact": contact(cid),
        "user": {"id": 7, "name": "Maria Atendente", "email": "maria@empresa.com.br", "profile": "user"},
        "queue": {"id": queue_id, "queue": "Suporte", "color": "#1976d2"} if queue_id else None,
        "whatsapp": {"id": 1, "name": "WhatsApp Comercial", "type": "whatsapp", "status": "CONNECTED"},
        "tags": [{"id": 2, "tag": "VIP", "color": "#ff9800", "isActive": True}],
        "extraInfo": [{"id": 11, "name": "pedido", "value": "48213"}],
    }


def message(mid: str, tid: int, *, from_me: bool, ts: float) -> dict[str, Any]:
    """A `chat:create` payload: a Message with its ticket."""
    return {
        "id": mid, "messageId": mid, "body": "Olá, meu pedido 48213 ainda não chegou, podem verificar?",
        "ack": 0 if not from_me else 1, "read": False, "fromMe": from_me, "mediaType": "chat", "mediaUrl": None,
        "timestamp": int(ts * 1000), "status": "received" if not from_me else "sended", "sendType": None if not from_me else "chat",
        "ticketId": tid, "contactId": 1000 + tid, "userId": None if not from_me else 7, "isDeleted": False,
        "edited": False, "quotedMsgId": None, "dataJson": None, "tenantId": TENANT,
        "createdAt": iso(ts), "updatedAt": iso(ts),
        "ticket": {"id": tid, "status": "open", "queueId": 3, "userId": 7, "whatsappId": 1, "isGroup": False,
                   "channel": "whatsapp", "contact": {"id": 1000 + tid, "name": f"Cliente {tid}", "number": f"55119{1000 + tid:08d}"}},
        "contact": contact(1000 + tid),
    }


def _push(name: str, body: dict[str, Any], sent_at: float) -> str:
    """`42["name",{...,"benchSentAt":t}]` with the time in the last 19 characters."""
    inner = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return f'42["{name}",{inner[:-1]},"benchSentAt":{sent_at:.6f}}}]'


def sent_at(frame: str) -> float:
    return float(frame[-19:-2])


class FrameMaker:
    """The n-th frame of a room, as Whazing would push it (see the module docstring)."""

    def __init__(self, mode: str, room: str, room_index: int) -> None:
        self.mode = mode
        self.room = room
        self.base = 100_000 + room_index * 1000
        self.seq = 0

    def next(self) -> str:
        n, self.seq = self.seq, self.seq + 1
        now = time.time()
        if self.mode == "worst":
            if n % 2 == 0:
                return _push(f"{TENANT}:ticketList", {"type": "chat:create", "payload": message(
                    f"BENCH{self.room}x{n}", self.base + n % 50, from_me=bool(n % 4), ts=now)}, now)
            # each sighting of a ticket moves it to another queue: a ticket.transferred event
            tid = self.base + (n // 2) % 50
            queue = (n // 100) % 3 + 1
            return _push(f"{TENANT}:ticketList", {"type": "ticket:update", "payload": ticket(
                tid, queue_id=queue, updated_at=iso(now))}, now)
        k = n % 9
        if k == 0:
            return _push(f"{TENANT}:ticketList", {"type": "chat:create", "payload": message(
                f"BENCH{self.room}x{n}", self.base + n % 50, from_me=False, ts=now)}, now)
        if k == 3:  # seen before, nothing tracked changed: parsed, no event
            return _push(f"{TENANT}:ticketList", {"type": "ticket:update", "payload": ticket(
                self.base + n % 50, updated_at=iso(now))}, now)
        if k == 6:
            return _push(f"{TENANT}:ticketList", {"type": "chat:ack", "payload": {
                "id": f"BENCH{self.room}x{n - 6}", "ack": 3, "ticketId": self.base + n % 50}}, now)
        if k in (1, 5):
            return _push("verifyOnlineUsers", {"action": "update", "data": {
                "id": 7 + k, "email": "maria@empresa.com.br", "status": "online", "lastOnline": iso(now)}}, now)
        if k in (2, 7):
            return _push(f"{TENANT}:whatsappSession", {"action": "update", "session": {
                "id": 1, "name": "WhatsApp Comercial", "status": "CONNECTED", "battery": "87", "plugged": True,
                "number": "5511988887777", "updatedAt": iso(now)}}, now)
        return _push(f"{TENANT}:user", {"action": "update", "user": {
            "id": 7, "name": "Maria Atendente", "status": "online", "lastLogin": iso(now)}}, now)


# ---- upstream server ------------------------------------------------------------------------


class Room:
    """Members of one broadcast; the producer sends while every member has credit."""

    def __init__(self, mode: str, name: str, index: int, members: int, rate: float = 0.0) -> None:
        self.maker = FrameMaker(mode, name, index)
        self.members = members
        self.rate = rate
        self.sockets: list[web.WebSocketResponse] = []
        self.credit: dict[int, int] = {}
        self.changed = asyncio.Event()
        self.stopped = False
        self.task: asyncio.Task | None = None

    def grant(self, ws: web.WebSocketResponse, n: int) -> None:
        self.credit[id(ws)] = self.credit.get(id(ws), 0) + n
        self.changed.set()

    async def run(self) -> None:
        while not self.stopped:
            ready = len(self.sockets) >= self.members
            n = min((self.credit.get(id(ws), 0) for ws in self.sockets), default=0) if ready else 0
            if n <= 0:
                self.changed.clear()
                await self.changed.wait()
                continue
            if self.rate > 0:  # paced: one frame at its due time (a client never lags at this rate)
                if self.maker.seq == 0:
                    self.t0 = time.monotonic()
                await asyncio.sleep(max(0.0, self.t0 + self.maker.seq / self.rate - time.monotonic()))
                n = 1
            try:
                for _ in range(n):
                    frame = self.maker.next()
                    for ws in self.sockets:
                        if not ws.closed:
                            await ws.send_str(frame)
            except (ConnectionError, RuntimeError):  # a member left mid-send: the run is over
                return
            for ws in self.sockets:
                self.credit[id(ws)] -= n

    def stop(self) -> None:
        self.stopped = True
        self.changed.set()


class Upstream:
    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.tickets: dict[int, bytes] = {}

    async def get_ticket(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": "ERR_SESSION_EXPIRED"}, status=401)
        tid = int(request.match_info["tid"])
        body = self.tickets.get(tid)
        if body is None:
            body = self.tickets[tid] = json.dumps(ticket(tid), separators=(",", ":")).encode()
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        sid = os.urandom(10).hex()
        await ws.send_str('0{"sid":"%s","upgrades":[],"pingInterval":60000,"pingTimeout":60000}' % sid)
        room: Room | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                text = msg.data
                if text.startswith("40"):
                    await ws.send_str('40{"sid":"%s"}' % os.urandom(10).hex())
                elif text.startswith('42["bench:credit"'):
                    if room is not None:
                        room.grant(ws, int(text[18:-1]))
                elif text.startswith('42["bench:start"'):
                    spec = json.loads(text[2:])[1]
                    room = self.rooms.get(spec["room"])
                    if room is None:
                        room = self.rooms[spec["room"]] = Room(spec["mode"], spec["room"], len(self.rooms), spec["members"],
                                                            spec.get("rate", 0.0))
                        room.task = asyncio.get_running_loop().create_task(room.run())
                    room.sockets.append(ws)
                    room.changed.set()
                elif text == "2":
                    await ws.send_str("3")
        finally:
            if room is not None:
                room.stop()
                self.rooms.pop(room.maker.room, None)
        return ws

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/tickets/{tid:\\d+}", self.get_ticket)
        app.router.add_get("/socket.io/", self.socket)
        return app


async def serve_upstream(port_file: str) -> None:
    runner = web.AppRunner(Upstream().app(), access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    await asyncio.Event().wait()


# ---- statistics -----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the proxy bench's Whazing-shaped upstream")
    p.add_argument("role", choices=["upstream"])
    p.add_argument("--port-file", required=True)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve_upstream(args.port_file))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
