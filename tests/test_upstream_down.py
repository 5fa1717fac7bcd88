"""Upstream down: clients get `502 Bad Gateway` with a short body (not an empty reply) and
/readyz names the unreachable upstream; once Whazing is back, both recover. Real gateway
process, real stand-in started late on the port the gateway was told about."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiohttp
import pytest

from tests.harness import GatewayProcess, rules_yaml
from tests.receivers import free_port
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow


async def _wait_alive(gw: GatewayProcess, timeout: float = 40.0) -> None:
    """Like `wait_ready`, but /healthz: /readyz is meant to fail here."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert gw.proc is not None and gw.proc.poll() is None, gw.log()
            try:
                async with s.get(gw.metrics_url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"gateway not alive after {timeout}s:\n{gw.log()}")

async def test_unreachable_upstream_gives_502_and_readyz_says_so(tmp_path):
    port = free_port()
    gw = GatewayProcess(tmp_path, f"http://127.0.0.1:{port}", rules_yaml("http://127.0.0.1:9/hook"))
    gw._log = open(gw.log_path, "ab")

    gw.proc = subprocess.Popen(gw.command(), cwd=gw.workdir, env=gw.env, stdout=gw._log, stderr=subprocess.STDOUT)
    standin = None
    try:
        await _wait_alive(gw)
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.url + "/tickets/1") as r:
                body = await r.read()
                assert r.status == 502, (r.status, body)
                assert b"Bad Gateway" in body and len(body) < 1024
            async with s.get(gw.metrics_url + "/readyz") as r:
                ready = await r.json()
                assert r.status == 503
                assert "upstream" in ready["failing"]
                assert f"127.0.0.1:{port}" in ready["checks"]["upstream"]["detail"]
                assert "unreachable" in ready["checks"]["upstream"]["detail"]
            # Whazing comes back on the same port: the same gateway serves it and is ready again.
            standin = await start_standin(port=port)
            await gw.wait_ready(20)
            async with s.get(gw.url + "/tickets") as r:
                assert r.status in (401, 403)  # Whazing's own answer to a request without a token
    finally:
        await gw.stop()
        if standin is not None:
            await standin.stop()
