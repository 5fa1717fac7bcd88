"""`whazing-gateway demo`: the whole thing on one machine, in one command, for a first look.

It starts the Whazing stand-in, a real gateway in front of it (`whazing-gateway run` in a
subprocess, with a generated gateway.yaml and rules in a temporary folder), and a webhook
receiver that prints one line per webhook and checks its signature; then it plays the scripted
helpdesk day through the gateway and prints a summary read from the gateway's own /metrics.

Without --keep it exits 0 once every routed delivery has arrived (1 if not within the timeout);
with --keep everything stays up (the stand-in, the gateway, the receiver) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

TARGET = "demo-receiver"
API_KEY = "demo-api-key-0f3a9c"  # sent as X-N8N-API-KEY; the demo receiver does not check it
OBSERVER_EMAIL_ENV = "WHAZING_DEMO_OBSERVER_EMAIL"
OBSERVER_PASSWORD_ENV = "WHAZING_DEMO_OBSERVER_PASSWORD"
START_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 60.0
QUIET_S = 1.0  # nothing new for this long after the last delivery: the day's webhooks are in


# ---------------------------------------------------------------------------- pure helpers


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Standard Webhooks check, as a receiver does it: any `v1,` signature of the header matches."""
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    given = headers.get("webhook-signature", "")
    if not (msg_id and ts.isdigit() and given):
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, sig) for sig in given.split())


@dataclass(frozen=True)
class Webhook:
    """One webhook as the demo receiver saw it."""

    event_type: str
    ticket_id: Any
    target: str
    webhook_id: str
    verified: bool


def read_webhook(target: str, headers: Mapping[str, str], body: bytes, secret: str) -> Webhook:
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    ticket = (data.get("data") or {}).get("ticket") or {}
    return Webhook(event_type=str(data.get("type", "?")), ticket_id=ticket.get("id"), target=target,
                   webhook_id=headers.get("webhook-id", "?"), verified=verify_signature(secret, headers, body))


def webhook_line(w: Webhook, labels: Mapping[int, str] | None = None) -> str:
    label = (labels or {}).get(w.ticket_id)
    ticket = f"#{w.ticket_id}" + (f" ({label})" if label else "")
    return (f"  webhook  {w.event_type:<19} ticket {ticket:<7} target {w.target}  "
            f"webhook-id {w.webhook_id}  signature verified: {'yes' if w.verified else 'NO'}\n")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {sample name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def metric_sum(metrics: Mapping[str, list], name: str, **labels: str) -> float:
    return sum(v for lab, v in metrics.get(name, ()) if all(lab.get(k) == want for k, want in labels.items()))


def metric_by(metrics: Mapping[str, list], name: str, label: str) -> dict[str, int]:
    out: Counter = Counter()
    for lab, v in metrics.get(name, ()):
        if v:
            out[lab.get(label, "")] += int(v)
    return dict(sorted(out.items()))


@dataclass
class Progress:
    """Delivery counts at one moment (from /metrics and the receiver)."""

    routed: int = 0
    delivered: int = 0
    dead: int = 0
    pending: int = 0
    received: int = 0

    @property
    def settled(self) -> bool:
        return (self.routed > 0 and self.delivered + self.dead == self.routed and self.pending == 0
                and self.received >= self.delivered)


def progress(metrics: Mapping[str, list], received: int) -> Progress:
    return Progress(routed=int(metric_sum(metrics, "whazing_gateway_deliveries_routed_total")),
                    delivered=int(metric_sum(metrics, "whazing_gateway_deliveries_total", outcome="delivered")),
                    dead=int(metric_sum(metrics, "whazing_gateway_dead_letters_total")),
                    pending=int(metric_sum(metrics, "whazing_gateway_outbox_pending")),
                    received=received)


def summary_lines(metrics: Mapping[str, list], received: list[Webhook], labels: Mapping[int, str]) -> list[str]:
    events = metric_by(metrics, "whazing_gateway_events_total", "type")
    p = progress(metrics, len(received))
    per_ticket = Counter(w.ticket_id for w in received)
    tickets = ", ".join(f"{labels.get(t, '?')} #{t} {n}" for t, n in sorted(per_ticket.items(), key=lambda kv: str(kv[0])))
    verified = sum(1 for w in received if w.verified)
    return [
        "summary\n",
        f"  events       {sum(events.values())}: " + ", ".join(f"{k} {v}" for k, v in events.items()) + "\n",
        f"  deliveries   {p.routed} routed, {p.delivered} delivered, {p.dead} dead letters, {p.pending} pending\n",
        f"  received     {len(received)} webhooks at {TARGET}, {verified} signatures verified\n",
        f"  by ticket    {tickets}\n",
        f"  decode errors {int(metric_sum(metrics, 'whazing_gateway_decode_errors_total'))}\n",
    ]


def viewer_has_password() -> bool:
    """mitmweb has authentication from mitmproxy 11.1 on (Python 3.11 gets 11.0.2, without)."""
    from mitmproxy.version import VERSION

    return tuple(int(x) for x in VERSION.split(".")[:2]) >= (11, 1)


def gateway_yaml(*, port: int, upstream: str, metrics_port: int, web_port: int, web_password: str) -> str:
    return textwrap.dedent(f"""\
        # Generated by `whazing-gateway demo`.
        listen: {{host: 127.0.0.1, port: {port}}}
        upstream: {upstream}
        rules_dir: rules
        data_dir: data
        observer: {{email_env: {OBSERVER_EMAIL_ENV}, password_env: {OBSERVER_PASSWORD_ENV}}}
        metrics: {{host: 127.0.0.1, port: {metrics_port}}}
        web: {{host: 127.0.0.1, port: {web_port}, password: "{web_password}"}}
        log: {{format: json, level: info}}
        delivery: {{retry_schedule: [1, 2, 5]}}
        """)


def rules_yaml(receiver_url: str, secret: str) -> str:
    return textwrap.dedent(f"""\
        # Generated by `whazing-gateway demo`: every event of every channel to the demo receiver.
        targets:
          - name: {TARGET}
            url: {receiver_url}
            format: envelope
            kind: generic
            api_key: {API_KEY}
            secrets: ["{secret}"]
        channels:
          - name: everything
            channel: "*"
            targets: [{TARGET}]
            events: [all]
            open: true
            pending: true
            groups: true
        """)


# ---------------------------------------------------------------------------- the edges


def _reserve(port: int = 0) -> socket.socket:
    """Hold a port (bound, not listening) so that the demo's other servers, which take any free
    port, cannot land on it before the gateway binds it; close it just before starting the gateway.

    SO_REUSEADDR, as the gateway's own listener has: connections of a previous demo left in
    TIME-WAIT on the port do not make it "in use" (a second demo right after the first works),
    while a server listening on it still does."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    if port:  # bound with SO_REUSEADDR, a port another server LISTENS on must still count as busy
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                s.close()
                raise OSError(f"port {port} is in use")
    return s


class PrintingReceiver:
    """A webhook receiver on 127.0.0.1 that writes one line per webhook and answers 200."""

    def __init__(self, secret: str, out: IO[str]) -> None:
        self.secret = secret
        self.out = out
        self.received: list[Webhook] = []
        self.labels: dict[int, str] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{target}"

    async def start(self) -> "PrintingReceiver":
        app = web.Application()
        app.router.add_post("/hooks/{target}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        w = read_webhook(request.match_info["target"], request.headers, body, self.secret)
        self.received.append(w)
        self.out.write(webhook_line(w, self.labels))
        self.out.flush()
        return web.Response(status=200)


class GatewayChild:
    """`whazing-gateway run` in a subprocess, logging to a file in the demo's folder."""

    def __init__(self, workdir: Path, config: Path, web_ui: bool, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.config = config
        self.web = web_ui
        self.env = dict(env)
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "whazing_gateway.cli", "run", "--config", str(self.config)] + (["--web"] if self.web else [])
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # Ctrl-C reaches the demo, which stops it

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        if self._log is not None:
            self._log.close()
            self._log = None


class DemoFailed(Exception):
    """Something the newcomer should read, then exit 1."""


@dataclass
class Demo:
    port: int
    web: bool
    keep: bool
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    start_timeout: float = START_TIMEOUT_S
    delivery_timeout: float = DELIVERY_TIMEOUT_S

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def run(self) -> int:
        from whazing_standin import seed
        from whazing_standin.scenario import play_day
        from whazing_standin.server import start_standin

        try:
            reserved = [_reserve(self.port), _reserve(), _reserve()]
        except OSError:
            self.say(f"port {self.port} is already in use: choose another with --port\n")
            return 1
        metrics_port, web_port = (r.getsockname()[1] for r in reserved[1:])
        workdir = Path(tempfile.mkdtemp(prefix="whazing-demo-"))
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()  # Standard Webhooks form
        web_password = secrets.token_urlsafe(12)
        standin = receiver = gateway = None
        config = workdir / "gateway.yaml"
        ok = False
        try:
            standin = await start_standin()
            receiver = await PrintingReceiver(secret, self.out).start()
            (workdir / "rules").mkdir()
            (workdir / "rules" / "demo.yaml").write_text(rules_yaml(receiver.url(TARGET), secret))
            config.write_text(gateway_yaml(port=self.port, upstream=standin.url, metrics_port=metrics_port,
                                           web_port=web_port, web_password=web_password))
            env = {**os.environ, OBSERVER_EMAIL_ENV: seed.ADMIN_EMAIL, OBSERVER_PASSWORD_ENV: seed.PASSWORD}
            gateway = GatewayChild(workdir, config, self.web, env)
            gateway_url = f"http://127.0.0.1:{self.port}"
            metrics_url = f"http://127.0.0.1:{metrics_port}"
            self.say("whazing-gateway demo\n"
                     f"  Whazing stand-in   {standin.url}  (users {seed.ADMIN_EMAIL}, {seed.AGENT1_EMAIL}, "
                     f"{seed.AGENT2_EMAIL}; password {seed.PASSWORD})\n"
                     f"  gateway            {gateway_url}  -> the stand-in (config in {workdir})\n"
                     f"  outbox             {workdir / 'data' / 'outbox.db'}  (kept after the demo)\n"
                     f"  webhook receiver   {receiver.url(TARGET)}  (rule 'everything': every event, every channel)\n"
                     f"  metrics            {metrics_url}/metrics\n")
            if self.web and viewer_has_password():
                self.say(f"  flow viewer        http://127.0.0.1:{web_port}/  password: {web_password}\n"
                         f"                     (or http://127.0.0.1:{web_port}/?token={web_password})\n")
            elif self.web:
                self.say(f"  flow viewer        http://127.0.0.1:{web_port}/  NO password: this mitmproxy's "
                         f"viewer has none (CVE-2025-23217); loopback only. Python 3.12+ gets one.\n")
            for r in reserved:
                r.close()
            gateway.start()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                await self._wait_started(session, gateway, metrics_url)
                self.say(f"playing a helpdesk day through {gateway_url} ...\n")
                day = await play_day(gateway_url)
                receiver.labels.update({tid: label for label, tid in day.tickets.items()})
                self.say(f"scenario done: {len(day.steps)} steps, tickets "
                         + ", ".join(f"{k} #{v}" for k, v in day.tickets.items()) + "\n")
                metrics = await self._wait_delivered(session, gateway, metrics_url, receiver)
            for line in summary_lines(metrics, receiver.received, receiver.labels):
                self.say(line)
            p = progress(metrics, len(receiver.received))
            ok = p.dead == 0 and all(w.verified for w in receiver.received)
            if not ok:
                self.say("some deliveries failed or were not verified: see the gateway log "
                         f"{gateway.log_path}\n")
            if self.keep:
                await self._hold(gateway)
            return 0 if ok else 1
        except DemoFailed as exc:
            self.say(f"demo failed: {exc}\n")
            if gateway is not None:
                self.say(f"last lines of {gateway.log_path}:\n{gateway.log_tail()}\n")
            return 1
        finally:
            for r in reserved:
                r.close()
            if gateway is not None:
                await gateway.stop()
            if receiver is not None:
                await receiver.stop()
            if standin is not None:
                await standin.stop()
            # Kept, good run or not: the outbox is the demo's record of what was sent.
            self.say(f"the demo's outbox is kept: {workdir / 'data' / 'outbox.db'}\n"
                     f"  look inside:  whazing-gateway deliveries list --config {config}\n"
                     f"  remove it:    rm -r {workdir}\n")

    async def _metrics(self, session: aiohttp.ClientSession, metrics_url: str) -> dict:
        async with session.get(metrics_url + "/metrics") as r:
            return parse_metrics(await r.text())

    async def _wait_started(self, session: aiohttp.ClientSession, gateway: GatewayChild, metrics_url: str) -> None:
        """Ready (proxy listening, outbox open) and the observer connected: nothing is missed."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not gateway.alive:
                raise DemoFailed(f"the gateway exited with code {gateway.returncode}")
            try:
                async with session.get(metrics_url + "/readyz") as r:
                    ready = r.status == 200
                if ready and metric_sum(await self._metrics(session, metrics_url),
                                        "whazing_gateway_observer_connected") >= 1:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
        raise DemoFailed(f"the gateway was not ready within {self.start_timeout:.0f} s")

    async def _wait_delivered(self, session: aiohttp.ClientSession, gateway: GatewayChild, metrics_url: str,
                              receiver: PrintingReceiver) -> dict:
        """Every routed delivery finished (and arrived), with nothing new for QUIET_S."""
        deadline = time.monotonic() + self.delivery_timeout
        last: Progress | None = None
        since = time.monotonic()
        metrics: dict = {}
        while time.monotonic() < deadline:
            if not gateway.alive:
                raise DemoFailed(f"the gateway exited with code {gateway.returncode}")
            try:
                metrics = await self._metrics(session, metrics_url)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.25)
                continue
            p = progress(metrics, len(receiver.received))
            if p != last:
                last, since = p, time.monotonic()
            elif p.settled and time.monotonic() - since >= QUIET_S:
                return metrics
            await asyncio.sleep(0.25)
        p = last or Progress()
        raise DemoFailed(f"deliveries did not all arrive within {self.delivery_timeout:.0f} s: "
                         f"{p.routed} routed, {p.delivered} delivered, {p.dead} dead, {p.pending} pending, "
                         f"{p.received} received")

    async def _hold(self, gateway: GatewayChild) -> None:
        self.say("everything keeps running (the stand-in, the gateway, the receiver); Ctrl-C stops\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and gateway.alive:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        if not gateway.alive:
            self.say(f"the gateway stopped (code {gateway.returncode})\n")
        self.say("stopping\n")


def demo_command(args) -> int:
    # The demo's own output is the receiver's lines and the summary; library logs only if they matter.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    demo = Demo(port=args.port, web=args.web, keep=args.keep)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        sys.stdout.write("interrupted\n")
        return 130
