"""CI smoke test of an installed (not editable) gateway, run from the current folder.

A user's `whazing-gateway check` and `run` against the Whazing stand-in (`python -m
whazing_standin`), with a real HTTP receiver in this process: one inbound WhatsApp message must
become a signed webhook, delivered by the delivery worker, which must stay alive. Only the
installed console script and packages are used; the folder may hold a stray `addons/` package.

    python .ci/smoke_run.py    (exit 0 = every check passed)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import ClientSession, web

SECRET = "whsec_" + base64.b64encode(b"ci-smoke-secret-0123456789abcdef").decode()
OBSERVER = {"WHAZING_OBSERVER_EMAIL": "admin@whazing.test", "WHAZING_OBSERVER_PASSWORD": "123456"}
TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signed(headers, body: bytes) -> bool:
    """Standard Webhooks: HMAC-SHA256 of `id.timestamp.body` under the whsec_ key."""
    msg = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    mac = hmac.new(base64.b64decode(SECRET.removeprefix("whsec_")), msg, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers.get("webhook-signature", "").split())


def log_records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


async def wait_for(cond, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not await cond():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"FAIL: exited with {proc.returncode} while waiting for {what}\n"
                             + (log.read_text(errors="replace")[-4000:] if log else ""))
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: no {what} within {TIMEOUT_S:.0f} s\n"
                             + (log.read_text(errors="replace")[-4000:] if log else ""))
        await asyncio.sleep(0.2)


async def main() -> int:
    here = Path.cwd()
    exe = shutil.which("whazing-gateway")
    if exe is None:
        raise SystemExit("FAIL: no whazing-gateway on PATH")
    received: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    recv_port, standin_port, port, metrics_port = free_port(), free_port(), free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", recv_port).start()

    (here / "rules").mkdir(exist_ok=True)
    (here / "rules" / "ci.yaml").write_text(
        "targets:\n"
        f"  - {{name: ci, url: 'http://127.0.0.1:{recv_port}/hook', secrets: ['{SECRET}'], format: envelope}}\n"
        "channels:\n"
        "  - {channel: '*', targets: ci, events: [all], open: true, pending: true}\n")
    (here / "gateway.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: http://127.0.0.1:{standin_port}\n"
        "rules_dir: rules\ndata_dir: data\n"
        f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n"
        "log: {format: json, level: info}\n")

    check = subprocess.run([exe, "check", "--config", "gateway.yaml"], capture_output=True, text=True, timeout=60)
    print(f"whazing-gateway check: exit {check.returncode}: {check.stdout.strip()} {check.stderr.strip()}")
    if check.returncode != 0:
        return 1

    standin_log, gateway_log = here / "standin.log", here / "gateway.log"
    standin = subprocess.Popen([sys.executable, "-m", "whazing_standin", "--port", str(standin_port)],
                               stdout=standin_log.open("wb"), stderr=subprocess.STDOUT)
    gateway = subprocess.Popen([exe, "run", "--config", "gateway.yaml"], env={**os.environ, **OBSERVER},
                               stdout=gateway_log.open("wb"), stderr=subprocess.STDOUT)
    try:
        async with ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as r:
                        return r.status == 200
                except OSError:
                    return False

            def logged(event: str) -> bool:
                return any(r.get("event") == event for r in log_records(gateway_log))

            async def started() -> bool:
                return await ready() and logged("observer connected") and logged("deliver_worker.started")

            await wait_for(started, "ready gateway with its observer and delivery worker", gateway, gateway_log)
            async with http.post(f"http://127.0.0.1:{port}/__sim/inbound",
                                 json={"whatsappId": 1, "number": "5511988880001", "name": "Maria",
                                       "body": "hello from CI"}) as r:
                assert r.status == 200, await r.text()
                ticket = (await r.json())["ticketId"]

            async def delivered() -> bool:
                return any(json.loads(b).get("type") == "message.received" for _, b in received)

            await wait_for(delivered, "message.received webhook at the receiver", gateway, gateway_log)
        records = log_records(gateway_log)
        spawned = [r for r in records if r.get("event") == "deliver_worker.spawned"]
        died = [r for r in records if str(r.get("event", "")).startswith("deliver_worker.died")]
        worker_pid = spawned[-1]["pid"] if spawned else None
        try:
            os.kill(worker_pid, 0) if worker_pid else None
            worker_alive = worker_pid is not None
        except ProcessLookupError:
            worker_alive = False
        types = sorted({json.loads(b).get("type") for _, b in received})
        all_signed = all(signed(h, b) for h, b in received)
        print(f"whazing-gateway run: {len(received)} webhooks for ticket {ticket} ({', '.join(types)}), "
              f"signatures {'valid' if all_signed else 'INVALID'}; delivery worker pid {worker_pid} "
              f"{'alive' if worker_alive else 'NOT alive'}, spawned {len(spawned)}x, died {len(died)}x")
        ok = all_signed and worker_alive and len(spawned) == 1 and not died
    finally:
        for proc in (gateway, standin):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        gateway_rc = await asyncio.to_thread(gateway.wait, 30)
        await asyncio.to_thread(standin.wait, 30)
        await runner.cleanup()
    print(f"whazing-gateway run: stopped with exit {gateway_rc}")
    if not ok or gateway_rc != 0:
        print(gateway_log.read_text(errors="replace")[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
