"""gateway.yaml -> Settings and rules/*.yaml -> RuleSet: defaults, sections, ${ENV}, paths."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from tests.echo_upstream import start_echo
from tests.harness import GatewayProcess, rules_yaml
from tests.receivers import free_port
from whazing_gateway import model
from whazing_gateway.config import ConfigError, Issue, Settings, expand_env, load_rules, load_settings
from whazing_gateway.edge.running import running_settings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_empty_file_gives_the_documented_defaults(tmp_path):
    s = load_settings(write(tmp_path / "gateway.yaml", "# nothing\n"), env={})
    assert s == Settings(config_path=tmp_path / "gateway.yaml", rules_dir=tmp_path / "rules",
                         data_dir=tmp_path / "data", sqlite_path=tmp_path / "data" / "outbox.db")
    assert (s.listen_host, s.listen_port, s.upstream) == ("0.0.0.0", 8080, "http://127.0.0.1:3000")
    assert (s.storage_backend, s.metrics_port, s.web_port, s.max_flows) == ("sqlite", 9090, 8081, 2000)
    assert s.retry_schedule == model.DEFAULT_RETRY_SCHEDULE and s.default_timeout_ms == 10_000
    assert s.observer_email_env == "WHAZING_OBSERVER_EMAIL" and s.web_password is None


def test_every_section_maps_to_its_field(tmp_path):
    s = load_settings(write(tmp_path / "conf" / "gateway.yaml", """
listen: {host: 127.0.0.1, port: 9000}
upstream: https://whazing.internal:3000
rules_dir: /etc/wgw/rules
rules_reload_s: 500ms
data_dir: state
storage:
  backend: redis
  sqlite: {path: other.db}
  redis: {url: "redis://127.0.0.1:6379/2", prefix: gw1, spool_max: 50}
observer: {enabled: false, email_env: OBS_MAIL, password_env: OBS_PASS}
log: {format: json, level: debug}
metrics: {host: 0.0.0.0, port: 0}
web: {host: 0.0.0.0, port: 8181, password: "${WEB_PW}"}
proxy: {stream_large_bodies: 2m, inspect_max_bytes: 512k, max_flows: 10}
delivery: {per_ticket_order: false, retry_schedule: [0, 30s, 5m, 1h], timeout_ms: 3000}
"""), env={"WEB_PW": "s3cret"})
    base = tmp_path / "conf"
    assert s.listen_host == "127.0.0.1" and s.listen_port == 9000
    assert s.upstream == "https://whazing.internal:3000"
    assert s.rules_dir == Path("/etc/wgw/rules") and s.rules_reload_s == 0.5
    assert s.data_dir == base / "state" and s.sqlite_path == base / "other.db"
    assert (s.storage_backend, s.redis_url, s.redis_prefix, s.spool_max) == ("redis", "redis://127.0.0.1:6379/2", "gw1", 50)
    assert (s.observer_enabled, s.observer_email_env, s.observer_password_env) == (False, "OBS_MAIL", "OBS_PASS")
    assert (s.log_format, s.log_level) == ("json", "debug")
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 0)
    assert (s.web_host, s.web_port, s.web_password) == ("0.0.0.0", 8181, "s3cret")
    assert (s.stream_large_bodies, s.inspect_max_bytes, s.max_flows) == ("2m", 512 * 1024, 10)
    assert s.per_ticket_order is False and s.retry_schedule == (0, 30, 300, 3600) and s.default_timeout_ms == 3000


def test_env_references_are_typed_after_expansion(tmp_path):
    text = "listen: {port: '${WGW_PORT:-8181}'}\nobserver: {enabled: '${OBS:-false}'}\nupstream: http://$${x}\n"
    s = load_settings(write(tmp_path / "g.yaml", text), env={})
    assert s.listen_port == 8181 and s.observer_enabled is False and s.upstream == "http://${x}"
    assert load_settings(tmp_path / "g.yaml", env={"WGW_PORT": "9999"}).listen_port == 9999


def test_expand_env():
    env = {"A": "1", "E": ""}
    assert expand_env("x${A}y", env) == ("x1y", [])
    assert expand_env("${B:-dflt}/${E:-e}/${E}", env) == ("dflt/e/", [])
    assert expand_env("${B}${C}", env) == ("", ["B", "C"])
    assert expand_env("$${A}", env) == ("${A}", [])


def test_errors_carry_file_and_line(tmp_path):
    path = write(tmp_path / "gateway.yaml", "listen:\n  port: 0\nobserver:\n  password: hunter2\nwebb: {}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert [str(i) for i in err.value.issues] == [
        f"{path}:2: 'port' must be between 1 and 65535, got 0",
        f"{path}:4: credentials are never written in gateway.yaml: put them in the environment variable "
        "named by 'password_env'",
        f"{path}:5: unknown key 'webb' in gateway.yaml, did you mean 'web'?",
    ]
    assert err.value.issues[0] == Issue(str(path), 2, "'port' must be between 1 and 65535, got 0")


def test_yaml_syntax_error_line(tmp_path):
    path = write(tmp_path / "gateway.yaml", "listen:\n  port: 1\n  host: [a\nupstream: x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    [issue] = err.value.issues
    assert issue.line == 4 and issue.message.startswith("YAML syntax error: ")


def test_redis_backend_needs_url(tmp_path):
    path = write(tmp_path / "gateway.yaml", "storage:\n  backend: redis\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert [str(i) for i in err.value.issues] == [f"{path}:2: storage.redis.url is required when storage.backend is redis"]


def test_targets_take_defaults_from_settings_and_secrets_from_env(tmp_path):
    write(tmp_path / "rules" / "t.yaml", """
targets:
  - name: a
    url: http://127.0.0.1:5678/webhook/a
    api_key: ${KEY}
    secrets: ["${S1:-}", "${S2}", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    headers: {X-Team: support, X-Num: 3, X-Flag: true}
  - name: b
    url: https://hooks.example/b
    timeout_ms: 2500
    concurrency: 1
    rate_per_s: 2.5
    format: envelope
    kind: generic
    retry_schedule: [0, 1m]
""")
    settings = Settings(retry_schedule=(1, 2), default_timeout_ms=7000)
    rules = load_rules(tmp_path / "rules", settings, env={"KEY": "k1", "S2": "whsec_c2VjcmV0"})
    a, b = rules.targets["a"], rules.targets["b"]
    assert a == model.Target(name="a", url="http://127.0.0.1:5678/webhook/a", api_key="k1",
                             secrets=("whsec_c2VjcmV0", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                             headers={"X-Team": "support", "X-Num": "3", "X-Flag": "true"},
                             timeout_ms=7000, retry_schedule=(1, 2))
    assert b == model.Target(name="b", url="https://hooks.example/b", timeout_ms=2500, concurrency=1,
                             rate_per_s=2.5, format="envelope", kind="generic", retry_schedule=(0, 60))


def test_optional_api_key_unset_is_none(tmp_path):
    write(tmp_path / "rules" / "t.yaml", "targets:\n  - {name: a, url: 'http://x', api_key: '${NOPE:-}'}\n")
    assert load_rules(tmp_path / "rules", env={}).targets["a"].api_key is None


def test_rules_across_files_and_event_aliases(tmp_path):
    write(tmp_path / "rules" / "1.yml", "targets:\n  - {name: t, url: 'http://x'}\n")
    write(tmp_path / "rules" / "2.yaml", """
channels:
  - channel: [1, Vendas]
    targets: [t, t]
    events: [received, sent, NewTicket, TransferTicket, closed, reopened, accepted]
queues:
  - queue: "*"
    targets: t
    events: all
    start_on_transfer: true
    match: {tenant: 1, tags: [VIP, 7]}
""")
    write(tmp_path / "rules" / "notes.txt", "not yaml: ignored")
    rules = load_rules(tmp_path / "rules", env={})
    [ch] = rules.channel_rules
    [q] = rules.queue_rules
    assert ch.channels == (1, "Vendas") and ch.targets == ("t",)
    assert ch.events == frozenset(model.EVENT_TYPES)
    assert q.events == model.MESSAGE_EVENTS and q.start_on_transfer is True
    assert q.match.tenants == frozenset({"1"}) and q.match.tags == frozenset({"vip", "7"})
    assert ch.source == f"{tmp_path / 'rules' / '2.yaml'}:3"
    assert [p.name for p in rules.files] == ["1.yml", "2.yaml"]
    assert rules.summary() == "1 targets, 1 channel rules, 1 queue rules"


def test_queue_events_default_to_both_messages_and_channel_events_are_required(tmp_path):
    write(tmp_path / "rules" / "r.yaml", "targets: [{name: t, url: 'http://x'}]\nqueues: [{queue: 3, targets: t}]\n"
                                         "channels: [{channel: 1, targets: t}]\n")
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules", env={})
    assert [i.message for i in err.value.issues] == ["missing required key 'events' in channel rule"]
    write(tmp_path / "rules" / "r.yaml", "targets: [{name: t, url: 'http://x'}]\nqueues: [{queue: 3, targets: t}]\n")
    assert load_rules(tmp_path / "rules", env={}).queue_rules[0].events == model.MESSAGE_EVENTS


def test_empty_rules_folder_is_valid(tmp_path):
    (tmp_path / "rules").mkdir()
    rules = load_rules(tmp_path / "rules", env={})
    assert rules.targets == {} and rules.channel_rules == () and rules.queue_rules == ()


# ---------------------------------------------------------------------------- running values


def test_running_settings_follow_mitmproxys_options():
    """Pure: gateway.yaml's values, overridden where mitmproxy's own options say otherwise."""
    s = Settings(listen_host="0.0.0.0", listen_port=8080, upstream="http://127.0.0.1:3000", metrics_port=9090)
    same = running_settings(s, {"mode": ["reverse:http://127.0.0.1:3000"], "listen_host": "0.0.0.0",
                                "listen_port": 8080, "whazing_metrics_port": None})
    assert same is s
    moved = running_settings(s, {"mode": ["reverse:https://whazing.internal:3001"], "listen_host": "127.0.0.1",
                                 "listen_port": 8181, "whazing_metrics_port": 0})
    assert (moved.upstream, moved.listen_host, moved.listen_port, moved.metrics_port) == \
        ("https://whazing.internal:3001", "127.0.0.1", 8181, 0)
    # mitmproxy's defaults: no -p means the mode's default port; "@port" in the mode wins over -p
    assert running_settings(s, {"mode": ["reverse:http://h:1"], "listen_host": "", "listen_port": None}).listen_port == 8080
    at = running_settings(s, {"mode": ["reverse:http://h:1@127.0.0.2:9001"], "listen_host": "", "listen_port": 7000})
    assert (at.listen_host, at.listen_port) == ("127.0.0.2", 9001)
    viewer = running_settings(s, {"web_host": "0.0.0.0", "web_port": 8999})  # mitmweb's options, under --web
    assert (viewer.web_host, viewer.web_port) == ("0.0.0.0", 8999)
    with pytest.raises(ConfigError) as err:
        running_settings(s, {"whazing_metrics_port": 70000})
    assert str(err.value) == "mitmproxy options: 'whazing_metrics_port' must be between 0 and 65535, got 70000"


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.text()


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


def _started(gw: GatewayProcess) -> dict:
    """The "gateway started" line: JSON under `run`, structlog's console form under plain mitmdump."""
    for r in gw.log_records():
        if r.get("event") == "gateway started":
            return r
    line = next(x for x in gw.log().splitlines() if "gateway started" in x)
    return dict(re.findall(r"(\w+)=(\S+)", line))


@pytest.mark.slow
async def test_run_set_moves_the_proxy_the_log_and_readyz(tmp_path):
    """`run --set listen_port=N --set whazing_metrics_port=M`: the proxy, /readyz and the log agree."""
    runner, upstream = await start_echo()
    gw = GatewayProcess(tmp_path, upstream, rules_yaml("http://127.0.0.1:9/x"))
    yaml_port, yaml_metrics = gw.port, gw.metrics_port
    gw.port, gw.metrics_port = free_port(), free_port()
    gw.extra_args = ["--set", f"listen_port={gw.port}", "--set", f"whazing_metrics_port={gw.metrics_port}"]
    try:
        await gw.start()  # waits for /readyz 200 on the overriding metrics port
        status, body = await _get(gw.metrics_url + "/readyz")
        assert status == 200 and json.loads(body)["checks"]["proxy"]["ok"] is True
        status, body = await _get(gw.url + "/echo-me")
        assert status == 200
        assert await _refused(yaml_port) and await _refused(yaml_metrics)
        started = _started(gw)
        assert started["listen"] == f"127.0.0.1:{gw.port}" and started["upstream"] == upstream
        ops = next(r for r in gw.log_records() if r.get("event") == "ops server listening")
        assert ops["port"] == gw.metrics_port
    finally:
        await gw.stop()
        await runner.cleanup()


@pytest.mark.slow
async def test_run_web_set_web_port_is_the_flow_viewer_the_log_names(tmp_path):
    runner, upstream = await start_echo()
    gw = GatewayProcess(tmp_path, upstream, rules_yaml("http://127.0.0.1:9/x"), web=True)
    yaml_web = gw.web_port
    gw.web_port = free_port()
    gw.extra_args = ["--set", f"web_port={gw.web_port}"]
    try:
        await gw.start()
        viewer = next(r for r in gw.log_records() if r.get("event") == "flow viewer")
        assert viewer["url"] == f"http://127.0.0.1:{gw.web_port}/"
        assert not await _refused(gw.web_port) and await _refused(yaml_web)
    finally:
        await gw.stop()
        await runner.cleanup()


@pytest.mark.slow
async def test_plain_mitmdump_mode_and_port_are_what_the_gateway_uses(tmp_path):
    """`mitmdump -s addons/gateway.py --mode reverse:URL -p N`: gateway.yaml's upstream and port
    are not in use, so the log and /readyz must name the ones mitmproxy was given."""
    runner, upstream = await start_echo()
    gw = GatewayProcess(tmp_path, "http://127.0.0.1:9", rules_yaml("http://127.0.0.1:9/x"), plain_mitmdump=True)
    yaml_port = gw.port
    gw.upstream, gw.port = upstream, free_port()
    try:
        await gw.start()
        status, _ = await _get(gw.url + "/through")
        assert status == 200
        assert await _refused(yaml_port)
        started = _started(gw)
        assert started["upstream"] == upstream and started["listen"] == f"127.0.0.1:{gw.port}"
        status, body = await _get(gw.metrics_url + "/readyz")
        assert status == 200 and json.loads(body)["checks"]["proxy"]["ok"] is True
    finally:
        await gw.stop()
        await runner.cleanup()


def test_env_references_in_rules_are_typed_after_expansion(tmp_path):
    """`channel: ${CH:-1}` is the channel id 1 (not a channel named "1"); numbers stay numbers."""
    write(tmp_path / "rules" / "r.yaml", """
targets:
  - {name: t, url: "${URL:-http://x}", concurrency: "${C:-2}", rate_per_s: "${R:-0.5}", headers: {X-On: "${ON:-true}"}}
channels:
  - {channel: ["${CH:-1}", Vendas], targets: t, events: "${EV:-all}", groups: "${G:-true}"}
""")
    rules = load_rules(tmp_path / "rules", env={"C": "3"})
    t, [ch] = rules.targets["t"], rules.channel_rules
    assert (t.url, t.concurrency, t.rate_per_s, t.headers) == ("http://x", 3, 0.5, {"X-On": "true"})
    assert ch.channels == (1, "Vendas") and ch.groups is True and ch.events == frozenset(model.EVENT_TYPES)
