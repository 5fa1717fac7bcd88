"""Pass-through: what goes through the gateway arrives unchanged (bodies, statuses, headers but
hop-by-hop), uploads and downloads included, large bodies streamed; checked against a real
gateway process in reverse mode."""

from __future__ import annotations

import hashlib
import os

import aiohttp
from multidict import CIMultiDict
import pytest

from tests.echo_upstream import start_echo
from tests.harness import GatewayProcess, login, rules_yaml
from tests.receivers import Receiver
from whazing_standin.scenario import CATALOG, play_day
from whazing_standin.server import start_standin

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "date", "server"}


async def _get(session, url, token):
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        headers = [(k.lower(), v) for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP]
        return r.status, headers, await r.read()


@pytest.mark.slow
async def test_rest_bodies_uploads_and_media_are_byte_identical(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url())).start()
    try:
        await play_day(gw.url)
        token = await login(standin.url)
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            paths = ["/tickets?status[]=open&status[]=pending&status[]=closed&showAll=true", "/tickets/1",
                     "/tickets/2", "/messages/1", "/messages/4", "/contacts", "/queue", "/whatsapp",
                     "/tickets/999", "/nope"]
            for path in paths:
                direct = await _get(s, standin.url + path, token)
                proxied = await _get(s, gw.url + path, token)
                assert proxied == direct, path
            # the multipart upload went through intact: the stored media is the file sent
            _, _, body = await _get(s, standin.url + "/messages/1", token)
            import json
            media = [m["mediaUrl"] for m in json.loads(body)["messages"] if m.get("mediaUrl")]
            assert media, "the scenario's file reply left no media"
            path = "/public/" + media[0].rsplit("/public/", 1)[1]
            for base in (standin.url, gw.url):
                status, _, content = await _get(s, base + path, token)
                assert status == 200 and content == CATALOG
            # an auth refusal is passed through as Whazing shaped it
            refused = []
            for base in (standin.url, gw.url):
                async with s.get(base + "/tickets") as r:
                    refused.append((r.status, await r.read()))
            assert refused[0] == refused[1] and refused[0][0] in (401, 403)
            assert "error" in json.loads(refused[0][1])
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()


@pytest.mark.slow
async def test_large_bodies_stream_and_headers_pass_untouched(tmp_path):
    runner, upstream = await start_echo()
    gw = await GatewayProcess(tmp_path, upstream, rules_yaml("http://127.0.0.1:9/x"),
                              settings="proxy: {stream_large_bodies: 256k}\n").start()
    try:
        big = os.urandom(6 * 1024 * 1024)
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.post(gw.url + "/tickets", data=big,
                              headers={"X-Echo-Content-Type": "application/json", "Content-Type": "application/json"}) as r:
                got = await r.read()
            assert r.status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
            sent = [("Origin", "https://whazing.example.com"), ("Authorization", "Bearer abc.def.ghi"),
                    ("X-Custom", "one"), ("X-Custom", "two"), ("Cookie", "jrt=xyz"),
                    ("Accept-Language", "pt-BR,pt;q=0.9")]
            async with s.get(gw.url + "/headers", headers=CIMultiDict(sent)) as r:
                seen = (await r.json())["headers"]
            seen_pairs = [(k.lower(), v) for k, v in seen]
            for k, v in sent:
                assert (k.lower(), v) in seen_pairs
            assert [v for k, v in seen_pairs if k == "x-custom"] == ["one", "two"]
        # the gateway is still alive and nothing failed in it
        text = await gw.metrics()
        assert 'stage="hook_' not in text
    finally:
        await gw.stop()
        await runner.cleanup()


@pytest.mark.slow
async def test_compressed_large_socket_frame_is_inspected_and_forwarded_intact(tmp_path):
    """Whazing's server deflates frames of 32 KB and more (permessage-deflate): the gateway must
    read the decompressed push and forward the frame intact."""
    import json

    runner, upstream = await start_echo()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, upstream, rules_yaml(receiver.url())).start()
    try:
        body = "Segue o contrato: " + "cláusula " * 7000  # ~63 KB of text
        frame = "42" + json.dumps(["1:ticketList", {"type": "chat:create", "payload": {
            "id": "3EB0BIGFRAME", "body": body, "fromMe": False, "ticketId": 77, "mediaType": "chat",
            "ticket": {"id": 77, "status": "open", "queueId": 2, "whatsappId": 1, "isGroup": False,
                       "contact": {"id": 5, "name": "Ana", "number": "5511999990005"}}}}], ensure_ascii=False)
        assert len(frame.encode()) > 60_000
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(gw.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                    compress=15, max_msg_size=0) as ws:
                assert ws.compress == 15  # permessage-deflate negotiated through the proxy
                await ws.send_str(frame)
                echoed = await ws.receive(timeout=20)
                assert echoed.data == frame
        [got] = await receiver.wait_for(1, timeout=30)
        delivered = got.json()
        assert delivered["type"] == "message.received" and delivered["data"]["message"]["body"] == body
    finally:
        await gw.stop()
        await receiver.stop()
        await runner.cleanup()
