"""The flow viewer (`whazing-gateway run --web`): after the scenario, the flows that produced
events carry them (comment, mark, metadata) with their deliveries' outcomes; a real headless
Chromium logs in with the password and finds them in mitmweb's flow list; the view stays
bounded by `proxy.max_flows`.

The browser is Debian's /usr/bin/chromium driven over the Chrome DevTools Protocol (its
websocket, with aiohttp): nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
from mitmproxy import io as mio
from mitmproxy.version import VERSION as MITMPROXY_VERSION
import pytest

import tests.test_gateway_e2e as e2e
from tests.harness import GatewayProcess, login, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

PASSWORD = "test-web-password"  # the harness's gateway.yaml web.password
MAX_FLOWS = 300
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EVENT_LINE = re.compile(r"^((?:ticket|message)\.\w+) #(\d+)", re.M)
# mitmweb got authentication in 11.1 (CVE-2025-23217); Python 3.11 gets 11.0.2, which has none:
# there the gateway binds the viewer to loopback and says at start that it is unauthenticated.
VIEWER_AUTH = tuple(int(x) for x in MITMPROXY_VERSION.split(".")[:2]) >= (11, 1)


class CDPError(Exception):
    """An error answer of the DevTools protocol."""

    @property
    def navigating(self) -> bool:
        text = str(self.args[0] if self.args else "")
        return "navigated" in text or "context" in text.lower() or "closed" in text


class Chromium:
    """Headless Chromium with one page, driven over the DevTools Protocol."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self._ids = 0

    async def start(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--window-size=1400,3000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        await wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 60, what="Chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        pages = []
        deadline = time.monotonic() + 30
        while not pages and time.monotonic() < deadline:
            try:
                async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [p for p in await r.json() if p["type"] == "page"]
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        assert pages, "Chromium opened no page"
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def call(self, method: str, **params):
        self._ids += 1
        my_id = self._ids
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise CDPError(msg["error"])
                return msg["result"]

    async def evaluate(self, js: str):
        result = await self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, js: str, timeout: float = 40.0, what: str = "the page"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(js)
            except CDPError as exc:  # the page was navigating (login form submitted, first load)
                if not exc.navigating:
                    raise
                value = None
            if value:
                return value
            await asyncio.sleep(0.25)
        html = await self.evaluate("document.documentElement.outerHTML.slice(0, 3000)")
        raise AssertionError(f"timed out waiting for {what}; page:\n{html}")

    async def stop(self) -> None:
        if getattr(self, "session", None) is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the browser and the helpers it started
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def _api(session: aiohttp.ClientSession, base: str, path: str, *, raw: bool = False):
    async with session.get(base + path, headers={"Authorization": f"Bearer {PASSWORD}"}) as r:
        assert r.status == 200, (path, r.status)
        return await r.read() if raw else await r.json()


@pytest.mark.slow
async def test_viewer_shows_each_event_on_the_flow_that_carried_it(tmp_path):
    """A browser on socket.io long-polling: every push arrives in an HTTP response, so each event
    lands on its own short flow, which can be checked against the bytes it carried."""
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path / "gw", standin.url, rules_yaml(receiver.url()), web=True,
                              env={"WHAZING_OBSERVER_EMAIL": "", "WHAZING_OBSERVER_PASSWORD": ""},
                              settings=f"proxy: {{max_flows: {MAX_FLOWS}}}\n").start()
    web = f"http://127.0.0.1:{gw.web_port}"
    browser = None
    chromium = None
    try:
        browser = await e2e._browser(gw.url, await login(gw.url), "polling")
        day = await play_day(gw.url, step_delay=0.1)
        expected = e2e._expected(day.step("login_agent1").detail["user_id"], day.step("login_agent2").detail["user_id"])
        total = sum(len(v) for v in expected.values())
        await receiver.wait_for(total, timeout=60)

        async with aiohttp.ClientSession() as s:
            async with s.get(web + "/flows") as r:
                if VIEWER_AUTH:
                    assert r.status == 403  # no password, no flows
                else:  # nothing to protect it with: loopback only, and said so at start
                    assert r.status == 200
                    assert "the viewer is UNAUTHENTICATED, so it listens on 127.0.0.1 only" in gw.log()
            flows: list = []

            async def all_delivered() -> bool:
                nonlocal flows
                flows = await _api(s, web, "/flows")
                return sum(f["comment"].count("<- recv: delivered") for f in flows) >= total

            deadline = time.monotonic() + 60  # a patient wait on a loaded machine, not a speed check
            while not await all_delivered():
                assert time.monotonic() < deadline, "not every delivery outcome reached the flows"
                await asyncio.sleep(0.3)
            assert len(flows) < MAX_FLOWS  # nothing evicted yet: every annotated flow is there

            annotated = [f for f in flows if f["comment"]]
            plain = [f for f in flows if not f["comment"]]
            # Annotated: the flows that carried an event first (socket.io polls with pushes, or
            # Whazing REST calls answered before the push), all marked; never a login or the
            # stand-in's control calls, which carry no event.
            assert annotated and all(f["marked"] for f in annotated)
            assert not any(f["marked"] for f in plain)
            kinds = {"socket" if f["request"]["path"].startswith("/socket.io/") else "rest" for f in annotated}
            assert "socket" in kinds
            assert not [f for f in annotated if f["request"]["path"].startswith(("/__sim/", "/auth/"))]
            paths = {f["request"]["path"].partition("?")[0] for f in plain}
            assert {"/auth/login/", "/__sim/inbound", "/__sim/settings", "/auth/logout/"} <= paths

            lines = [line for f in annotated for line in f["comment"].splitlines()]
            events = [m.groups() for line in lines if (m := EVENT_LINE.match(line))]
            want = Counter((ev[0], str(t)) for t, evs in expected.items() for ev in evs)
            assert Counter(events) == want  # each event once, on one flow
            assert "ticket.transferred #1 queueId None->1" in lines
            assert "ticket.accepted #1 status pending->open, userId None->2" in lines
            assert "ticket.created #3 status None->open, userId None->3 (NewTicketUserCreate)" in lines
            assert sum(1 for line in lines if line.startswith("  -> recv: queued [msg_")) == total
            assert sum(1 for line in lines if re.match(r"  <- recv: delivered HTTP 200 in \d+ ms \[msg_", line)) == total

            # The right flows: each annotated flow's own bytes name the tickets of its events.
            for f in annotated:
                carried = f["request"]["path"]
                for part in ("request", "response"):
                    carried += (await _api(s, web, f"/flows/{f['id']}/{part}/content.data", raw=True)).decode()
                for _, ticket in EVENT_LINE.findall(f["comment"]):
                    assert re.search(rf'"(?:id|ticketId)":{ticket}\b|/{ticket}\b', carried), (f["comment"], carried[:500])

            # Details in the metadata (mitmweb shows them in the dump, searchable with ~meta).
            dump = await _api(s, web, "/flows/dump?filter=~marked", raw=True)
            meta_events, meta_deliveries = [], []
            for flow in mio.FlowReader(__import__("io").BytesIO(dump)).stream():
                w = flow.metadata["whazing"]
                meta_events += w["events"]
                meta_deliveries += list(w["deliveries"].values())
            assert Counter((e["type"], str(e["ticket"])) for e in meta_events) == want
            assert len({e["id"] for e in meta_events}) == total
            assert [d["status"] for d in meta_deliveries] == ["delivered"] * total
            assert {d["target"] for d in meta_deliveries} == {"recv"}

            # A real browser: log in with the password, find the annotated flows in the list.
            chromium = await Chromium(tmp_path / "chromium").start()
            await chromium.call("Page.navigate", url=web + "/")
            if VIEWER_AUTH:
                await chromium.wait_for("!!document.querySelector('input[name=token]')", what="the login form")
                try:
                    await chromium.evaluate(f"document.querySelector('input[name=token]').value = {json.dumps(PASSWORD)};"
                                            "document.querySelector('form').submit(); true")
                except CDPError as exc:  # the submit navigates away while the call is answered
                    assert exc.navigating, exc
            comments = await chromium.wait_for(
                "(() => { const c = [...document.querySelectorAll('td.col-comment')]"
                ".map(td => td.textContent).filter(t => t.includes('ticket.')); return c.length ? c : null })()",
                what="an annotated flow in mitmweb's list")
            assert any(re.search(r"ticket\.created #1 status None->pending", c) for c in comments), comments
            assert any("<- recv: delivered HTTP 200" in c for c in comments), comments
            markers = await chromium.evaluate(
                "[...document.querySelectorAll('tr')].filter(tr => (tr.querySelector('td.col-comment')||{}).textContent)"
                ".map(tr => (tr.querySelector('.marker')||{}).textContent || '')")
            assert markers and all(markers), markers  # every annotated row shows its mark

            # The view stays bounded: many more flows than max_flows, the oldest go.
            await browser.disconnect()
            browser = None
            conn = aiohttp.TCPConnector(limit=16)
            async with aiohttp.ClientSession(connector=conn) as burst:
                async def one(i: int) -> None:
                    async with burst.get(f"{gw.url}/__sim/tickets/1?n={i}") as r:
                        await r.read()
                for start in range(0, MAX_FLOWS + 150, 50):
                    await asyncio.gather(*(one(i) for i in range(start, start + 50)))
            flows = await _api(s, web, "/flows")
            assert len(flows) <= MAX_FLOWS
            assert len(flows) >= MAX_FLOWS - 5  # the bound evicts the excess, not everything
            seen = {f["request"]["path"] for f in flows}
            assert f"/__sim/tickets/1?n={MAX_FLOWS + 149}" in seen  # the newest stay
            assert "/auth/login/" not in {p.partition("?")[0] for p in seen}  # the oldest went
    finally:
        if chromium is not None:
            await chromium.stop()
        if browser is not None:
            await browser.disconnect()
        await gw.stop()
        await receiver.stop()
        await standin.stop()
