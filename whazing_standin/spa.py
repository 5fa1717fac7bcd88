"""The routes Whazing's own SPA (build 2.7.3) calls at login, on every navigation and on the
tickets page and dashboard (section 8 of the Whazing notes), with the shapes it reads.

Most answer from the seed (settings, business hours) or count the world (statistics); none
pushes anything. Without them the real frontend stops at login or on its router guard.
"""

from __future__ import annotations

import base64
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from whazing_standin import seed
from whazing_standin.http_helpers import body_json, error, json_response, principal, standin_of
from whazing_standin.store import Ticket, World, queue_json, ticket_json

# A 1x1 transparent PNG: the logos and favicons the SPA asks the API host for.
LOGO_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
WEEKDAYS = ("Domingo", "Segunda-Feira", "Terça-Feira", "Quarta-Feira", "Quinta-Feira", "Sexta-Feira", "Sábado")
STARTED = datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _duration(seconds: float) -> dict[str, int]:
    """A Postgres interval as `pg` hands it to JSON: only the non-zero parts."""
    s = int(seconds)
    parts = {"hours": s // 3600, "minutes": s % 3600 // 60, "seconds": s % 60}
    return {k: v for k, v in parts.items() if v}


def _tickets(w: World, tenant_id: int) -> list[Ticket]:
    return [t for t in w.tickets.values() if t.tenantId == tenant_id]


def settings_list(w: World, tenant_id: int) -> list[dict[str, Any]]:
    values = {**w.settings, "ReopenTicket": "enabled" if w.reopen_ticket else "disabled"}
    return [{"key": k, "value": v, "tenantId": tenant_id} for k, v in values.items()]


def user_json(w: World, user_id: int) -> dict[str, Any] | None:
    """The user as `GET /users/:id` gives it: what the login answered, plus its UI configs."""
    u = w.users.get(user_id)
    if u is None:
        return None
    return {"id": u.id, "name": u.name, "email": u.email, "profile": u.profile, "tenantId": u.tenantId,
            "isOnline": u.isOnline, "status": "online" if u.isOnline else "offline", "configs": dict(u.configs),
            "queues": [queue_json(w.queues[q]) for q in u.queues if q in w.queues]}


# ---- no login needed --------------------------------------------------------------------------

async def title(request: web.Request) -> web.Response:
    return json_response({"title": seed.TITLE})


async def public_settings(request: web.Request) -> web.Response:
    """The login page reads `allowSignup`, `habilitasmtp` and `whatsappnumber` (it asks for key `undefined`)."""
    return json_response(dict(standin_of(request).world.general_settings))


async def manifest(request: web.Request) -> web.Response:
    return json_response({
        "name": seed.TITLE, "short_name": seed.TITLE, "start_url": "/", "display": "standalone",
        "background_color": "#ffffff", "theme_color": "#027be3",
        "icons": [{"src": "/public/logos/pwa-192x192.png", "sizes": "192x192", "type": "image/png"}],
    })


async def logo(request: web.Request) -> web.Response:
    return web.Response(body=LOGO_PNG, content_type="image/png")


# ---- logged in --------------------------------------------------------------------------------

async def tenant_due_date(request: web.Request) -> web.Response:
    """The router guard's check on every navigation: a due date in the past sends it to billing."""
    p = principal(request)
    due = (STARTED + timedelta(days=seed.PLAN_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    return json_response({"id": p.tenantId, "status": "active", "name": "Stand-in", "dueDate": _iso(due)})


async def list_settings(request: web.Request) -> web.Response:
    p = principal(request)
    return json_response(settings_list(standin_of(request).world, p.tenantId))


async def update_setting(request: web.Request) -> web.Response:
    p = principal(request)
    w = standin_of(request).world
    key, value = request.match_info["key"], str((await body_json(request)).get("value", ""))
    if key == "ReopenTicket":
        w.reopen_ticket = value == "enabled"
    elif key in w.settings:
        w.settings[key] = value
    else:
        return error("ERR_NO_SETTING_FOUND", 404)
    return json_response({"key": key, "value": value, "tenantId": p.tenantId})


async def list_general_settings(request: web.Request) -> web.Response:
    principal(request)
    return json_response([{"key": k, "value": v} for k, v in standin_of(request).world.general_settings.items()])


async def show_user(request: web.Request) -> web.Response:
    p = principal(request)
    found = user_json(standin_of(request).world, int(request.match_info["userId"]))
    if found is None or found["tenantId"] != p.tenantId:
        return error("ERR_NO_USER_FOUND", 404)
    return json_response(found)


async def update_user_configs(request: web.Request) -> web.Response:
    """The SPA saves UI preferences (filters, dark mode) here; `GET /users/:id` gives them back."""
    p = principal(request)
    w = standin_of(request).world
    u = w.users.get(int(request.match_info["userId"]))
    if u is None or u.tenantId != p.tenantId:
        return error("ERR_NO_USER_FOUND", 404)
    u.configs.update(await body_json(request))
    return json_response(dict(u.configs))


async def empty_list(request: web.Request) -> web.Response:
    """tags, fast replies: the stand-in models none, so an empty list (what a new tenant has)."""
    principal(request)
    return json_response([])


async def farewell_messages(request: web.Request) -> web.Response:
    principal(request)
    return json_response({"farewellMessages": []})


async def tasks_summary(request: web.Request) -> web.Response:
    principal(request)
    return json_response({"delayed": 0, "venceHoje": 0})


async def internal_chat_count(request: web.Request) -> web.Response:
    principal(request)
    return json_response({"count": 0})


async def business_hours(request: web.Request) -> web.Response:
    principal(request)
    return json_response([{"day": d, "label": WEEKDAYS[d], "type": "O", "hr1": "08:00", "hr2": "12:00",
                           "hr3": "14:00", "hr4": "18:00"} for d in range(7)])


# ---- dashboard: counts over the world ---------------------------------------------------------

async def tickets_and_times(request: web.Request) -> web.Response:
    p = principal(request)
    w = standin_of(request).world
    ts = _tickets(w, p.tenantId)
    active = sum(1 for t in ts if t.isActiveDemand)
    closed = [t for t in ts if t.status == "closed"]
    tma = (sum((_ts(t.updatedAt) - _ts(t.createdAt)).total_seconds() for t in closed) / len(closed)) if closed else 0
    return json_response([{
        "qtd_total_atendimentos": len(ts), "qtd_demanda_ativa": active, "qtd_demanda_receptiva": len(ts) - active,
        "new_contacts": sum(1 for c in w.contacts.values() if c.tenantId == p.tenantId),
        "tma": _duration(tma), "tme": {},
    }])


async def tickets_channels(request: web.Request) -> web.Response:
    p = principal(request)
    counts = Counter("whatsapp" for _ in _tickets(standin_of(request).world, p.tenantId))
    return json_response([{"label": k, "qtd": v} for k, v in counts.items()])


async def tickets_evolution_channels(request: web.Request) -> web.Response:
    p = principal(request)
    counts = Counter((t.createdAt[:10], "whatsapp") for t in _tickets(standin_of(request).world, p.tenantId))
    return json_response([{"dt_referencia": d, "label": lb, "qtd": n} for (d, lb), n in sorted(counts.items())])


async def tickets_evolution_by_period(request: web.Request) -> web.Response:
    p = principal(request)
    counts = Counter(t.createdAt[:10] for t in _tickets(standin_of(request).world, p.tenantId))
    return json_response([{"dt_referencia": d, "label": f"{d[8:10]}/{d[5:7]}", "qtd": n}
                          for d, n in sorted(counts.items())])


async def tickets_per_users(request: web.Request) -> web.Response:
    p = principal(request)
    w = standin_of(request).world
    ts = _tickets(w, p.tenantId)
    out = []
    for u in (u for u in w.users.values() if u.tenantId == p.tenantId):
        mine = [t for t in ts if t.userId == u.id]
        out.append({"email": u.email, "name": u.name, "user_id": u.id,
                    "qtd_pendentes": sum(1 for t in mine if t.status == "pending"),
                    "qtd_em_atendimento": sum(1 for t in mine if t.status == "open"),
                    "qtd_resolvidos": sum(1 for t in mine if t.status == "closed"),
                    "qtd_por_usuario": len(mine), "tme": {}, "tma": {}})
    return json_response(out)


async def tickets_queue(request: web.Request) -> web.Response:
    p = principal(request)
    w = standin_of(request).world
    counts = Counter(t.queueId for t in _tickets(w, p.tenantId))
    return json_response([{"label": w.queues[q].queue if q in w.queues else "Sem fila", "qtd": n}
                          for q, n in counts.items()])


async def dash_tickets_queues(request: web.Request) -> web.Response:
    """The queue panel: the tickets still in play, each with its queue."""
    p = principal(request)
    w = standin_of(request).world
    return json_response([ticket_json(w, t) for t in _tickets(w, p.tenantId) if t.status in ("open", "pending")])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/title", title)
    r.add_get("/public-settings/{key}", public_settings)
    r.add_get("/manifest.json", manifest)
    r.add_get("/public/logos/{name}", logo)
    for path in ("/tenants/date", "/tenants/date/"):
        r.add_get(path, tenant_due_date)
    for path in ("/settings", "/settings/"):
        r.add_get(path, list_settings)
    r.add_put("/settings/{key}", update_setting)
    for path in ("/settingsgeneral", "/settingsgeneral/"):
        r.add_get(path, list_general_settings)
    r.add_get("/users/{userId}", show_user)
    r.add_put("/users/{userId}/configs", update_user_configs)
    for path in ("/tags", "/tags/", "/fastreply", "/fastreply/"):
        r.add_get(path, empty_list)
    for path in ("/farewellMessages", "/farewellMessages/"):
        r.add_get(path, farewell_messages)
    r.add_post("/tasks/summary", tasks_summary)
    r.add_get("/chat-interno/count/mensagens", internal_chat_count)
    for path in ("/tenants/business-hours", "/tenants/business-hours/"):
        r.add_get(path, business_hours)
    r.add_get("/statistics-tickets-times", tickets_and_times)
    r.add_get("/statistics-tickets-channels", tickets_channels)
    r.add_get("/statistics-tickets-evolution-channels", tickets_evolution_channels)
    r.add_get("/statistics-tickets-evolution-by-period", tickets_evolution_by_period)
    r.add_get("/statistics-tickets-per-users-detail", tickets_per_users)
    r.add_get("/statistics-per-users", tickets_per_users)
    r.add_get("/statistics-tickets-queue", tickets_queue)
    r.add_get("/dash-tickets-queues", dash_tickets_queues)

