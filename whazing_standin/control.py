"""The control API under `/__sim/` (no auth): what only WhatsApp, the bot or a timer can cause.

Each call pushes exactly what the real backend would push for that cause, then answers with
the ids involved, so a test or the scenario can name the ticket it just made.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from whazing_standin import seed, services
from whazing_standin.http_helpers import body_json, json_response, standin_of
from whazing_standin.store import ticket_json


def _tenant(data: dict[str, Any]) -> int:
    return int(data.get("tenantId") or seed.TENANT_ID)


async def inbound(request: web.Request) -> web.Response:
    """`{whatsappId, number, body, name?, mediaType?, fromMe?, messageId?}`: a message arrives."""
    st = standin_of(request)
    d = await body_json(request)
    async with st.lock:
        t, m, emits, info = services.inbound_message(
            st.world, _tenant(d), int(d.get("whatsappId") or seed.CHANNEL_VENDAS), str(d["number"]),
            str(d.get("body", "")), name=d.get("name"), media_type=d.get("mediaType") or "chat",
            from_me=bool(d.get("fromMe")), message_id=d.get("messageId"))
        await st.push(emits)
    return json_response({"ticketId": t.id, "messageId": m.id, "contactId": t.contactId, **info})


async def group_inbound(request: web.Request) -> web.Response:
    """`{whatsappId, groupNumber, groupName, number, name, body}`: a message in a group."""
    st = standin_of(request)
    d = await body_json(request)
    async with st.lock:
        t, m, emits, info = services.inbound_message(
            st.world, _tenant(d), int(d.get("whatsappId") or seed.CHANNEL_VENDAS), str(d["number"]),
            str(d.get("body", "")), name=d.get("name"), group_number=str(d["groupNumber"]),
            group_name=d.get("groupName"))
        await st.push(emits)
    return json_response({"ticketId": t.id, "messageId": m.id, "contactId": t.contactId,
                          "senderContactId": m.contactId, **info})


async def bot_transfer(request: web.Request) -> web.Response:
    """`{ticketId, queueId, body?}`: the ChatFlow moves the ticket to a queue (optionally saying so)."""
    st = standin_of(request)
    d = await body_json(request)
    async with st.lock:
        t, emits = services.bot_transfer(st.world, _tenant(d), d["ticketId"], int(d["queueId"]), d.get("body"))
        await st.push(emits)
    return json_response({"ticketId": t.id})


async def auto_close(request: web.Request) -> web.Response:
    """`{ticketId}`: the inactivity job closes the ticket (no HTTP request in the real system)."""
    st = standin_of(request)
    d = await body_json(request)
    async with st.lock:
        t, emits = services.job_update(st.world, _tenant(d), d["ticketId"], {"status": "closed"})
        await st.push(emits)
    return json_response({"ticketId": t.id})


async def ack(request: web.Request) -> web.Response:
    """`{messageId, ack}`: WhatsApp reports delivery (2) or read (3)."""
    st = standin_of(request)
    d = await body_json(request)
    async with st.lock:
        emits = services.ack_message(st.world, _tenant(d), str(d["messageId"]), int(d.get("ack", 3)))
        await st.push(emits)
    return json_response({"messageId": d["messageId"]})


async def settings(request: web.Request) -> web.Response:
    """`{reopenTicket: bool, privateFile: bool}`: the ReopenTicket setting; media only with a login."""
    st = standin_of(request)
    d = await body_json(request)
    if "reopenTicket" in d:
        st.world.reopen_ticket = bool(d["reopenTicket"])
    if "privateFile" in d:
        st.world.private_files = bool(d["privateFile"])
    return json_response({"reopenTicket": st.world.reopen_ticket, "privateFile": st.world.private_files})


async def channel(request: web.Request) -> web.Response:
    """`{ratingEnabled, timeRating (seconds), status}`: a channel's settings."""
    st = standin_of(request)
    d = await body_json(request)
    w = st.world.whatsapps.get(int(request.match_info["whatsappId"]))
    if w is None:
        return json_response({"error": "ERR_NO_WAPP_FOUND"}, 404)
    if "ratingEnabled" in d:
        w.ratingEnabled = bool(d["ratingEnabled"])
    if "timeRating" in d:
        w.timeRating = float(d["timeRating"])
    if "status" in d:
        w.status = str(d["status"])
    return json_response(asdict(w))


async def reset(request: web.Request) -> web.Response:
    """Back to the seed (ids start again at 1); connected sockets stay connected."""
    standin_of(request).reset()
    return json_response({"ok": True})


async def state(request: web.Request) -> web.Response:
    """A dump of everything, for tests."""
    st = standin_of(request)
    w = st.world
    return json_response({
        "reopenTicket": w.reopen_ticket,
        "tickets": [ticket_json(w, t) for t in sorted(w.tickets.values(), key=lambda t: t.id)],
        "messages": [asdict(m) for m in w.messages.values()],
        "contacts": [asdict(c) for c in w.contacts.values()],
        "whatsapps": [asdict(x) for x in w.whatsapps.values()],
        "logs": [asdict(lg) for lg in w.logs],
        "sockets": len(st.sio.manager.rooms.get("/", {}).get(None, {})),
    })


async def show_ticket(request: web.Request) -> web.Response:
    st = standin_of(request)
    t = services.get_ticket(st.world, seed.TENANT_ID, request.match_info["ticketId"])
    return json_response(ticket_json(st.world, t))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/__sim/inbound", inbound)
    r.add_post("/__sim/group", group_inbound)
    r.add_post("/__sim/bot-transfer", bot_transfer)
    r.add_post("/__sim/auto-close", auto_close)
    r.add_post("/__sim/ack", ack)
    r.add_post("/__sim/settings", settings)
    r.add_post("/__sim/channels/{whatsappId}", channel)
    r.add_post("/__sim/reset", reset)
    r.add_get("/__sim/state", state)
    r.add_get("/__sim/tickets/{ticketId}", show_ticket)
