"""No secret reaches the gateway's log: a full scenario through a real gateway at log level
debug with mitmproxy's `proxy_debug` on (every event of every connection is logged, with the
size of its bytes: the most an operator chasing a problem would ever turn on), with the
observer logging in, a browser's socket.io CONNECT carrying its JWT, agents' bearer tokens,
the external API token, a target's API key and signing secret and the flow viewer's password,
then the whole log output is searched for each.
"""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.harness import GatewayProcess, RawBrowser, login, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_gateway.deliver.signing import SECRET_PREFIX
from whazing_standin import seed
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin
from whazing_standin.store import User

# Distinctive values: a hit in the log can only be a leak.
OBSERVER_EMAIL = "observer@whazing.test"
OBSERVER_PASSWORD = "Obs3rver-Pa55-Xq7Zr2"
API_KEY = "test-api-key-123"  # tests.harness.rules_yaml's target
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # same
WEB_PASSWORD = "test-web-password"  # tests.harness's gateway.yaml


@pytest.mark.slow
async def test_full_scenario_at_debug_level_logs_no_secret(tmp_path):
    standin = await start_standin()
    # A service account for the observer, with a password found nowhere else.
    standin.standin.world.users[9] = User(9, "Gateway observer", OBSERVER_EMAIL, OBSERVER_PASSWORD, "admin",
                                          seed.TENANT_ID, tuple(seed.QUEUES))
    receiver = await Receiver().start()
    gw = GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()), web=True,
                        extra_args=["--set", "proxy_debug=true"],
                        env={"WHAZING_OBSERVER_EMAIL": OBSERVER_EMAIL, "WHAZING_OBSERVER_PASSWORD": OBSERVER_PASSWORD})
    gw.config.write_text(gw.config.read_text().replace("level: info", "level: debug"))
    await gw.start()

    tokens: set[str] = {seed.API_TOKEN}
    passwords_sent: list[str] = []

    async def on_request_start(session, ctx, params):
        auth = params.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            tokens.add(auth[len("Bearer "):])

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    browser = None
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        token = await login(gw.url)
        tokens.add(token)
        browser = await RawBrowser(gw.url, token).start()  # CONNECT 40{"token":"<JWT>"} through the proxy
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            day = await play_day(gw.url, session=session)
        passwords_sent.append(seed.PASSWORD)
        assert len(day.tickets) == 4
        await receiver.wait_for(33, timeout=60)
        assert all(r.headers.get("webhook-signature", "").startswith("v1,") for r in receiver.requests)
        assert {r.headers.get("X-N8N-API-KEY") for r in receiver.requests} == {API_KEY}
    finally:
        if browser is not None:
            await browser.stop()
        await gw.stop()
        await receiver.stop()
        await standin.stop()

    log = gw.log()
    records = gw.log_records()
    # The log really holds the day, at debug level: the test searches something substantial.
    assert any(r.get("level") == "debug" for r in records)
    # proxy_debug's lines are there, each connection's bytes only counted (in a masked websocket
    # frame a JWT would hide from every pattern).
    assert len(re.findall(r"DataReceived\(client, <\d+ bytes elided>\)", log)) > 50
    assert not re.search(r"(?:DataReceived|SendData)\(\w+, b['\"]", log)
    assert log.count("***") > 20  # and the redaction had work to do
    assert "observer connected" in log and "gateway started" in log
    assert sum(1 for r in records if r.get("event") == "event") >= 33 or log.count("msg_") >= 33
    assert len(tokens) >= 4  # three agents' JWTs and the external API token were used

    leaks = [name for name, secret in [
        ("observer password", OBSERVER_PASSWORD),
        ("target api_key", API_KEY),
        ("signing secret", SIGNING_SECRET),
        ("signing secret key", SIGNING_SECRET[len(SECRET_PREFIX):]),
        ("web password", WEB_PASSWORD),
        ("external API token", seed.API_TOKEN),
        *((f"bearer token {t[:12]}...", t) for t in sorted(tokens)),
    ] if secret in log]
    assert not leaks, leaks
    # No JWT at all, including the observer's own, which the test never sees. A JWT starts with
    # "eyJ" and a long base64url run ("eyJhbGciOi..."); the three bytes alone could be anything.
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10}", log), re.search(r".{40}eyJ[A-Za-z0-9_-]{10}.{20}", log)
    assert not re.search(r"whsec_(?!\*)", log)
    # Login bodies' passwords ("123456" is too common a substring to search for alone).
    for pw in passwords_sent + [OBSERVER_PASSWORD]:
        assert not re.search(r"passw\w*\W{1,6}" + re.escape(pw), log, re.I)
