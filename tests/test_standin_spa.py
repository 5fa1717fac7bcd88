"""What Whazing's own SPA needs of the stand-in (notes, section 8): CORS like Express's `cors()`
with its defaults, directly and through a real gateway, and every route it calls at login, on
navigation, on the tickets page and on the dashboard, with the shape it reads. Plus the shape of
the package itself: no import cycles, nothing from the gateway."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

from tests.harness import GatewayProcess, rules_yaml
from tests.receivers import Receiver
from tests.standin_schemas import TICKET, check
from whazing_standin import seed
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

ROOT = Path(__file__).resolve().parents[1]
SPA_ORIGIN = "http://localhost:8081"  # the SPA is served from another origin than the API
PREFLIGHT = {"Origin": SPA_ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.fixture
async def standin():
    srv = await start_standin()
    yield srv
    await srv.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def _token(http, url: str, email: str = seed.ADMIN_EMAIL) -> str:
    async with http.post(url + "/auth/login/", json={"email": email, "password": seed.PASSWORD},
                         headers={"Origin": SPA_ORIGIN}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
        return (await r.json())["token"]


def _preflight_answer(r: aiohttp.ClientResponse) -> dict:
    return {"status": r.status, **{k: r.headers.get(k) for k in (
        "Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
        "Vary", "Access-Control-Allow-Credentials")}}


def _headers(r: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """Every header as sent, in order, but the clock."""
    return [(k.decode(), v.decode()) for k, v in r.raw_headers if k.lower() != b"date"]


EXPRESS_CORS_PREFLIGHT = {
    "status": 204, "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET,HEAD,PUT,PATCH,POST,DELETE",
    "Access-Control-Allow-Headers": "authorization,content-type", "Vary": "Access-Control-Request-Headers",
    "Access-Control-Allow-Credentials": None,
}


async def test_preflight_and_simple_requests_get_the_cors_defaults(standin, http):
    for path in ("/auth/login/", "/tickets/1", "/no/such/route"):
        async with http.options(standin.url + path, headers=PREFLIGHT) as r:
            assert _preflight_answer(r) == EXPRESS_CORS_PREFLIGHT, path
            assert await r.read() == b""
    async with http.options(standin.url + "/tickets", headers={"Origin": SPA_ORIGIN,
                                                               "Access-Control-Request-Method": "GET"}) as r:
        assert r.status == 204 and "Access-Control-Allow-Headers" not in r.headers  # nothing asked, nothing echoed
    token = await _token(http, standin.url)
    async with http.get(standin.url + "/tickets", headers={"Origin": SPA_ORIGIN, "Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    for path, status in (("/tickets", 403), ("/nope", 404)):  # errors carry it too (cors runs first)
        async with http.get(standin.url + path, headers={"Origin": SPA_ORIGIN}) as r:
            assert r.status == status and r.headers["Access-Control-Allow-Origin"] == "*", path


@pytest.mark.slow
async def test_gateway_passes_the_preflight_untouched(tmp_path, standin, http):
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()),
                              env={"WHAZING_OBSERVER_EMAIL": ""}).start()
    try:
        for path in ("/auth/login/", "/messages/1", "/tenants/date/"):
            async with http.options(standin.url + path, headers=PREFLIGHT) as direct:
                want = (_preflight_answer(direct), _headers(direct), await direct.read())
            async with http.options(gw.url + path, headers=PREFLIGHT) as proxied:
                got = (_preflight_answer(proxied), _headers(proxied), await proxied.read())
            assert got == want and want[0] == EXPRESS_CORS_PREFLIGHT, path
        token = await _token(http, gw.url)  # the SPA's login, cross-origin, through the gateway
        async with http.get(gw.url + "/tenants/date/", headers={"Origin": SPA_ORIGIN,
                                                                 "Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
            assert "dueDate" in await r.json()
    finally:
        await gw.stop()
        await receiver.stop()


async def _get(http, url: str, token: str | None, method: str = "GET", **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kw) as r:
        assert r.status == 200, (method, url, r.status, await r.text())
        assert r.content_type == "application/json", url
        return await r.json()


async def test_login_and_navigation_routes(standin, http):
    u = standin.url
    token = await _token(http, u)
    assert (await _get(http, u + "/title", None)) == {"title": seed.TITLE}
    public = await _get(http, u + "/public-settings/undefined", None)  # what the login page asks for
    assert {"allowSignup", "habilitasmtp", "whatsappnumber"} <= set(public)
    due = await _get(http, u + "/tenants/date/", token)
    days = (datetime.fromisoformat(due["dueDate"].replace("Z", "+00:00")) - datetime.now(timezone.utc)).days
    assert days > 3  # not due: the router guard lets every navigation through
    async with http.get(u + "/tenants/date/") as r:
        assert r.status == 403  # like every authenticated route

    settings = await _get(http, u + "/settings/", token)
    assert all(set(s) >= {"key", "value"} and isinstance(s["value"], str) for s in settings)
    keys = {s["key"] for s in settings}
    assert keys >= {"NotViewTicketsQueueUndefined", "NotViewTicketsChatBot", "NotViewAssignedTickets",
                    "DirectTicketsToWallets", "ignoreGroupMsg", "userCreation", "autoClose", "autoCloseTime",
                    "autoPending", "autoPendingTime", "TicketsLimitOpen", "TicketsLimitPending",
                    "TicketsLimitClosed", "ReopenTicket", "spyticket", "hidetab", "groupnotification"}
    assert {s["key"]: s["value"] for s in settings}["ReopenTicket"] == "disabled"
    assert (await _get(http, u + "/settings/ReopenTicket", token, "PUT", json={"value": "enabled"}))["value"] == "enabled"
    async with http.get(u + "/__sim/state") as r:
        assert (await r.json())["reopenTicket"] is True  # the setting is the world's flag
    general = await _get(http, u + "/settingsgeneral/", token)
    assert isinstance(general, list) and {g["key"] for g in general} >= {"allowSignup"}

    me = await _get(http, f"{u}/users/{seed.ADMIN_ID}", token)
    assert (me["id"], me["email"], me["profile"], me["tenantId"]) == (seed.ADMIN_ID, seed.ADMIN_EMAIL, "admin", seed.TENANT_ID)
    assert [q["queue"] for q in me["queues"]] == list(seed.QUEUES.values()) and me["configs"] == {}
    saved = await _get(http, f"{u}/users/{seed.ADMIN_ID}/configs", token, "PUT", json={"isDark": True})
    assert saved["isDark"] is True
    assert (await _get(http, f"{u}/users/{seed.ADMIN_ID}", token))["configs"] == {"isDark": True}
    async with http.get(f"{u}/users/999", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 404 and (await r.json()) == {"error": "ERR_NO_USER_FOUND"}

    assert await _get(http, u + "/tags/?isActive=true", token) == []
    assert await _get(http, u + "/fastreply/", token) == []
    assert await _get(http, u + "/farewellMessages", token) == {"farewellMessages": []}
    assert await _get(http, u + "/tasks/summary", token, "POST", json={"owner": "Admin"}) == {"delayed": 0, "venceHoje": 0}
    assert await _get(http, u + "/chat-interno/count/mensagens", token) == {"count": 0}
    hours = await _get(http, u + "/tenants/business-hours/", token)
    assert [h["day"] for h in hours] == list(range(7)) and all({"type", "hr1", "hr4", "label"} <= set(h) for h in hours)


async def test_static_files_the_spa_asks_the_api_for(standin, http):
    async with http.get(standin.url + "/manifest.json") as r:
        assert r.status == 200 and (await r.json())["name"] == seed.TITLE
    for name in ("login.png", "favicon-16x16.png", "favicon.ico"):
        async with http.get(f"{standin.url}/public/logos/{name}") as r:
            assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")


async def test_dashboard_routes_count_the_scripted_day(standin, http):
    day = await play_day(standin.url, session=http, step_delay=0.01)
    u = standin.url
    token = await _token(http, u)
    times = await _get(http, u + "/statistics-tickets-times", token)
    assert len(times) == 1
    row = times[0]
    assert (row["qtd_total_atendimentos"], row["qtd_demanda_ativa"], row["qtd_demanda_receptiva"]) == (4, 1, 3)
    assert row["new_contacts"] == 6 and isinstance(row["tma"], dict) and isinstance(row["tme"], dict)
    assert await _get(http, u + "/statistics-tickets-channels", token) == [{"label": "whatsapp", "qtd": 4}]
    evo = await _get(http, u + "/statistics-tickets-evolution-channels", token)
    assert sum(e["qtd"] for e in evo) == 4 and all({"dt_referencia", "label", "qtd"} <= set(e) for e in evo)
    period = await _get(http, u + "/statistics-tickets-evolution-by-period", token)
    assert sum(e["qtd"] for e in period) == 4 and all({"label", "qtd"} <= set(e) for e in period)
    per_user = {r["email"]: r for r in await _get(http, u + "/statistics-tickets-per-users-detail", token)}
    assert per_user[seed.AGENT1_EMAIL]["qtd_resolvidos"] == 2  # B and D, closed at the end of the day
    assert all({"qtd_pendentes", "qtd_em_atendimento", "qtd_resolvidos", "qtd_por_usuario"} <= set(r)
               for r in per_user.values())
    queues = {q["label"]: q["qtd"] for q in await _get(http, u + "/statistics-tickets-queue", token)}
    assert queues == {"Financeiro": 1, "Vendas": 1, "Sem fila": 2}
    assert await _get(http, u + "/dash-tickets-queues", token) == []  # all closed by the end of the day
    r = await http.post(u + "/__sim/inbound", json={"whatsappId": 1, "number": "5511955550000", "body": "oi"})
    tid = (await r.json())["ticketId"]
    live = await _get(http, u + "/dash-tickets-queues", token)
    assert [t["id"] for t in live] == [tid] and check(live[0], TICKET) == []
    assert day.tickets == {"A": 1, "B": 2, "C": 3, "D": 4}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_standin_modules_import_no_cycle_and_nothing_of_the_gateway():
    pkg = ROOT / "whazing_standin"
    modules = {p.stem: p for p in pkg.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        imported = _imports(path)
        assert not any(i.split(".")[0] == "whazing_gateway" for i in imported), name
        graph[name] = {i.split(".")[1] for i in imported if i.startswith("whazing_standin.")
                       and i.split(".")[1] in modules} - {name}

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import cycle: {' -> '.join(stack + (node,))}"
        for nxt in graph[node]:
            visit(nxt, stack + (node,))

    for name in graph:
        visit(name, ())
    assert graph["app"] >= {"routes", "spa", "external", "control"}  # registration in one place
    for route_module in ("routes", "spa", "external", "control"):
        assert not graph[route_module] & {"routes", "spa", "external", "control", "app", "server"}, route_module
