"""`whazing-gateway deliveries test TARGET`: Whazing's test button body through the outbox of a
running gateway, sent by its worker to a real receiver, signed like every delivery."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest
from standardwebhooks import Webhook

from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the one rules_yaml gives the target


def _cli(gw: GatewayProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "deliveries", "--config", str(gw.config),
                           *argv], cwd=gw.workdir, capture_output=True, text=True, timeout=60)


async def test_deliveries_test_reaches_a_receiver_signed(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url("/hook"), fmt="whazing"),
                              env={"WHAZING_OBSERVER_EMAIL": ""}).start()
    try:
        done = await asyncio.to_thread(_cli, gw, "test", "recv", "--wait", "30")
        assert done.returncode == 0, done.stdout + done.stderr
        delivery_id = re.match(r"(msg_\w+) queued for recv\n", done.stdout).group(1)
        assert "delivered after 1 attempt(s): HTTP 200" in done.stdout
        await wait_until(lambda: receiver.requests, 10, what="the test webhook")
        req = receiver.requests[0]
        assert req.path == "/hook" and req.webhook_id == delivery_id
        body = Webhook(SECRET).verify(req.body, req.headers)  # raises unless the signature is right
        assert list(body) == ["event", "origin", "timestamp"]
        assert body["event"] == "test" and body["origin"] == "webhook-config"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
        assert req.headers["X-N8N-API-KEY"] == "test-api-key-123"  # the target's own headers too
        assert req.headers["Content-Type"] == "application/json"

        shown = await asyncio.to_thread(_cli, gw, "show", delivery_id, "--json")
        item = json.loads(shown.stdout)
        assert (item["target"], item["event_type"], item["status"]) == ("recv", "test", "delivered")

        unknown = await asyncio.to_thread(_cli, gw, "test", "nope")
        assert unknown.returncode == 1 and "unknown target 'nope'" in unknown.stderr
        assert len(receiver.requests) == 1
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()


async def test_deliveries_test_reports_a_failing_target(tmp_path):
    standin = await start_standin()
    receiver = await Receiver(then=400).start()  # a 4xx other than 404/429: final at once
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()),
                              env={"WHAZING_OBSERVER_EMAIL": ""}).start()
    try:
        done = await asyncio.to_thread(_cli, gw, "test", "recv", "--wait", "30", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "dead" and result["last_status"] == 400
        assert len(receiver.requests) == 1 and receiver.requests[0].json()["event"] == "test"
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
