"""An upstream that answers with exactly what it was sent, for pass-through tests.

HTTP: the response body is the request body, with the Content-Type and Content-Encoding the
client asked for in `X-Echo-Content-Type` / `X-Echo-Content-Encoding` (so malformed gzip,
non-JSON "JSON" and the like come back from the server side, where the gateway inspects them).
Websocket `/socket.io/`: every frame the client sends is sent back as a server frame.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("X-Echo-Content-Type", "application/octet-stream"),
               "X-Echo-Method": request.method, "X-Echo-Path": request.path_qs}
    if "X-Echo-Content-Encoding" in request.headers:
        headers["Content-Encoding"] = request.headers["X-Echo-Content-Encoding"]
    resp = web.Response(body=body, headers=headers, status=int(request.headers.get("X-Echo-Status", "200")))
    resp.enable_compression = lambda *a, **k: None  # never re-encode what we echo
    return resp


async def _ws(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return await _echo(request)
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _headers(request: web.Request) -> web.Response:
    """The request headers as the upstream received them, in order, repeated names included."""
    return web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/headers", _headers)
    app.router.add_route("*", "/socket.io/", _ws)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def start_echo() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
