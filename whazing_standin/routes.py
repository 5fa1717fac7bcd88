"""Whazing's REST routes (section 2 of the Whazing notes) and its external API.

Every handler: check the bearer, call a service, `await standin.push(emits)`, then answer.
Bodies are Express-style compact JSON, so the same state gives the same bytes.
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import Any

import structlog
from aiohttp import BodyPartReader, web

from whazing_standin import auth, services
from whazing_standin.server import STANDIN_KEY, Standin, dumps
from whazing_standin.services import ServiceError
from whazing_standin.store import (
    contact_json,
    message_json,
    queue_json,
    ticket_json,
    user_full_json,
    whatsapp_json,
)

log = structlog.get_logger(__name__)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def error(message: str, status: int) -> web.Response:
    return json_response({"error": message}, status)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """AppError handling: `{"error": "<code>"}` with the error's status."""
    try:
        return await handler(request)
    except auth.AuthError as exc:
        return error(exc.message, exc.status)
    except ServiceError as exc:
        return error(exc.code, exc.status)
    except (ValueError, TypeError, KeyError) as exc:
        log.info("standin.bad_request", path=request.path, error=repr(exc))
        return error("ERR_BAD_REQUEST", 400)


def standin_of(request: web.Request) -> Standin:
    return request.app[STANDIN_KEY]


def principal(request: web.Request) -> auth.Principal:
    return auth.principal_from_header(request.headers.get("Authorization"))


async def body_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.json()
    return data if isinstance(data, dict) else {}


def _int(v: Any) -> int | None:
    return None if v in (None, "", "null") else int(v)


# ---- auth ------------------------------------------------------------------------------------

async def login(request: web.Request) -> web.Response:
    st = standin_of(request)
    data = await body_json(request)
    email, password = str(data.get("email", "")), str(data.get("password", ""))
    user = next((u for u in st.world.users.values() if u.email == email), None)
    if user is None or user.password != password:
        return error("ERR_INVALID_CREDENTIALS", 401)
    user.isOnline = True
    token = auth.issue_token(user, st.token_ttl)
    online = [{"id": u.id, "name": u.name, "email": u.email}
              for u in st.world.users.values() if u.isOnline and u.tenantId == user.tenantId]
    resp = json_response({
        "token": token, "username": user.name, "email": user.email, "profile": user.profile,
        "status": "online", "userId": user.id, "tenantId": user.tenantId,
        "queues": [queue_json(st.world.queues[q]) for q in user.queues if q in st.world.queues],
        "usuariosOnline": online,
    })
    resp.set_cookie("jrt", auth.issue_refresh_token(user, 7 * 86400), httponly=True, path="/")
    log.info("standin.login", user_id=user.id)
    return resp


async def refresh_token(request: web.Request) -> web.Response:
    """The refresh cookie `jrt` (or, for scripts, the current bearer) gives a new session token."""
    st = standin_of(request)
    user_id: int | None = None
    cookie = request.cookies.get("jrt")
    if cookie:
        try:
            user_id = int(auth.decode_token(cookie, auth.seed.JWT_REFRESH_SECRET)["id"])
        except Exception:
            user_id = None
    if user_id is None and request.headers.get("Authorization"):
        user_id = principal(request).id
    user = st.world.users.get(user_id) if user_id is not None else None
    if user is None:
        return error("ERR_SESSION_EXPIRED", 401)
    resp = json_response({"token": auth.issue_token(user, st.token_ttl)})
    resp.set_cookie("jrt", auth.issue_refresh_token(user, 7 * 86400), httponly=True, path="/")
    return resp


async def logout(request: web.Request) -> web.Response:
    st = standin_of(request)
    data = await body_json(request)
    user = st.world.users.get(_int(data.get("id")) or -1)
    if user is None:
        return error("ERR_USER_NOT_FOUND", 404)
    user.isOnline = False
    return json_response({"message": "USER_LOGOUT"})


# ---- tickets ---------------------------------------------------------------------------------

async def list_tickets(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    w = st.world
    statuses = request.query.getall("status[]", []) or request.query.getall("status", [])
    search = request.query.get("searchParam", "").lower()
    tickets = [t for t in w.tickets.values() if t.tenantId == p.tenantId
               and (not statuses or t.status in statuses)]
    if search:
        tickets = [t for t in tickets if search in (w.contacts[t.contactId].name.lower())
                   or search in w.contacts[t.contactId].number]
    tickets.sort(key=lambda t: (t.updatedAt, t.id), reverse=True)
    page = max(int(request.query.get("pageNumber", "1") or 1), 1)
    chunk = tickets[(page - 1) * 40: page * 40]
    return json_response({"tickets": [ticket_json(w, t) for t in chunk], "count": len(tickets),
                          "hasMore": len(tickets) > page * 40})


async def show_ticket(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    t = services.get_ticket(st.world, p.tenantId, request.match_info["ticketId"])
    return json_response(ticket_json(st.world, t))


async def create_ticket(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        t, emits = services.create_ticket(
            st.world, p.tenantId, contact_id=int(data["contactId"]), status=data.get("status") or "open",
            user_id=_int(data.get("userId")) or p.id,
            whatsapp_id=_int(data.get("whatsappId", data.get("channelId"))), queue_id=_int(data.get("queueId")))
        await st.push(emits)
    return json_response(ticket_json(st.world, t, isActiveDemand=True))


async def update_ticket(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    is_transference = bool(data.get("isTransference")) and data.get("isTransference") not in ("0", "false")
    async with st.lock:
        old_status = services.get_ticket(st.world, p.tenantId, request.match_info["ticketId"]).status
        fields: dict[str, Any] = {k: data[k] for k in ("status", "userId", "queueId") if k in data}
        t, emits = services.update_ticket(st.world, p.tenantId, request.match_info["ticketId"], fields,
                                          is_transference=is_transference, request_user=p.id)
        await st.push(emits)
        body = ticket_json(st.world, t, **({"isTransference": True} if is_transference else {}))
    wapp = st.world.whatsapps.get(t.whatsappId)
    if t.status == "closed" and old_status != "closed" and wapp and wapp.ratingEnabled and wapp.timeRating > 0:
        log.info("standin.rating_hold", ticket_id=t.id, seconds=wapp.timeRating)
        await asyncio.sleep(wapp.timeRating)
    return json_response(body)


async def delete_ticket(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    async with st.lock:
        services.delete_ticket(st.world, p.tenantId, request.match_info["ticketId"])
    return json_response({"message": "ticket deleted"})


def _ids(data: dict[str, Any]) -> list[Any]:
    raw = data.get("ticketIds", data.get("tickets", data.get("ids", [])))
    return [x.get("id") if isinstance(x, dict) else x for x in raw]


async def close_tickets(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        done, emits = services.close_tickets(st.world, p.tenantId, _ids(data), p.id)
        await st.push(emits)
    return json_response({"message": "Tickets closed", "tickets": done})


async def delete_tickets(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        for tid in _ids(data):
            services.delete_ticket(st.world, p.tenantId, tid)
    return json_response({"message": "Tickets deleted"})


async def ticket_logs(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    t = services.get_ticket(st.world, p.tenantId, request.match_info["ticketId"])
    logs = [{"id": lg.id, "ticketId": lg.ticketId, "userId": lg.userId, "type": lg.type,
             "createdAt": lg.createdAt,
             "user": {"id": lg.userId, "name": st.world.users[lg.userId].name}
             if lg.userId in st.world.users else None}
            for lg in st.world.logs if lg.ticketId == t.id]
    return json_response(logs)


# ---- messages --------------------------------------------------------------------------------

async def list_messages(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    t = services.get_ticket(st.world, p.tenantId, request.match_info["ticketId"])
    msgs = [message_json(st.world, m) for m in st.world.messages.values() if m.ticketId == t.id]
    return json_response({"messages": msgs, "messagesOffLine": [], "ticket": ticket_json(st.world, t),
                          "count": len(msgs), "hasMore": False})


def _media_type(content_type: str) -> str:
    major = (content_type or "application/octet-stream").split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


async def _read_send_form(st: Standin, request: web.Request, file_field: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """JSON or multipart; the `file_field` parts are kept in memory and served under /public/."""
    if not (request.content_type or "").startswith("multipart/"):
        return await body_json(request), []
    fields: dict[str, Any] = {}
    files: list[tuple[str, str]] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):  # a nested multipart: not something Whazing sends
            continue
        if part.filename and part.name == file_field:
            content = await part.read()
            name = f"{len(st.media) + 1:04d}-{part.filename}"
            ctype = part.headers.get("Content-Type") or mimetypes.guess_type(part.filename)[0] or ""
            st.media[name] = (ctype, bytes(content))
            files.append((name, ctype))
        elif part.filename:
            await part.read()  # a file under another field name: not a media of this call
        elif part.name:
            fields[part.name] = await part.text()
    return fields, files


async def send_message(request: web.Request) -> web.Response:
    """Answers an empty 200: the message itself is the `chat:create` push."""
    st, p = standin_of(request), principal(request)
    async with st.lock:
        t = services.get_ticket(st.world, p.tenantId, request.match_info["ticketId"])
        data, files = await _read_send_form(st, request, "medias")
        emits: list[services.Emit] = []
        if files:
            for name, ctype in files:
                _, e = services.send_message(st.world, p.tenantId, t, body=data.get("body") or name.split("-", 1)[1],
                                             user_id=p.id, media_type=_media_type(ctype),
                                             media_url=f"{st.backend_url}/public/{name}")
                emits += e
        else:
            _, emits = services.send_message(st.world, p.tenantId, t, body=str(data.get("body", "")), user_id=p.id)
        await st.push(emits)
    return web.Response(status=200)


async def delete_message(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    async with st.lock:
        services.delete_message(st.world, p.tenantId, request.match_info["messageId"])
    return web.Response(status=200)


async def edit_message(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        emits = services.edit_message(st.world, p.tenantId, request.match_info["messageId"], str(data.get("body", "")))
        await st.push(emits)
    return web.Response(status=200)


async def react_message(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        emits = services.react_message(st.world, p.tenantId, request.match_info["messageId"],
                                       str(data.get("reaction", data.get("emoji", ""))), p.id)
        await st.push(emits)
    return web.Response(status=200)


async def forward_messages(request: web.Request) -> web.Response:
    principal(request)
    return web.Response(status=200)


async def public_file(request: web.Request) -> web.Response:
    ctype, content = standin_of(request).media.get(request.match_info["name"], (None, None))
    if content is None:
        raise web.HTTPNotFound()
    return web.Response(body=content, content_type=ctype or "application/octet-stream")


# ---- contacts, queues, channels, users, api configs --------------------------------------------

async def list_contacts(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    cs = [contact_json(c) for c in st.world.contacts.values() if c.tenantId == p.tenantId]
    return json_response({"contacts": cs, "count": len(cs), "hasMore": False})


async def show_contact(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    c = st.world.contacts.get(int(request.match_info["contactId"]))
    if c is None or c.tenantId != p.tenantId:
        return error("ERR_NO_CONTACT_FOUND", 404)
    return json_response(contact_json(c))


async def create_contact(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    number = "".join(ch for ch in str(data.get("number", "")) if ch.isdigit())
    if not number:
        return error("ERR_NO_NUMBER", 400)
    async with st.lock:
        if services.find_contact(st.world, p.tenantId, number):
            return error("ERR_DUPLICATED_CONTACT", 400)
        c, emits = services.create_or_update_contact(st.world, p.tenantId, number, data.get("name"),
                                                     email=str(data.get("email") or ""))
        await st.push(emits)
    return json_response(contact_json(c))


async def update_contact(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    data = await body_json(request)
    async with st.lock:
        c, emits = services.update_contact(st.world, p.tenantId, int(request.match_info["contactId"]), data)
        await st.push(emits)
    return json_response(contact_json(c))


async def delete_contact(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    async with st.lock:
        emits = services.delete_contact(st.world, p.tenantId, int(request.match_info["contactId"]))
        await st.push(emits)
    return json_response({"message": "Contact deleted"})


async def list_queues(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    return json_response([queue_json(q) for q in st.world.queues.values() if q.tenantId == p.tenantId])


async def list_whatsapps(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    return json_response([whatsapp_json(w) for w in st.world.whatsapps.values() if w.tenantId == p.tenantId])


async def show_whatsapp(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    w = st.world.whatsapps.get(int(request.match_info["whatsappId"]))
    if w is None or w.tenantId != p.tenantId:
        return error("ERR_NO_WAPP_FOUND", 404)
    return json_response(whatsapp_json(w))


async def list_users(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    us = [user_full_json(u) for u in st.world.users.values() if u.tenantId == p.tenantId]
    return json_response({"users": us, "count": len(us), "hasMore": False})


async def list_api_configs(request: web.Request) -> web.Response:
    st, p = standin_of(request), principal(request)
    return json_response([{"id": a.id, "name": a.name, "token": a.token, "sessionId": a.sessionId,
                           "isActive": a.isActive, "userId": a.userId, "tenantId": a.tenantId}
                          for a in st.world.api_configs.values() if a.tenantId == p.tenantId])


def add_routes(app: web.Application) -> None:
    from whazing_standin import external

    r = app.router
    for path in ("/auth/login", "/auth/login/"):
        r.add_post(path, login)
    for path in ("/auth/refresh_token", "/auth/refresh_token/"):
        r.add_post(path, refresh_token)
    for path in ("/auth/logout", "/auth/logout/"):
        r.add_post(path, logout)
    r.add_get("/tickets", list_tickets)
    r.add_post("/tickets", create_ticket)
    r.add_post("/tickets/close-tickets", close_tickets)
    r.add_post("/tickets/del-tickets", delete_tickets)
    r.add_get("/tickets/{ticketId}", show_ticket)
    r.add_put("/tickets/{ticketId}", update_ticket)
    r.add_delete("/tickets/{ticketId}", delete_ticket)
    r.add_get("/tickets/{ticketId}/logs", ticket_logs)
    r.add_post("/messages/edit/{messageId}", edit_message)
    r.add_post("/messages/reactions/{messageId}", react_message)
    r.add_get("/messages/{ticketId}", list_messages)
    r.add_post("/messages/{ticketId}", send_message)
    r.add_delete("/messages/{messageId}", delete_message)
    r.add_post("/forward-messages/", forward_messages)
    r.add_get("/public/{name}", public_file)
    for base in ("/contacts", "/contacts/"):
        r.add_get(base, list_contacts)
        r.add_post(base, create_contact)
    r.add_get("/contacts/{contactId}", show_contact)
    r.add_put("/contacts/{contactId}", update_contact)
    r.add_delete("/contacts/{contactId}", delete_contact)
    for base in ("/queue", "/queue/"):
        r.add_get(base, list_queues)
    for base in ("/whatsapp", "/whatsapp/"):
        r.add_get(base, list_whatsapps)
    r.add_get("/whatsapp/{whatsappId}", show_whatsapp)
    for base in ("/users", "/users/"):
        r.add_get(base, list_users)
    for base in ("/api-config", "/api-config/"):
        r.add_get(base, list_api_configs)
    external.add_routes(app)
