"""The external API under `/v1/api/external/{apiId}` (what n8n flows call), with its own token.

Sending answers at once with "Message added to queue" and the `chat:create` follows a moment
after the response, as the real backend sends asynchronously; every other call pushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from whazing_standin import auth, services
from whazing_standin.routes import _int, _media_type, _read_send_form, body_json, error, json_response, standin_of
from whazing_standin.server import Standin
from whazing_standin.store import ApiConfig, contact_json, ticket_json

log = structlog.get_logger(__name__)

SEND_DELAY = 0.02


def api_config(request: web.Request, token: str | None = None) -> ApiConfig:
    st = standin_of(request)
    cfg = st.world.api_configs.get(request.match_info["apiId"])
    header = f"Bearer {token}" if token else request.headers.get("Authorization")
    if cfg is None:
        auth.check_api_token(header, "")  # same 403 as a wrong token: no probing of api ids
        raise auth.AuthError("Invalid token.", 403)
    auth.check_api_token(header, cfg.token)
    if not cfg.isActive:
        raise auth.AuthError("ERR_API_CONFIG_INACTIVE", 403)
    return cfg


def _number(v: Any) -> str:
    return "".join(ch for ch in str(v or "") if ch.isdigit())


def _ticket_for_number(st: Standin, cfg: ApiConfig, number: str) -> services.Ticket | None:
    c = services.find_contact(st.world, cfg.tenantId, number)
    return services.open_ticket_of(st.world, cfg.tenantId, c.id) if c else None


async def _send_later(st: Standin, cfg: ApiConfig, data: dict[str, Any], files: list[tuple[str, str]]) -> None:
    """The queued send: find or open the ticket, then `chat:create` (sendType "API")."""
    await asyncio.sleep(SEND_DELAY)
    try:
        async with st.lock:
            w = st.world
            emits: list[services.Emit] = []
            if data.get("ticketId"):
                t = services.get_ticket(w, cfg.tenantId, data["ticketId"])
            else:
                contact, emits = services.create_or_update_contact(w, cfg.tenantId, _number(data.get("number")))
                t, info = services.find_or_create_ticket(w, cfg.tenantId, contact, cfg.sessionId)
                if info["isCreated"]:
                    emits.append(services.emit(cfg.tenantId, "ticket:update", ticket_json(w, t, isCreated=True)))
            t.apiConfig = {"externalKey": data.get("externalKey"), "apiId": cfg.id}
            body = str(data.get("body") or "")
            if files:
                for name, ctype in files:
                    _, e = services.send_message(w, cfg.tenantId, t, body=body or name.split("-", 1)[1],
                                                 user_id=None, media_type=_media_type(ctype),
                                                 media_url=f"{st.backend_url}/public/{name}", send_type="API")
                    emits += e
            else:
                _, e = services.send_message(w, cfg.tenantId, t, body=body, user_id=None, send_type="API")
                emits += e
            await st.push(emits)
    except services.ServiceError as exc:
        log.info("standin.external_send_failed", error=exc.code)


async def send(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data, files = await _read_send_form(st, request, "media")
    if not data.get("ticketId") and not _number(data.get("number")):
        return error("ERR_NO_NUMBER", 400)
    asyncio.get_running_loop().create_task(_send_later(st, cfg, data, files))
    return json_response({"message": "Message added to queue"})


async def send_params(request: web.Request) -> web.Response:
    st = standin_of(request)
    cfg = api_config(request, request.query.get("bearertoken"))
    data = {k: request.query.get(k) for k in ("body", "number", "externalKey")}
    if not _number(data.get("number")):
        return error("ERR_NO_NUMBER", 400)
    asyncio.get_running_loop().create_task(_send_later(st, cfg, data, []))
    return json_response({"message": "Message added to queue"})


async def _job_update(request: web.Request, fields: tuple[str, ...]) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    async with st.lock:
        t, emits = services.job_update(st.world, cfg.tenantId, data["ticketId"],
                                       {k: data[k] for k in fields if k in data})
        await st.push(emits)
    return json_response(ticket_json(st.world, t))


async def update_queue(request: web.Request) -> web.Response:
    """A transfer with no `isTransference`: only a diff against the known state shows it."""
    return await _job_update(request, ("queueId",))


async def update_ticket_info(request: web.Request) -> web.Response:
    return await _job_update(request, ("status", "userId", "queueId"))


async def create_ticket(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    number = _number(data.get("number"))
    if not number:
        return error("ERR_NO_NUMBER", 400)
    async with st.lock:
        contact, emits = services.create_or_update_contact(st.world, cfg.tenantId, number, data.get("name"))
        t, e = services.create_ticket(st.world, cfg.tenantId, contact_id=contact.id,
                                      status=data.get("status") or "pending", user_id=_int(data.get("userId")),
                                      whatsapp_id=cfg.sessionId, queue_id=_int(data.get("queueId")),
                                      is_created=True)
        await st.push(emits + e)
    return json_response(ticket_json(st.world, t, isCreated=True))


async def show_ticket(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    t = _ticket_for_number(st, cfg, _number(data.get("number")))
    if t is None:
        return error("ERR_NO_TICKET_FOUND", 404)
    return json_response(ticket_json(st.world, t))


async def show_all_tickets(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    c = services.find_contact(st.world, cfg.tenantId, _number(data.get("number")))
    ts = [ticket_json(st.world, t) for t in st.world.tickets.values() if c and t.contactId == c.id]
    return json_response(ts)


async def get_ticket(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    return json_response(ticket_json(st.world, services.get_ticket(st.world, cfg.tenantId, request.match_info["ticketId"])))


async def create_contact(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    number = _number(data.get("number"))
    if not number:
        return error("ERR_NO_NUMBER", 400)
    async with st.lock:
        c, emits = services.create_or_update_contact(st.world, cfg.tenantId, number, data.get("name"),
                                                     email=str(data.get("email") or ""))
        await st.push(emits)
    return json_response(contact_json(c))


async def show_contact(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    c = services.find_contact(st.world, cfg.tenantId, _number(data.get("number")))
    if c is None:
        return error("ERR_NO_CONTACT_FOUND", 404)
    return json_response(contact_json(c))


async def update_contact(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    data = await body_json(request)
    c = services.find_contact(st.world, cfg.tenantId, _number(data.get("number")))
    if c is None:
        return error("ERR_NO_CONTACT_FOUND", 404)
    async with st.lock:
        c, emits = services.update_contact(st.world, cfg.tenantId, c.id,
                                           {k: data.get(k) for k in ("name", "email") if k in data})
        await st.push(emits)
    return json_response(contact_json(c))


async def accepted(request: web.Request) -> web.Response:
    """updatetag / updatecrm: accepted and ignored (tags and CRM are not modelled)."""
    api_config(request)
    return json_response({"message": "ok"})


async def status_channel(request: web.Request) -> web.Response:
    st, cfg = standin_of(request), api_config(request)
    w = st.world.whatsapps.get(cfg.sessionId)
    return json_response({"status": w.status if w else "DISCONNECTED", "name": w.name if w else None})


def add_routes(app: web.Application) -> None:
    base = "/v1/api/external/{apiId}"
    r = app.router
    r.add_post(base, send)
    r.add_post(base + "/", send)
    r.add_get(base + "/params/", send_params)
    r.add_get(base + "/params", send_params)
    r.add_post(base + "/updatequeue", update_queue)
    r.add_post(base + "/updateticketinfo", update_ticket_info)
    r.add_post(base + "/createticket", create_ticket)
    r.add_post(base + "/showticket", show_ticket)
    r.add_post(base + "/showticketchatbot", show_ticket)
    r.add_post(base + "/showallticket", show_all_tickets)
    r.add_get(base + "/ticket/{ticketId}", get_ticket)
    r.add_post(base + "/createcontact", create_contact)
    r.add_post(base + "/contact", show_contact)
    r.add_post(base + "/updatecontact", update_contact)
    r.add_post(base + "/updatetag", accepted)
    r.add_post(base + "/updatecrm", accepted)
    r.add_get(base + "/statuschannel", status_channel)
