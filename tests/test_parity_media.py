"""Whazing's "media in base64": a rule with `media_base64: true` delivers the exact bytes of an
uploaded file, fetched from the upstream with the observer's login (the stand-in keeps files
private here); a file over `media.max_bytes` is left out with a note in the body and the log;
a rule without the toggle keeps `mediaBase64: null` and the native keys only."""

from __future__ import annotations

import asyncio
import base64
import os
import textwrap

import aiohttp
import pytest

from tests.harness import GatewayProcess, login, wait_until
from tests.receivers import Receiver
from whazing_standin import seed
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow

LIMIT = 64 * 1024


def _rules(url_b64: str, url_plain: str) -> str:
    return textwrap.dedent(f"""\
        targets:
          - {{name: b64, url: {url_b64}, kind: generic}}
          - {{name: plain, url: {url_plain}, kind: generic}}
        channels:
          - name: with media
            channel: "*"
            targets: [b64]
            events: [message.sent, message.received]
            media_base64: true
          - name: without
            channel: "*"
            targets: [plain]
            events: [message.sent, message.received]
        """)


async def _send_file(http, base: str, token: str, ticket_id: int, name: str, content: bytes) -> None:
    form = aiohttp.FormData()
    form.add_field("medias", content, filename=name, content_type="application/octet-stream")
    form.add_field("body", name)
    async with http.post(f"{base}/messages/{ticket_id}", data=form, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()


async def test_media_in_base64_exact_bytes_and_over_the_limit_skipped(tmp_path):
    standin = await start_standin()
    b64, plain = await Receiver().start(), await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, _rules(b64.url(), plain.url()),
                              settings=f"media: {{max_bytes: {LIMIT}, timeout: 10s}}\n",
                              env={"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL,
                                   "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(standin.url + "/__sim/settings", json={"privateFile": True}) as r:
                assert (await r.json())["privateFile"] is True
            await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
            async with http.post(gw.url + "/__sim/inbound", json={"whatsappId": 1, "number": "5511977770000",
                                                                  "name": "Rita", "body": "me manda o arquivo"}) as r:
                tid = (await r.json())["ticketId"]
            token = await login(gw.url, seed.AGENT1_EMAIL)
            small, big = os.urandom(20_000), os.urandom(LIMIT + 1)
            await _send_file(http, gw.url, token, tid, "proposta.bin", small)
            await _send_file(http, gw.url, token, tid, "video.bin", big)
            await b64.wait_for(3, timeout=30)
            await plain.wait_for(3, timeout=30)
            await asyncio.sleep(1.0)

            async with http.get(standin.url + "/__sim/state") as r:
                media_urls = [m["mediaUrl"] for m in (await r.json())["messages"] if m["mediaUrl"]]
            async with http.get(media_urls[0]) as r:
                assert r.status == 403  # private: the gateway could only read it with a login

        by_name = {req.json()["messageBody"]: req.json() for req in b64.requests}
        assert set(by_name) == {"me manda o arquivo", "proposta.bin", "video.bin"}
        assert by_name["me manda o arquivo"]["mediaBase64"] is None  # text: nothing to encode
        assert "mediaBase64Note" not in by_name["me manda o arquivo"]
        got = by_name["proposta.bin"]
        assert base64.b64decode(got["mediaBase64"], validate=True) == small
        assert "mediaBase64Note" not in got
        skipped = by_name["video.bin"]
        assert skipped["mediaBase64"] is None and skipped["mediaUrl"] == media_urls[1]
        assert "over the limit" in skipped["mediaBase64Note"] and str(LIMIT) in skipped["mediaBase64Note"]
        assert list(skipped)[-1] == "mediaBase64Note" and list(skipped)[:-1] == list(got)  # native keys, note last
        notes = [r for r in gw.log_records() if r.get("event") == "media.skipped"]
        assert len(notes) == 1 and notes[0]["media_url"] == media_urls[1] and notes[0]["limit"] == LIMIT

        for req in plain.requests:  # the rule without the toggle: null, and nothing fetched for it
            body = req.json()
            assert body["mediaBase64"] is None and "mediaBase64Note" not in body
        assert len(plain.requests) == 3
    finally:
        await gw.stop()
        await b64.stop()
        await plain.stop()
        await standin.stop()


async def _upstream(handler) -> tuple[aiohttp.web.AppRunner, str]:
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_fetcher_reads_from_the_upstream_renews_its_login_and_says_why_it_skips():
    from aiohttp import web

    from whazing_gateway.upstream.media import MediaFetcher, upstream_url

    logins: list[str] = []
    seen: list[tuple[str, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/auth/login/":
            logins.append((await request.json())["email"])
            return web.json_response({"token": f"tok{len(logins)}"})
        seen.append((request.path_qs, request.headers.get("Authorization")))
        if request.path == "/public/a.bin":  # the first token has "expired"
            if request.headers.get("Authorization") != "Bearer tok2":
                return web.Response(status=401)
            return web.Response(body=b"\x00\x01payload")
        if request.path == "/public/hang.bin":
            await asyncio.sleep(5)
        return web.Response(status=404)

    runner, url = await _upstream(handler)
    try:
        f = MediaFetcher(url, max_bytes=1024, timeout_s=1.0, email="obs@x", password="pw")
        # the media URL names another host (the public name): the bytes still come from the upstream
        media = await f.fetch("https://whazing.example.com/public/a.bin")
        assert base64.b64decode(media.base64) == b"\x00\x01payload" and media.note is None and media.size == 9
        assert logins == ["obs@x", "obs@x"] and seen == [("/public/a.bin", "Bearer tok1"), ("/public/a.bin", "Bearer tok2")]
        missing = await f.fetch("http://x/public/nope.bin?v=1")
        assert missing.base64 is None and missing.note == "media not included: fetch failed (HTTP 404)"
        assert seen[-1] == ("/public/nope.bin?v=1", "Bearer tok2")
        hung = await f.fetch("http://x/public/hang.bin")
        assert hung.base64 is None and "timed out after 1 s" in hung.note
        assert upstream_url("http://up:3000/", "/public/x.png") == "http://up:3000/public/x.png"
        down = await MediaFetcher("http://127.0.0.1:9", timeout_s=2.0).fetch("http://x/public/a.bin")
        assert down.base64 is None and down.note.startswith("media not included: fetch failed (")
    finally:
        await runner.cleanup()
