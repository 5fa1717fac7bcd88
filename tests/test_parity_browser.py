"""A real browser enforcing CORS: headless Chromium on a page of another origin makes the SPA's
first calls (login, the router guard's `/tenants/date/`, settings, the user) with `fetch`, both
preflighted, against the stand-in directly and through a real gateway. A CORS answer the browser
does not accept makes `fetch` fail, so this is the SPA's login as the browser sees it."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from tests.harness import GatewayProcess, rules_yaml
from tests.receivers import Receiver
from tests.test_flow_viewer import Chromium
from whazing_standin import seed
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow

PAGE = "<!doctype html><title>spa</title><p>another origin</p>"

SPA_CALLS = """
(async (api) => {
  const out = {};
  const json = {'Content-Type': 'application/json'};
  let r = await fetch(api + '/auth/login/', {method: 'POST', headers: json,
                                             body: JSON.stringify({email: %(email)s, password: %(password)s})});
  const login = await r.json();
  out.login = r.status;
  const auth = {'Authorization': 'Bearer ' + login.token};
  r = await fetch(api + '/tenants/date/', {headers: auth});
  out.dueDate = (await r.json()).dueDate;
  r = await fetch(api + '/settings/', {headers: auth});
  out.settings = (await r.json()).map(s => s.key);
  r = await fetch(api + '/users/' + login.userId, {headers: auth});
  out.user = (await r.json()).email;
  r = await fetch(api + '/tickets?status[]=open', {headers: auth});
  out.tickets = r.status;
  out.origin = location.origin;
  return JSON.stringify(out);
})(%(api)s)
"""


async def test_spa_calls_from_another_origin_pass_cors_directly_and_through_the_gateway(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()),
                              env={"WHAZING_OBSERVER_EMAIL": ""}).start()
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    page_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    browser = await Chromium(tmp_path / "chromium").start()
    try:
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=page_url)
        await browser.wait_for("document.title === 'spa'", what="the page of another origin")
        for api in (standin.url, gw.url):
            js = SPA_CALLS % {"api": json.dumps(api), "email": json.dumps(seed.ADMIN_EMAIL),
                              "password": json.dumps(seed.PASSWORD)}
            out = json.loads(await browser.evaluate(js))
            assert out["origin"] == page_url.rstrip("/") != api  # really cross-origin
            assert out["login"] == 200 and out["tickets"] == 200, (api, out)
            assert out["dueDate"] and out["user"] == seed.ADMIN_EMAIL
            assert "ReopenTicket" in out["settings"] and "NotViewTicketsChatBot" in out["settings"]
    finally:
        await browser.stop()
        await runner.cleanup()
        await gw.stop()
        await receiver.stop()
        await standin.stop()
