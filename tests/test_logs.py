"""Logging: JSON off a terminal, console on one, bound context, and secrets never written."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from datetime import datetime, timezone

import pytest
import structlog
import structlog.testing
from mitmproxy.http import Headers

from whazing_gateway.ops import logs
from whazing_gateway.ops.logs import MASK, configure_logging, redact, redact_text, register_secret

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJ1c2VybmFtZSI6ImFkbWluIiwidGVuYW50SWQiOjEsImlkIjoxLCJwcm9maWxlIjoiYWRtaW4ifQ."
    "Xr2a8QbHc6V3bqYxk7y0eWmJx1aB9s3Qm1lT0bH2c9E"
)
API_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnRJZCI6MSwiYXBpSWQiOiJhYmMifQ.q1w2e3r4t5y6u7i8o9p0"
SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwC4qV0cJtP1E="
N8N_KEY = "n8n-key-7f3c9a1e5b"
LOGIN_PASSWORD = "Sup3r-S3nha!2024"
OBSERVER_PASSWORD = "observer-pw-91c2"


@pytest.fixture
def out():
    """A non-TTY stream with logging configured on it; everything undone afterwards."""
    buf = io.StringIO()
    configure_logging(stream=buf)
    yield buf
    _reset()


def _reset():
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logs.GatewayLogHandler):
            root.removeHandler(h)
    logs.clear_registered_secrets()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(buf: io.StringIO, *loggers: str) -> list[dict]:
    """This test's records: loggers named t.* (ours) or listed; background tasks that other tests
    left running may log through the root logger meanwhile."""
    recs = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    return [r for r in recs if r.get("logger", "").startswith("t.") or r.get("logger") in loggers]


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"secret {s[:12]}... leaked in: {text}"


# --- redaction of realistic records -------------------------------------------------------------

def test_socket_connect_frame_token_is_masked(out):
    log = structlog.get_logger("t.whazing_gateway.edge.addon")
    frame = f'40{{"token":"{JWT}"}}'
    log.info("socket frame", direction="client", frame=frame, connection_id="c1")
    log.debug("not shown at info", frame=frame)
    rec, = lines(out)
    assert rec["frame"] == f'40{{"token":"{MASK}"}}'
    assert rec["connection_id"] == "c1"
    assert_no_secret(out.getvalue(), JWT)


def test_namespaced_connect_and_opaque_token(out):
    structlog.get_logger("t.x").info("frame", frame='40/admin,{"token":"opaque-token-1234"}')
    assert lines(out)[0]["frame"] == '40/admin,{"token":"***"}'


def test_login_body_password_masked_as_dict_string_and_bytes(out):
    log = structlog.get_logger("t.whazing_gateway.edge.records")
    body = {"email": "agent@example.com", "password": LOGIN_PASSWORD}
    raw = json.dumps(body)
    log.info("login", request_json=body, request_text=raw, content=raw.encode())
    rec, = lines(out)
    assert rec["request_json"] == {"email": "agent@example.com", "password": MASK}
    assert json.loads(rec["request_text"]) == {"email": "agent@example.com", "password": MASK}
    assert MASK in rec["content"]
    assert "agent@example.com" in out.getvalue()  # not a secret: still there for debugging
    assert_no_secret(out.getvalue(), LOGIN_PASSWORD)


def test_request_headers_dict_list_and_mitmproxy_headers(out):
    log = structlog.get_logger("t.whazing_gateway.edge.addon")
    hdrs = Headers(
        [(b"Authorization", f"Bearer {JWT}".encode()), (b"Cookie", b"sid=abc123; theme=dark"),
         (b"Content-Type", b"application/json")]
    )
    log.info(
        "request",
        method="PUT",
        path="/tickets/42",
        headers={"Authorization": f"Bearer {JWT}", "Accept": "application/json"},
        header_list=[("authorization", f"Bearer {JWT}"), ("x-n8n-api-key", N8N_KEY)],
        mitm_headers=hdrs,
    )
    rec, = lines(out)
    assert rec["headers"] == {"Authorization": MASK, "Accept": "application/json"}
    assert rec["header_list"] == [["authorization", MASK], ["x-n8n-api-key", MASK]]
    assert rec["path"] == "/tickets/42"
    assert_no_secret(out.getvalue(), JWT, N8N_KEY, "abc123")


def test_external_api_query_string_and_url(out):
    url = (f"http://whazing:3000/v1/api/external/abc/params/?body=oi&number=5511999999999"
           f"&externalKey=k1&bearertoken={API_JWT}")
    structlog.get_logger("t.whazing_gateway.edge.addon").info("external call", url=url,
                                               auth=f"Bearer {API_JWT}")
    rec, = lines(out)
    assert rec["url"].endswith("&bearertoken=***")
    assert "number=5511999999999" in rec["url"]
    assert rec["auth"] == "Bearer ***"
    assert_no_secret(out.getvalue(), API_JWT)


def test_delivery_record_with_target_secrets(out):
    log = structlog.get_logger("t.addons.sender").bind(target="n8n-main", event_id="evt_1", ticket_id=42)
    log.warning(
        "delivery failed, will retry",
        request_headers={"X-N8N-API-KEY": N8N_KEY, "webhook-id": "msg_1",
                         "content-type": "application/json"},
        target_config={"url": "https://n8n.example/webhook/whazing", "api_key": N8N_KEY,
                       "signing": {"secrets": [SIGNING]}, "timeout_ms": 10000},
        error=f"signature check with {SIGNING} failed",
    )
    rec, = lines(out)
    assert rec["target"] == "n8n-main" and rec["event_id"] == "evt_1" and rec["ticket_id"] == 42
    assert rec["level"] == "warning"
    assert rec["request_headers"]["X-N8N-API-KEY"] == MASK
    assert rec["request_headers"]["webhook-id"] == "msg_1"
    assert rec["target_config"]["api_key"] == MASK
    assert rec["target_config"]["signing"]["secrets"] == MASK
    assert rec["target_config"]["timeout_ms"] == 10000
    assert "whsec_***" in rec["error"]
    assert_no_secret(out.getvalue(), N8N_KEY, SIGNING)


def test_registered_secret_masked_anywhere(out):
    register_secret(OBSERVER_PASSWORD)
    register_secret("ab")  # too short to mask safely: ignored
    log = structlog.get_logger("t.whazing_gateway.edge.observer")
    log.info(f"observer login as bot@example.com with {OBSERVER_PASSWORD}",
             note=["nested", {"deep": f"x{OBSERVER_PASSWORD}y"}])
    rec, = lines(out)
    assert rec["event"] == "observer login as bot@example.com with ***"
    assert rec["note"] == ["nested", {"deep": "x***y"}]
    assert "ab" in redact_text("about")


def test_exception_text_is_redacted(out):
    log = structlog.get_logger("t.addons.sender")
    try:
        raise RuntimeError(f"upstream refused Authorization: Bearer {JWT}")
    except RuntimeError:
        log.exception("delivery crashed", target="t1")
    rec, = lines(out)
    assert rec["level"] == "error"
    assert "RuntimeError" in rec["exception"]
    assert_no_secret(out.getvalue(), JWT)


def test_objects_rendered_by_repr_are_checked(out):
    class Cfg:
        def __repr__(self):
            return f"Cfg(url='https://x', secret='{SIGNING}')"

    class Plain:
        def __repr__(self):
            return "Plain(1)"

    structlog.get_logger("t.x").info("cfg", cfg=Cfg(), plain=Plain())
    rec, = lines(out)
    assert SIGNING not in rec["cfg"] and "https://x" in rec["cfg"]
    assert rec["plain"] == "Plain(1)"


def test_redact_keeps_innocent_values_and_does_not_mutate():
    ev = {"ticket": {"id": 1, "status": "open", "queueId": 3}, "has_token": False,
          "token": None, "tokenInvalid": "x", "body": "Quero falar com um atendente",
          "password": LOGIN_PASSWORD}
    snapshot = json.dumps(ev, sort_keys=True)
    r = redact(ev)
    assert json.dumps(ev, sort_keys=True) == snapshot  # input untouched
    assert r["ticket"] == ev["ticket"]
    assert r["has_token"] is False and r["token"] is None
    assert r["body"] == "Quero falar com um atendente"
    assert r["password"] == MASK
    assert redact_text("missing bearer token") == "missing bearer token"
    assert redact_text("token_count=5 ok") == "token_count=5 ok"


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"Authorization: Bearer {JWT}", JWT),
        (f"jwt {JWT} expired", JWT),
        (f'{{"token":"{JWT}","x":1}}', JWT),
        ("POST /auth/login/ {'email': 'a@b.c', 'password': 'pa55word'}", "pa55word"),
        ('"{\\"password\\":\\"zzz-secret\\"}"', "zzz-secret"),
        ("X-N8N-API-KEY: " + N8N_KEY, N8N_KEY),
        ("curl -H 'x-n8n-api-key: " + N8N_KEY + "'", N8N_KEY),
        ("Headers[(b'cookie', b'sid=s3ss10n')]", "s3ss10n"),
        (f"secret={SIGNING}", SIGNING),
        ("?access_token=tok_live_123&x=1", "tok_live_123"),
        ("web_password=letmein99", "letmein99"),
        ("Basic YWRtaW46c2VjcmV0cGFzcw==", "YWRtaW46c2VjcmV0cGFzcw"),
    ],
)
def test_string_patterns(text, secret):
    assert secret not in redact_text(text)


# --- format, context and routing ----------------------------------------------------------------

def test_json_fields_timestamp_level_logger(out):
    structlog.get_logger("t.whazing_gateway.infer.inferrer").info("event inferred", type="ticket.created", ticket_id=7)
    rec, = lines(out)
    assert list(rec)[:4] == ["timestamp", "level", "logger", "event"]
    assert rec["logger"] == "t.whazing_gateway.infer.inferrer" and rec["level"] == "info"
    ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 300


def test_contextvars_bound_context(out):
    structlog.contextvars.bind_contextvars(flow="f-1", ticket_id=42)
    try:
        structlog.get_logger("t.whazing_gateway.edge.addon").info("observed", event_type="ticket:update")
    finally:
        structlog.contextvars.clear_contextvars()
    structlog.get_logger("t.whazing_gateway.edge.addon").info("later")
    first, second = lines(out)
    assert first["flow"] == "f-1" and first["ticket_id"] == 42
    assert "flow" not in second


def test_stdlib_and_mitmproxy_records_go_through_once(out):
    from mitmproxy.addons.termlog import TermLogHandler

    term_out = io.StringIO()
    term = TermLogHandler(term_out)
    term.install()  # what mitmdump's TermLog does at start
    try:
        configure_logging(stream=out)  # e.g. from the addon's running(): takes over
        logging.getLogger("mitmproxy.proxy.mode_servers").info(
            "client request %s", f"GET /socket.io/?EIO=4&token={JWT}", extra={"client": ("10.0.0.5", 51234)}
        )
        structlog.get_logger("t.whazing_gateway.edge.addon").info("ours")
    finally:
        term.uninstall()
    recs = lines(out, "mitmproxy.proxy.mode_servers")
    assert [r["event"].split(" ")[0] for r in recs] == ["client", "ours"]
    assert recs[0]["logger"] == "mitmproxy.proxy.mode_servers"
    assert recs[0]["client"] == "10.0.0.5:51234"
    assert term_out.getvalue() == ""  # mitmproxy's own printer was detached: no duplicate
    assert_no_secret(out.getvalue(), JWT)


def test_reconfigure_replaces_handler_and_level():
    a, b = io.StringIO(), io.StringIO()
    try:
        configure_logging(stream=a)
        configure_logging(stream=b, level="debug")
        structlog.get_logger("t.x").debug("dbg")
        assert a.getvalue() == ""
        assert lines(b)[0]["event"] == "dbg"
        configure_logging(stream=b, level="warning")
        structlog.get_logger("t.x").info("dropped")
        logging.getLogger("t.lib").info("dropped too")
        assert len(lines(b)) == 1
    finally:
        _reset()


def test_console_on_a_tty_and_when_asked():
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w", buffering=1)
    try:
        configure_logging(stream=tty)
        structlog.get_logger("t.addons.sender").info("delivered", target="n8n", password="pw-123456")
        tty.flush()
        text = os.read(master, 65536).decode()
    finally:
        _reset()
        tty.close()
        os.close(master)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert not plain.lstrip().startswith("{")
    assert "delivered" in plain and "target=n8n" in plain
    assert "pw-123456" not in plain

    buf = io.StringIO()
    try:
        configure_logging(fmt="console", stream=buf)
        structlog.get_logger("t.x").info("hello", ticket_id=3)
    finally:
        _reset()
    assert "hello" in buf.getvalue() and "ticket_id=3" in buf.getvalue()
    assert "\x1b[" not in buf.getvalue()  # no colours off a terminal


def test_json_forced_on_a_tty_and_bad_arguments():
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w", buffering=1)
    try:
        configure_logging(fmt="json", stream=tty)
        structlog.get_logger("t.x").info("j")
        tty.flush()
        text = os.read(master, 65536).decode()
    finally:
        _reset()
        tty.close()
        os.close(master)
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [r["event"] for r in recs if r["logger"] == "t.x"] == ["j"]
    with pytest.raises(ValueError):
        configure_logging(fmt="xml")
    with pytest.raises(ValueError):
        configure_logging(level="loud")


def test_mitmproxy_connection_chatter_only_at_debug():
    buf = io.StringIO()
    server_log = logging.getLogger("mitmproxy.proxy.server")
    try:
        configure_logging(stream=buf)
        for msg in ("client connect", "server connect 10.0.0.2:3000", "client disconnect"):
            server_log.info(msg, extra={"client": ("10.0.0.5", 1)})
        server_log.info("error establishing server connection: refused")
        assert [r["event"] for r in lines(buf, "mitmproxy.proxy.server")] == [
            "error establishing server connection: refused"]
        configure_logging(stream=buf, level="debug")
        server_log.info("client connect")
        assert lines(buf, "mitmproxy.proxy.server")[-1]["event"] == "client connect"
    finally:
        _reset()


def _masked_client_frame(text: str, key: bytes = b"\x1f\x8b\x3c\x55") -> bytes:
    """What a browser sends: a text frame masked with `key` (RFC 6455), here under 126 bytes."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_proxy_debug_raw_bytes_are_elided_not_logged():
    """`proxy_debug` prints each connection's raw bytes; a browser's socket.io CONNECT is in them
    masked (XORed with a key printed beside it), which the text patterns cannot see."""
    from mitmproxy.proxy import commands, events
    from mitmproxy.test import tflow

    connect = '40{"token":"%s"}' % JWT[:90]
    frame = _masked_client_frame(connect)
    assert b"eyJ" not in frame  # masked: no text pattern could find it
    buf = io.StringIO()
    server_log = logging.getLogger("mitmproxy.proxy.server")
    try:
        configure_logging(stream=buf, level="debug")
        received = repr(events.DataReceived(tflow.tclient_conn(), frame))
        sent = repr(commands.SendData(tflow.tserver_conn(), b"GET /tickets HTTP/1.1\r\n\r\n"))
        assert "\\x1f\\x8b" in received  # the masking key is in mitmproxy's text, beside the bytes
        server_log.debug(f"    >> {received}")
        server_log.debug(f"      << {sent}")
        server_log.debug("      << SendData(server, b'GET /tickets HTTP/1.1\\r\\nHost: x\u2026")  # cut at 2048
        server_log.debug("  >> Start(time=1.0)")
        events_ = [r["event"] for r in lines(buf, "mitmproxy.proxy.server")]
        assert events_ == [
            f"    >> DataReceived(client, <{len(frame)} bytes elided>)",
            "      << SendData(server, <25 bytes elided>)",
            "      << SendData(server, <bytes elided>",
            "  >> Start(time=1.0)",
        ]
        # Our own records and other loggers' are untouched.
        logging.getLogger("t.other").warning("DataReceived(client, b'x')")
        assert lines(buf)[-1]["event"] == "DataReceived(client, b'x')"
    finally:
        _reset()


def test_stderr_is_looked_up_per_line(monkeypatch):
    """A command run in-process configures logging on sys.stderr; when that stream is swapped
    (and closed) later, lines follow the current sys.stderr instead of failing."""
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging(stream=sys.stderr)
        structlog.get_logger("t.cli").warning("one")
        monkeypatch.setattr(sys, "stderr", second)
        first.close()
        structlog.get_logger("t.cli").warning("two")
        assert [r["event"] for r in lines(second)] == ["two"]
    finally:
        _reset()


# -- URL secrets (issue 13, point 10): userinfo and ${VAR} parts, in logs and at rest --------------
@pytest.fixture
def clean_registry():
    logs.clear_registered_secrets()
    yield
    logs.clear_registered_secrets()


@pytest.mark.parametrize("url, masked", [
    ("https://user:pa55w0rd@n8n.example/webhook/x", "https://***@n8n.example/webhook/x"),
    ("redis://:s3cr3t-pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    ("http://only-user@h/p", "http://***@h/p"),
    ("https://n8n.example/webhook/x?a=b", "https://n8n.example/webhook/x?a=b"),
    ("see http://h/p@x and me@x.com", "see http://h/p@x and me@x.com"),
])
def test_url_userinfo_is_masked(url, masked, clean_registry):
    assert logs.mask_url(url) == masked
    assert redact_text(f"connect to {url} failed") == f"connect to {masked} failed"


def test_env_parts_of_target_urls_are_masked_everywhere(tmp_path, clean_registry):
    """The values that ${VAR} put in a target URL never reach a log line: the config loader
    registers them when it reads the rules."""
    from whazing_gateway.config import read_rules

    (tmp_path / "r.yaml").write_text(
        "targets:\n  - name: t\n    url: 'https://n8n.example/webhook/${HOOK_ID}?k=${HOOK_KEY:-x}'\n")
    env = {"HOOK_ID": "5f1c-hook-9a7e", "HOOK_KEY": "query-key-77"}
    rules, issues = read_rules(tmp_path, env=env)
    assert not issues
    url = rules.targets["t"].url
    assert url == "https://n8n.example/webhook/5f1c-hook-9a7e?k=query-key-77"
    assert logs.mask_url(url) == f"https://n8n.example/webhook/{MASK}?k={MASK}"
    out = _render_json(url=url, error=f"POST {url}: 410 Gone")
    assert "5f1c-hook-9a7e" not in out and "query-key-77" not in out


def _render_json(**fields) -> str:
    buf = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buf)
    structlog.get_logger("t").warning("deliver.target_gone", **fields)
    return buf.getvalue()


async def test_outbox_stores_no_url_secret_and_admin_prints_none(tmp_path, clean_registry):
    import argparse

    from whazing_gateway.model import Delivery
    from whazing_gateway.outbox import admin
    from whazing_gateway.outbox.base import Attempt, TargetPause
    from whazing_gateway.outbox.sqlite import SqliteOutbox

    url = "https://bob:hunter2-Xq9@n8n.example/webhook/x"
    path = tmp_path / "data" / "outbox.db"
    outbox = SqliteOutbox(path)
    await outbox.open()
    try:
        await outbox.put([Delivery("d1", "t", "e1", "ticket.closed", None, b"{}", 1.0, 7)])
        await outbox.record_attempt("d1", Attempt(2.0, None, 1.0, f"ClientError: cannot reach {url}"), "retry", 3.0)
        await outbox.pause_target(TargetPause("t", url, f"410 Gone from {url}", 4.0))
        paused = await outbox.paused_targets()
        assert "hunter2" not in paused["t"].url and "hunter2" not in paused["t"].reason
    finally:
        await outbox.close()
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert b"hunter2" not in raw and b"bob:" not in raw
    assert b"https://***@n8n.example/webhook/x" in raw

    # A row written before masking at rest existed: `deliveries show/list` still print no secret.
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE deliveries SET last_error = ?", (f"cannot reach {url}",))
        conn.execute("UPDATE attempts SET error = ?", (f"cannot reach {url}",))
    outbox = SqliteOutbox(path)
    await outbox.open()
    try:
        for action, as_json in (("show", True), ("show", False), ("list", True), ("list", False)):
            buf = io.StringIO()
            args = argparse.Namespace(action=action, id="d1", json=as_json, target=None, status=None, event=None,
                                      since=None, until=None, limit=50, ticket=None, type=None)
            await admin._run(args, outbox, buf)
            assert "n8n.example" in buf.getvalue() or action == "list" and not as_json
            assert "hunter2" not in buf.getvalue(), (action, as_json)
    finally:
        await outbox.close()


def test_data_files_are_private_even_in_an_existing_loose_folder(tmp_path):
    import asyncio
    import stat

    from whazing_gateway.outbox.spool import Spool
    from whazing_gateway.outbox.sqlite import SqliteOutbox

    fresh = tmp_path / "fresh" / "data"
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    old_file = loose / "outbox.db"
    old_file.write_bytes(b"")
    os.chmod(old_file, 0o644)

    async def open_close(path):
        o = SqliteOutbox(path)
        await o.open()
        await o.put([])
        await o.close()

    asyncio.run(open_close(fresh / "outbox.db"))
    asyncio.run(open_close(old_file))
    spool = Spool(loose / "redis-spool.db", 10)
    spool.open()
    spool.close()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(fresh) == 0o700 and mode(loose) == 0o700
    files = [p for p in list(fresh.iterdir()) + list(loose.iterdir())]
    assert {p.name for p in files} >= {"outbox.db", "redis-spool.db"}
    assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}


@pytest.mark.slow
async def test_redis_outbox_stores_no_url_secret(tmp_path, redis_server, clean_registry):
    """The Redis engine keeps paused URLs and attempt errors masked too (a real redis-server)."""
    import redis

    from whazing_gateway.model import Delivery
    from whazing_gateway.outbox.base import Attempt, TargetPause
    from whazing_gateway.outbox.redis import RedisOutbox

    url = "https://bob:hunter2-Xq9@n8n.example/webhook/x"
    ob = RedisOutbox(redis_server.url, "t", spool_path=tmp_path / "data" / "spool.db", reorder_window_s=0)
    await ob.open()
    try:
        await ob.put([Delivery("d1", "t", "e1", "ticket.closed", None, b"{}", 1.0, 7)])
        await ob.record_attempt("d1", Attempt(2.0, None, 1.0, f"ClientError: cannot reach {url}"), "retry", 3.0)
        await ob.pause_target(TargetPause("t", url, f"410 Gone from {url}", 4.0))
        got = await ob.get("d1")
        assert got is not None and "hunter2" not in (got[0].last_error or "")
    finally:
        await ob.close()
    client = redis.Redis.from_url(redis_server.url)
    dump = b"".join(client.dump(k) or b"" for k in client.keys("*"))
    client.close()
    assert dump and b"hunter2" not in dump


def test_the_working_folder_is_never_locked_down(tmp_path, monkeypatch):
    """A data file in the folder the gateway runs from: the file is 0600, the folder untouched
    (locking the working folder would lock out the operator's other files)."""
    import stat

    from whazing_gateway.outbox.spool import Spool

    os.chmod(tmp_path, 0o755)
    (tmp_path / "notes.txt").write_text("the operator's")
    monkeypatch.chdir(tmp_path)
    with structlog.testing.capture_logs() as captured:
        spool = Spool("spool.db", 10)
        spool.open()
        spool.close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "spool.db").stat().st_mode) == 0o600
    assert any(c["event"].startswith("data folder readable by others: left as it is") for c in captured)


def test_hot_logger_writes_the_same_line_the_short_way(out):
    """The pipeline's per-event line skips the stdlib's LogRecord and formatter, never what
    the line says: same keys in the same order, same values, secrets masked, level honoured,
    and structlog's own test capture (or a console) still sees it."""
    fields = dict(event_id="evt_1", type="message.received", ticket_id=7, tenant_id=1,
                  changes="status pending->open", flow_id="f-1", token=JWT)
    structlog.get_logger("t.hot").info("event", **fields)
    hot = logs.hot_logger("t.hot")
    assert type(hot._logger).__name__ == "_HandlerLines"  # really the short way
    hot.info("event", **fields)
    hot.debug("below the level", **fields)
    std, fast = lines(out)
    assert list(std) == list(fast) and list(fast)[:4] == ["timestamp", "level", "logger", "event"]
    assert {k: v for k, v in std.items() if k != "timestamp"} == {k: v for k, v in fast.items() if k != "timestamp"}
    assert fast["token"] == MASK and JWT not in out.getvalue()
    with structlog.testing.capture_logs() as captured:
        logs.hot_logger("t.hot").info("event", event_id="evt_2")
    assert [c["event_id"] for c in captured] == ["evt_2"] and "evt_2" not in out.getvalue()
    console = io.StringIO()
    configure_logging(fmt="console", stream=console)
    logs.hot_logger("t.hot").info("event", event_id="evt_3")
    assert "evt_3" in console.getvalue() and not console.getvalue().lstrip().startswith("{")
