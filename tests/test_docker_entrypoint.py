"""The image's ENTRYPOINT + CMD run outside Docker: `whazing-gateway run` with the baked
gateway.yaml, configured only through the environment as docker-compose does. It must listen,
proxy, answer /healthz and /readyz, satisfy the Dockerfile's own HEALTHCHECK, log JSON, and
stop cleanly on SIGTERM (what `docker stop` sends)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.test_docker import DOCKERFILE, ROOT, healthcheck_argv, parse_dockerfile

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_upstream() -> tuple[web.AppRunner, int]:
    async def tickets(request: web.Request) -> web.Response:
        return web.json_response({"tickets": [{"id": 1, "status": "open"}], "count": 1,
                                  "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_get("/tickets", tickets)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def wait_for(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen, status: int = 200,
                   timeout: float = 120.0) -> aiohttp.ClientResponse:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        assert proc.poll() is None, f"gateway exited with {proc.returncode}"
        try:
            async with http.get(url) as r:
                last = (r.status, await r.text())
                if r.status == status:
                    return last
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.25)
    raise AssertionError(f"{url} never answered {status}; last: {last}")


async def test_entrypoint_cmd_runs_the_gateway(tmp_path):
    final = {}
    for ins in parse_dockerfile(DOCKERFILE.read_text())[-1]:
        final.setdefault(ins.name, []).append(ins)
    entrypoint = final["ENTRYPOINT"][-1].exec_form()
    cmd = final["CMD"][-1].exec_form()
    assert cmd[-2:] == ["--config", "/app/gateway.yaml"]
    # /app/gateway.yaml in the image is deploy/gateway.docker.yaml of the repository.
    script = Path(sys.executable).parent / entrypoint[0]
    assert script.is_file(), f"{entrypoint[0]} is not installed next to {sys.executable}"
    argv = [str(script), *cmd[:-1], str(ROOT / "deploy" / "gateway.docker.yaml")]

    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    data = tmp_path / "data"
    home = tmp_path / "home"
    home.mkdir()
    upstream, upstream_port = await start_upstream()
    proxy_port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WGW_", "WHAZING_"))},
        "HOME": str(home),  # the image's HOME=/app: mitmproxy keeps its confdir there
        "WHAZING_UPSTREAM": f"http://127.0.0.1:{upstream_port}",
        "WGW_PORT": str(proxy_port),
        "WGW_METRICS_PORT": str(metrics_port),
        "WGW_DATA_DIR": str(data),
        "WGW_RULES_DIR": str(rules),
        "WGW_OBSERVER": "false",
    }
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    ops = f"http://127.0.0.1:{metrics_port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            status, body = await wait_for(http, ops + "/healthz", proc)
            assert json.loads(body)["status"] == "ok"
            status, body = await wait_for(http, ops + "/readyz", proc)
            ready = json.loads(body)
            assert ready["status"] == "ready"
            assert {"proxy", "outbox"} <= set(ready["checks"])

            hc = healthcheck_argv(final)
            r = await asyncio.to_thread(
                subprocess.run, [sys.executable, *hc[1:]], env=env, capture_output=True,
                text=True, timeout=60,
            )
            assert r.returncode == 0, r.stderr

            headers = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJpZCI6MX0.c2lnbmF0dXJl"}
            async with http.get(f"http://127.0.0.1:{proxy_port}/tickets", headers=headers) as resp:
                assert resp.status == 200
                got = await resp.json()
            assert got["count"] == 1 and got["auth"] == headers["Authorization"]

            async with http.get(ops + "/metrics") as resp:
                assert resp.status == 200
                names = {f.name for f in text_string_to_metric_families(await resp.text())}
            assert "whazing_gateway_events" in names
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            rc = None
        await upstream.cleanup()

    log_text = stderr_path.read_text()
    assert rc == 0, f"exit code {rc} after SIGTERM; stderr:\n{log_text[-4000:]}"
    assert (data / "outbox.db").exists()
    records = []
    for line in log_text.splitlines():
        if line.strip():
            records.append(json.loads(line))  # WGW_LOG_FORMAT defaults to json: every line
    assert any(r.get("event") == "ops server listening" and r.get("port") == metrics_port
               for r in records)
    assert all({"timestamp", "level", "event"} <= set(r) for r in records)
    assert "c2lnbmF0dXJl" not in log_text  # the agent's JWT never reaches the log
