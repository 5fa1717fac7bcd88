"""`whazing-gateway replay`: a capture recorded from the stand-in's scenario, replayed through
decode -> infer -> route, names exactly the deliveries the live gateway made."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import GatewayProcess, RawBrowser, login, rules_yaml
from tests.receivers import Receiver
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin


@pytest.mark.slow
async def test_replay_of_a_recorded_scenario_names_the_live_deliveries(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    capture = tmp_path / "day.flows"
    gw = GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url(), fmt="whazing"),
                        env={"WHAZING_OBSERVER_EMAIL": ""}, extra_args=["--set", f"save_stream_file={capture}"])
    await gw.start()
    try:
        browser = await RawBrowser(gw.url, await login(gw.url)).start()
        await play_day(gw.url)
        live = await receiver.wait_for(33, timeout=60)
        await browser.stop()  # the websocket flow is written to the capture when it ends
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
    assert capture.exists() and capture.stat().st_size > 0

    out = subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "replay", str(capture), "--config", str(gw.config),
                          "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == len(live) == 33
    live_by_id = {r.webhook_id: r for r in live}
    assert {d["headers"]["webhook-id"] for d in lines} == set(live_by_id)
    for d in lines:
        r = live_by_id[d["headers"]["webhook-id"]]
        assert d["target"] == "recv" and d["url"] == receiver.url()
        assert d["headers"]["X-N8N-API-KEY"] == "***"  # present, never printed
        assert r.headers["X-N8N-API-KEY"] == "test-api-key-123"
        if d["event"].startswith("message."):
            assert d["body"] == r.json()  # the same native body, field for field
        else:
            assert d["body"]["Type"] == r.json()["Type"] and d["body"]["ticket"]["id"] == r.json()["ticket"]["id"]
    # the same order per ticket as live
    def per_ticket(items):
        out = {}
        for wid, body in items:
            out.setdefault(body["ticket"]["id"], []).append(wid)
        return out
    assert per_ticket((d["headers"]["webhook-id"], d["body"]) for d in lines) == \
        per_ticket((r.webhook_id, r.json()) for r in live)


@pytest.mark.slow
def test_replay_refuses_a_broken_capture(tmp_path):
    bad = tmp_path / "bad.flows"
    bad.write_bytes(b"this is not a mitmproxy capture")
    cfg = tmp_path / "gateway.yaml"
    (tmp_path / "rules").mkdir()
    cfg.write_text("rules_dir: rules\n")
    out = subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "replay", str(bad), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot read capture" in out.stderr and out.stdout == ""
