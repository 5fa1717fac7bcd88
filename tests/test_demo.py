"""`whazing-gateway demo` as a newcomer runs it: the real command in a subprocess (stand-in, a
real gateway subprocess, the printing receiver, the scenario), judged by its output and exit code.

The expected numbers come from the scenario's meaning (tests/test_gateway_e2e.py `_expected`):
33 deliveries with the "everything" rule, A 15, B 9, C 3, D 6.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import standardwebhooks

import tests.test_gateway_e2e as e2e
from tests.harness import REPO, wait_until
from tests.receivers import free_port
from whazing_gateway.deliver import signing
from whazing_standin import demo, seed

EXPECTED = e2e._expected(0, 0)
EXPECTED_TYPES = Counter(ev[0] for evs in EXPECTED.values() for ev in evs)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "whazing_gateway.cli", "demo", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _check_summary(out: str) -> None:
    assert "33 routed, 33 delivered, 0 dead letters, 0 pending" in out, out
    assert "by ticket    A #1 15, B #2 9, C #3 3, D #4 6" in out, out
    events = re.search(r"^  events\s+(\d+): (.*)$", out, re.M)
    assert events and int(events.group(1)) == 33, out
    got = {name: int(n) for name, n in (part.rsplit(" ", 1) for part in events.group(2).split(", "))}
    assert got == dict(EXPECTED_TYPES)
    assert "33 webhooks at demo-receiver, 33 signatures verified" in out
    assert "decode errors 0" in out
    lines = [line for line in out.splitlines() if line.startswith("  webhook  ")]
    assert len(lines) == 33
    for line in lines:  # event type, ticket, target, webhook-id, signature verified
        # a webhook that arrives after the scenario has named the tickets shows the name: "#4 (D)"
        assert re.match(r"^  webhook  (ticket|message)\.\w+ +ticket #[1-4]( \([A-D]\))? +target demo-receiver  "
                        r"webhook-id msg_\w+  signature verified: yes$", line), line
    assert len({line.split("webhook-id ")[1].split()[0] for line in lines}) == 33
    per_ticket = Counter(int(re.search(r"ticket #(\d)", line).group(1)) for line in lines)
    assert per_ticket == {t: len(evs) for t, evs in EXPECTED.items()}


def _check_no_secrets(text: str) -> None:
    """The demo prints the stand-in's fixed user password on purpose; nothing else secret."""
    assert "eyJ" not in text  # no JWT: agents' tokens, the observer's, the external API token
    assert seed.API_TOKEN not in text
    assert "whsec_" not in text  # the generated signing secret
    assert demo.API_KEY not in text


def _run_demo(port: int) -> str:
    proc = _popen("--port", str(port))
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    _check_no_secrets(out + err)
    return out


def _time_wait_on(port: int) -> None:
    """Leave a connection in TIME-WAIT on `port` (the server side closes first, as a gateway
    that stops does), and check that it makes a plain bind fail: what a second demo met."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # active close on the server's side: TIME-WAIT on 127.0.0.1:port
        time.sleep(0.1)
        client.close()
    with socket.socket() as plain:
        try:
            plain.bind(("127.0.0.1", port))
        except OSError:
            return
    raise AssertionError("no TIME-WAIT on the port: the test proves nothing")


@pytest.mark.slow
def test_demo_runs_the_day_twice_in_a_row_and_keeps_its_outbox():
    port = free_port()
    _time_wait_on(port)
    outs = [_run_demo(port), _run_demo(port)]  # the second right after the first, same port
    for out in outs:
        assert f"gateway            http://127.0.0.1:{port}" in out
        _check_summary(out)
        assert "flow viewer" not in out
        outbox = re.search(r"the demo's outbox is kept: (\S+)", out).group(1)
        config = re.search(r"look inside:  whazing-gateway deliveries list --config (\S+)", out).group(1)
        assert Path(outbox).is_file()
        res = subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "deliveries", "list", "--config", config,
                              "--status", "delivered", "--json", "--limit", "0"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert res.returncode == 0, res.stderr
        assert len(json.loads(res.stdout)) == 33  # the demo's 33 deliveries, kept
        shutil.rmtree(Path(config).parent)


@pytest.mark.slow
async def test_demo_keep_web_serves_the_viewer_until_ctrl_c():
    port = free_port()
    proc = _popen("--port", str(port), "--web", "--keep")
    lines: list[str] = []

    async def pump():
        while True:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                return
            lines.append(line)

    reader = asyncio.get_running_loop().create_task(pump())
    try:
        await wait_until(lambda: any("Ctrl-C stops" in x for x in lines) or proc.poll() is not None,
                         timeout=150, what="the demo to finish its scenario")
        out = "".join(lines)
        assert proc.poll() is None, out + proc.stderr.read()
        _check_summary(out)
        if demo.viewer_has_password():
            viewer = re.search(r"flow viewer\s+(http://127\.0\.0\.1:\d+/)\s+password: (\S+)", out)
            assert viewer, out
            url, password = viewer.groups()
        else:  # mitmproxy 11.0.2 (Python 3.11): no authentication in mitmweb; said plainly
            viewer = re.search(r"flow viewer\s+(http://127\.0\.0\.1:\d+/)\s+NO password", out)
            assert viewer, out
            url, password = viewer.group(1), "unused-bearer-token"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "flows") as r:
                assert r.status == (403 if demo.viewer_has_password() else 200)  # protected where it can be
            async with s.get(url + "flows", headers={"Authorization": f"Bearer {password}"}) as r:
                assert r.status == 200
                flows = await r.json()
            # Still running after the scenario: the gateway proxies to the stand-in.
            async with s.get(f"http://127.0.0.1:{port}/queue") as r:
                assert r.status == 403 and "Token was not provided" in await r.text()
        annotated = [f for f in flows if f["comment"]]
        assert annotated and all(f["marked"] for f in annotated)
        comments = "\n".join(f["comment"] for f in annotated)
        assert "ticket.closed #4 status open->closed" in comments
        assert "<- demo-receiver: delivered HTTP 200" in comments
        # The demo's gateway log (kept while it runs) holds none of the demo's secrets.
        workdir = Path(re.search(r"config in (\S+)\)", out).group(1))
        secret = re.search(r"whsec_[A-Za-z0-9+/=]+", (workdir / "rules" / "demo.yaml").read_text()).group(0)
        gateway_log = (workdir / "gateway.log").read_text()
        assert "observer connected" in gateway_log
        for value in (secret, password, demo.API_KEY, seed.API_TOKEN, "eyJ"):
            assert value not in gateway_log
        _check_no_secrets(out)
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.to_thread(proc.wait, 40)
        await reader
        assert rc == 0, "".join(lines)
        assert "stopping" in "".join(lines)
        assert (workdir / "data" / "outbox.db").is_file()  # kept, and said so
        assert f"the demo's outbox is kept: {workdir / 'data' / 'outbox.db'}" in "".join(lines)
        shutil.rmtree(workdir)
        with socket.socket() as sock:  # the gateway is gone with the demo
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.cancel()


@pytest.mark.slow
def test_demo_refuses_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _popen("--port", str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"port {port} is already in use" in out


# ---- the demo's pure parts -------------------------------------------------------------------


def test_signature_check_agrees_with_the_standardwebhooks_package():
    secret = signing.new_secret()
    body = b'{"type":"ticket.created"}'
    ts = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
               "webhook-signature": signing.signature_header([signing.new_secret(), secret], "msg_1", ts, body)}
    standardwebhooks.Webhook(secret).verify(body, headers)  # the independent verifier accepts it
    assert demo.verify_signature(secret, headers, body)
    assert not demo.verify_signature(secret, headers, body + b" ")
    assert not demo.verify_signature(signing.new_secret(), headers, body)
    assert not demo.verify_signature(secret, {**headers, "webhook-signature": ""}, body)
    w = demo.read_webhook("t", headers, body, secret)
    assert (w.event_type, w.webhook_id, w.verified) == ("ticket.created", "msg_1", True)


def test_progress_settles_only_when_every_routed_delivery_arrived():
    text = "\n".join([
        'whazing_gateway_deliveries_routed_total{target="r",type="ticket.created"} 2.0',
        'whazing_gateway_deliveries_routed_total{target="r",type="message.sent"} 1.0',
        'whazing_gateway_deliveries_total{target="r",outcome="delivered"} 3.0',
        'whazing_gateway_outbox_pending 0.0',
        'whazing_gateway_events_total{type="ticket.created"} 2.0',
        'whazing_gateway_events_total{type="message.sent"} 1.0',
        "",
    ])
    m = demo.parse_metrics(text)
    assert demo.progress(m, received=3).settled
    assert not demo.progress(m, received=2).settled  # delivered, not yet counted by the receiver
    assert not demo.progress(demo.parse_metrics(text.replace("} 3.0", "} 2.0")), received=3).settled
    assert not demo.progress({}, received=0).settled  # nothing routed is not a success
    assert demo.metric_by(m, "whazing_gateway_events_total", "type") == {"message.sent": 1, "ticket.created": 2}
