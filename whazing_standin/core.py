"""The stand-in's core: `Standin` owns the world, the uploaded media and the socket.io server.

Routes call the pure services and hand the returned pushes to `Standin.push`, which emits
them (in order) before the route answers. Nothing here knows about routes.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import socketio
import structlog
from aiohttp import web

from whazing_standin import auth
from whazing_standin.services import Emit
from whazing_standin.store import World, seeded_world

log = structlog.get_logger(__name__)

QUIRK_ERROR = {"message": "authentication error"}
STANDIN_KEY: web.AppKey["Standin"] = web.AppKey("standin")


class _NodeJson:
    """JSON like Node's JSON.stringify: compact, UTF-8 left as is (socket.io packets)."""

    @staticmethod
    def dumps(obj: Any, **kw: Any) -> str:
        kw.setdefault("separators", (",", ":"))
        kw["ensure_ascii"] = False
        return json.dumps(obj, **kw)

    @staticmethod
    def loads(s: str | bytes, **kw: Any) -> Any:
        return json.loads(s, **kw)


def dumps(obj: Any) -> str:
    """Express's `res.json` body form."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Standin:
    """Shared state of one stand-in: the data, the socket server and its options."""

    auth_error_quirk: bool = True
    token_ttl: int = 8 * 3600
    backend_url: str = "http://127.0.0.1:3000"
    world: World = field(default_factory=seeded_world)
    media: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    sio: socketio.AsyncServer = field(init=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What went out, in order (bounded): tests compare what clients got with it.
    emitted: deque[Emit] = field(default_factory=lambda: deque(maxlen=10000))

    def __post_init__(self) -> None:
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            ping_interval=5,
            ping_timeout=10,
            transports=["polling", "websocket"],
            json=_NodeJson,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("joinChatBox", self._on_join_chat_box)
        self.sio.on("joinTickets", self._on_join_tickets)
        self.sio.on("joinNotification", self._on_join_notification)

    def reset(self) -> None:
        self.world = seeded_world()
        self.media.clear()
        self.emitted.clear()

    async def push(self, emits: list[Emit]) -> None:
        """Emit to the tenant rooms, one after the other, logging what went out."""
        for e in emits:
            kind, payload = e.data.get("type", ""), e.data.get("payload") or {}
            ids = ({"contact_id": payload.get("id")} if kind.startswith("contact:")
                   else {"ticket_id": payload.get("ticketId", payload.get("id")),
                         "message_id": payload.get("id")} if kind.startswith("chat:")
                   else {"ticket_id": payload.get("id")})
            log.info("standin.emit", socket_event=e.event, type=kind, room=e.room, **ids)
            self.emitted.append(e)
            await self.sio.emit(e.event, e.data, room=e.room)

    # ---- socket.io handlers -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth_data: Any = None) -> bool:
        tenant_id = auth.tenant_from_socket_auth(auth_data)
        if tenant_id is None:
            log.info("standin.socket_refused", sid=sid)
            raise socketio.exceptions.ConnectionRefusedError(QUIRK_ERROR["message"])
        await self.sio.save_session(sid, {"tenantId": tenant_id})
        await self.sio.enter_room(sid, str(tenant_id))
        log.info("standin.socket_connected", sid=sid, tenant_id=tenant_id)
        if self.auth_error_quirk:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
            asyncio.get_running_loop().create_task(self._send_quirk(sid, eio_sid))
        return True

    async def _send_quirk(self, sid: str, eio_sid: str) -> None:
        """The real auth middleware calls back twice: CONNECT, then a CONNECT_ERROR (`44{...}`)."""
        for _ in range(500):
            if self.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.002)
        else:
            return
        try:
            await self.sio.eio.send(eio_sid, "4" + _NodeJson.dumps(QUIRK_ERROR))
        except Exception as exc:  # the client may be gone already
            log.info("standin.quirk_not_sent", sid=sid, error=str(exc))

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        log.info("standin.socket_disconnected", sid=sid)

    async def _tenant(self, sid: str) -> int | None:
        try:
            return (await self.sio.get_session(sid)).get("tenantId")
        except KeyError:
            return None

    async def _join(self, sid: str, suffix: Any) -> None:
        tenant_id = await self._tenant(sid)
        if tenant_id is not None and suffix not in (None, ""):
            await self.sio.enter_room(sid, f"{tenant_id}:{suffix}")

    async def _on_join_chat_box(self, sid: str, ticket_id: Any = None) -> None:
        await self._join(sid, ticket_id)

    async def _on_join_tickets(self, sid: str, status: Any = None) -> None:
        await self._join(sid, status)

    async def _on_join_notification(self, sid: str, *args: Any) -> None:
        await self._join(sid, "notification")
