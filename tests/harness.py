"""Real processes and peers for end-to-end tests: the gateway (as users run it), a raw
Engine.IO browser that records frames byte for byte, and small helpers.

Nothing here is a mock: the gateway is `whazing-gateway run` (or plain `mitmdump -s`) in a
subprocess, in reverse mode, in front of a real stand-in server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.receivers import free_port

REPO = Path(__file__).resolve().parent.parent


def rules_yaml(target_url: str, *, fmt: str = "envelope", name: str = "recv", extra: str = "") -> str:
    """One target receiving every event type of every channel (the tests' all-seeing rule)."""
    return textwrap.dedent(f"""\
        targets:
          - name: {name}
            url: {target_url}
            format: {fmt}
            kind: generic
            api_key: test-api-key-123
            secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
        channels:
          - name: everything
            channel: "*"
            targets: [{name}]
            events: [message.received, message.sent, ticket.created, ticket.transferred,
                     ticket.closed, ticket.reopened, ticket.accepted]
            open: true
            pending: true
            groups: true
        """) + extra


class GatewayProcess:
    """A gateway subprocess with its own config folder, ports and log file."""

    def __init__(self, workdir: Path, upstream: str, rules: str, *, web: bool = False,
                 env: dict[str, str] | None = None, settings: str = "", plain_mitmdump: bool = False,
                 extra_args: list[str] | None = None) -> None:
        self.extra_args = list(extra_args or [])
        self.workdir = Path(workdir)
        self.port = free_port()
        self.metrics_port = free_port()
        self.web_port = free_port()
        self.upstream = upstream
        self.web = web
        self.plain_mitmdump = plain_mitmdump
        self.env = {**os.environ, **(env or {})}
        (self.workdir / "rules").mkdir(parents=True, exist_ok=True)
        (self.workdir / "rules" / "test.yaml").write_text(rules)
        self.config = self.workdir / "gateway.yaml"
        self.config.write_text(textwrap.dedent(f"""\
            listen: {{host: 127.0.0.1, port: {self.port}}}
            upstream: {upstream}
            rules_dir: rules
            data_dir: data
            metrics: {{host: 127.0.0.1, port: {self.metrics_port}}}
            web: {{host: 127.0.0.1, port: {self.web_port}, password: test-web-password}}
            log: {{format: json, level: info}}
            """) + settings)
        self.log_path = self.workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def command(self) -> list[str]:
        if self.plain_mitmdump:
            mitmdump = str(Path(sys.executable).parent / "mitmdump")
            return [mitmdump, "-q", "-s", str(REPO / "addons" / "gateway.py"),
                    "--mode", f"reverse:{self.upstream}", "--listen-host", "127.0.0.1", "-p", str(self.port),
                    "--set", f"whazing_config={self.config}"]
        cmd = [sys.executable, "-m", "whazing_gateway.cli", "run", "--config", str(self.config)]
        return cmd + (["--web"] if self.web else []) + self.extra_args

    async def start(self, timeout: float = 40.0) -> "GatewayProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with s.get(self.metrics_url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"gateway not ready after {timeout}s:\n{self.log()}")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.metrics_url + "/metrics") as r:
                return await r.text()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("event") == "event"]

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RawBrowser:
    """A socket.io client written against the wire, recording every server frame as bytes.

    It speaks Engine.IO v4 over a websocket (or polling) like socket.io-client 3: answers pings,
    sends the CONNECT with `{token}`. Frames are kept exactly as received, so two browsers (one
    direct, one through the gateway) can be compared byte for byte.
    """

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.frames: list[str] = []
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()

    async def start(self) -> "RawBrowser":
        self._session = aiohttp.ClientSession()
        ws = await self._session.ws_connect(
            self.base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        self._ws = ws
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 20)
        return self

    async def _run(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            text = msg.data
            if text.startswith("0"):
                await self._ws.send_str("40" + json.dumps({"token": self.token}))
            elif text == "2":
                await self._ws.send_str("3")
                continue
            elif text.startswith("40"):
                self.connected.set()
            self.frames.append(text)

    def events(self) -> list[str]:
        """The event frames (`42...`): what Whazing pushes; identical for every client of a tenant."""
        return [f for f in self.frames if f.startswith("42")]

    async def stop(self) -> None:
        if self._task is not None:
            await self._ws.close()
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()


async def login(base_url: str, email: str = "admin@whazing.test", password: str = "123456") -> str:
    async with aiohttp.ClientSession() as s:
        async with s.post(base_url + "/auth/login/", json={"email": email, "password": password}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["token"]


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
