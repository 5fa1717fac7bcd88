"""Real aiohttp webhook receivers on 127.0.0.1 for tests and the bench.

A `Receiver` records every request (headers, body, time) and answers from a script: the first
calls get the scripted replies, the rest get `then`. Replies: an int status, `Reply(status,
headers)`, or `Hang(seconds)` (answer nothing for that long). Examples:

    Receiver()                                   # always 200
    Receiver(script=[500, 500])                  # fails twice, then 200
    Receiver(script=[Reply(429, {"Retry-After": "1"})])
    Receiver(script=[Hang(30)])                  # hangs past the sender's timeout once
    Receiver(then=410) / Receiver(then=404)      # always Gone / Not Found

Run as a program (`python tests/receivers.py --port-file F --log F`) it is a plain 200 receiver
that appends `webhook-id<TAB>arrival unix time<TAB>body` lines to a log file (for the crash
test and the bench, where the sender lives in another process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True)
class Hang:
    seconds: float


Script = Union[int, Reply, Hang]


@dataclass(frozen=True)
class Received:
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")

    def json(self) -> Any:
        return json.loads(self.body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """One aiohttp server answering every POST path from the script."""

    def __init__(self, script: Sequence[Script] = (), then: Script = 200) -> None:
        self.script = list(script)
        self.then = then
        self.requests: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._changed = asyncio.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/webhook") -> str:
        return self.base + path

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "Receiver":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        index = len(self.requests)
        self.requests.append(Received(request.path, dict(request.headers), body, time.time()))
        self._changed.set()
        reply = self.script[index] if index < len(self.script) else self.then
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            return web.Response(status=200)
        if isinstance(reply, int):
            reply = Reply(reply)
        return web.Response(status=reply.status, headers=dict(reply.headers), text=reply.body)

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least `count` requests arrived (polling, no fixed sleeps)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"receiver got {len(self.requests)} requests, expected {count}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return list(self.requests)


# ---- program mode: a logging 200 receiver in its own process ---------------------------------


async def _serve(port_file: str, log_path: str) -> None:
    out = open(log_path, "a", buffering=1)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        out.write(f"{request.headers.get('webhook-id', '')}\t{time.time():.6f}\t{body.decode()}\n")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.replace(port_file + ".tmp", port_file)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a logging webhook receiver on 127.0.0.1")
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args.port_file, args.log))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
