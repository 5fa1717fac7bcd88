"""Proxy benchmark: direct vs plain mitmdump vs the gateway, REST and websocket, in one run.

What each configuration carries:

  direct     the load generator talks to the upstream itself
  mitmdump   plain `mitmdump --mode reverse:UPSTREAM -q` (the floor the gateway is held to)
  gateway    `python -m whazing_gateway.cli run --config gateway.yaml` with a rule routing every event to
             a local 200 receiver, SQLite outbox on: events are inferred and really delivered

Workloads (one asyncio load generator with fixed concurrency; upstream and receiver each in
their own process; see bench/common.py for the payloads):

  rest       GET /tickets/<1..50> (a ~1.5 KB Ticket the gateway decodes), `--concurrency`
             requests in flight; req/s and request latency
  ws-mixed   `--ws-clients` sockets in one tenant room: every frame broadcast to all of them, 1 in
             3 a `ticketList` event the gateway parses, the rest presence pushes it skips
  ws-paced   as ws-mixed at a fixed `--ws-rate` (broadcasts/s): per-frame latency below saturation
  ws-worst   every frame a distinct `ticketList` event that becomes a webhook, one room per socket
             (no identical copies to skip)

Websocket frames flow with credit (at most `--ws-window` in flight per socket), so frames/s is
the saturated rate and the latency (send time written in the frame by the upstream vs receive
time) is the queueing a browser would see at that rate. Each configuration runs `--seconds`
per workload (after `--warmup`); the configurations of a workload run back to back in an order
that rotates over `--rounds` rounds. Rates and latencies are medians over the rounds; ratios
are medians of each round's ratio (neighbouring runs saw about the same background load).
"proxy CPU/op" is the proxy process's CPU time (all threads, /proc) per request or frame in the
measured window: on a shared, noisy machine it is the steadier measure of the gateway's own
cost. Between gateway runs the bench waits until every routed webhook has reached the
receiver, so a delivery backlog never runs into the next measurement.

    .venv/bin/python -m bench.proxy                 # ~3 minutes on 2 cores
    .venv/bin/python -m bench.proxy --quick         # a few seconds: every row, rough numbers
    .venv/bin/python -m bench.proxy --profile prof  # then py-spy the gateway under websocket load

Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

from bench import common  # noqa: E402

from tests.harness import GatewayProcess, rules_yaml  # noqa: E402
from tests.receivers import free_port  # noqa: E402

CONFIGS = ("direct", "mitmdump", "gateway")
# Not run unless named in --configs: they split the gateway's cost in two.
EXTRA_CONFIGS = ("noop", "gateway-s")
NOOP_ADDON = '''"""A do-nothing addon with the gateway's hooks: what merely having hooks costs."""


class Noop:
    def request(self, flow): pass
    def response(self, flow): pass
    def websocket_message(self, flow): pass


addons = [Noop()]
'''
WORKLOADS = ("rest", "ws-mixed", "ws-paced", "ws-worst")


def note(text: str) -> None:
    """Progress goes to stderr so stdout is only the report."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ---- processes ------------------------------------------------------------------------------


def start_with_port_file(cmd: list[str], workdir: Path, name: str) -> tuple[subprocess.Popen, int]:
    port_file = workdir / f"{name}.port"
    port_file.unlink(missing_ok=True)  # a kept workdir holds the last run's
    log = open(workdir / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd + ["--port-file", str(port_file)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{name} did not start; see {workdir / (name + '.log')}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


async def wait_http(url: str, proc: subprocess.Popen, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": "Bearer " + common.bench_token()}
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"proxy exited with {proc.returncode}")
            try:
                async with s.get(url + "/tickets/1", headers=headers) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} not answering after {timeout}s")


def stop_proc(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen | None = None
    gateway: GatewayProcess | None = None

    @property
    def pid(self) -> int | None:
        if self.gateway is not None and self.gateway.proc is not None:
            return self.gateway.proc.pid
        return self.proc.pid if self.proc is not None else None


class Receiver:
    """tests/receivers.py in its own process: a 200 receiver logging one line per webhook."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "received.log"
        self.proc, port = start_with_port_file(
            [sys.executable, str(ROOT / "tests" / "receivers.py"), "--log", str(self.log)], workdir, "receiver")
        self.url = f"http://127.0.0.1:{port}/webhook"

    def count(self) -> int:
        if not self.log.exists():
            return 0
        with open(self.log, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


# ---- load ---------------------------------------------------------------------------------


@dataclass
class Sample:
    per_s: float
    p50_ms: float
    p99_ms: float
    count: int
    errors: int = 0
    cpu_us: float = 0.0  # proxy CPU per request or frame (0 for direct)


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class Window:
    """The measured part of a run: after the warm-up, for `seconds`; also the proxy's CPU in it.

    CPU seconds per request or frame barely depend on what else the machine runs, unlike
    rates, so they are the steadier measure of the gateway's own cost on a shared machine.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.measuring = False
        self.stopping = False
        self.t0 = self.t1 = 0.0
        self.cpu = 0.0

    async def run(self, warmup: float, seconds: float) -> None:
        await asyncio.sleep(warmup)
        cpu0 = proc_cpu(self.pid)
        self.measuring, self.t0 = True, time.monotonic()
        await asyncio.sleep(seconds)
        self.measuring, self.t1 = False, time.monotonic()
        self.cpu = proc_cpu(self.pid) - cpu0
        self.stopping = True

    def sample(self, lat: list[float], errors: int) -> "Sample":
        n = len(lat)
        return Sample(n / (self.t1 - self.t0), common.pct(lat, 50) * 1000, common.pct(lat, 99) * 1000, n, errors,
                      self.cpu * 1e6 / n if self.pid and n else 0.0)


async def rest_load(url: str, seconds: float, warmup: float, concurrency: int, pid: int | None = None) -> Sample:
    window = Window(pid)
    lat: list[float] = []
    errors = 0
    headers = {"Authorization": "Bearer " + common.bench_token(), "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as s:

        async def worker(i: int) -> None:
            nonlocal errors
            n = i
            while not window.stopping:
                t = time.perf_counter()
                try:
                    async with s.get(f"{url}/tickets/{n % 50 + 1}") as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if window.measuring:
                    if ok:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors += 1
                n += concurrency

        workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await window.run(warmup, seconds)
        await asyncio.wait_for(asyncio.gather(*workers), 30)
    return window.sample(lat, errors)


async def ws_load(url: str, mode: str, seconds: float, warmup: float, clients: int, window_frames: int,
                  run_id: str, rate: float = 0.0, pid: int | None = None, on_frame=None) -> Sample:
    window = Window(pid)
    lat: list[float] = []
    errors = 0
    half = max(1, window_frames // 2)
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    token = common.bench_token()
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal errors
        room, members = (f"{run_id}w{i}", 1) if mode == "worst" else (f"{run_id}m", clients)
        ws = await session.ws_connect(ws_url, max_msg_size=0, autoping=True)
        sockets.append(ws)
        got = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    errors += 1
                break
            text = msg.data
            if text[:2] == "42":
                got += 1
                if on_frame is not None:
                    on_frame(i, text)
                if window.measuring:
                    lat.append(time.time() - common.sent_at(text))
                if got % half == 0 and not window.stopping:
                    await ws.send_str('42["bench:credit",%d]' % half)
            elif text[:2] == "40":
                await ws.send_str('42["bench:start",%s]' % json.dumps({"mode": mode, "room": room, "members": members,
                                                                       "rate": rate if mode == "paced" else 0.0}))
                await ws.send_str('42["bench:credit",%d]' % window_frames)
            elif text[:1] == "0":
                await ws.send_str("40" + json.dumps({"token": token}))
            elif text == "2":
                await ws.send_str("3")

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(clients)]
        await window.run(warmup, seconds)
        for ws in list(sockets):
            try:
                await asyncio.wait_for(ws.close(), 5)
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                pass
        done, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                errors += 1
    return window.sample(lat, errors)


# ---- gateway bookkeeping --------------------------------------------------------------------

_METRIC = re.compile(r"^(whazing_gateway_[a-z_]+?)(?:_total)?(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


async def gateway_counters(gw: GatewayProcess) -> dict[str, float]:
    """Sums of the gateway's counters (labels folded)."""
    out: dict[str, float] = defaultdict(float)
    for name, value in _METRIC.findall(await gw.metrics()):
        out[name.removeprefix("whazing_gateway_")] += float(value)
    return out


async def drain(gw: GatewayProcess, receiver: Receiver, timeout: float,
                since: dict | None = None) -> tuple[float, dict]:
    """Wait until the pipeline has stopped producing and every routed webhook has arrived.

    `since`: the counters before a load that makes observations (the websocket workloads): the
    pipeline process must have reported some beyond them (one gateway serves every workload)."""
    t0 = time.monotonic()
    last = None
    stable = 0
    while True:
        c = await gateway_counters(gw)
        routed = c.get("deliveries_routed", 0.0)
        # the pipeline process reports its counts every half second while busy: unchanged for
        # two polls in a row (1 s) with nothing left in its journal means it is done
        state = (c.get("observations", 0.0), c.get("events", 0.0), routed)
        stable = stable + 1 if state == last else 0
        # ...and has reported at all: a pipeline process starved of CPU (it runs in the idle
        # class; CI runs four suites beside it) has not yet said anything, journal_bytes included
        floor = since.get("observations", 0.0) if since is not None else 0.0
        if (stable >= 2 and c.get("observations", 0.0) > floor and c.get("journal_bytes", 0.0) == 0
                and receiver.count() >= routed):
            break
        if time.monotonic() - t0 > timeout:
            note(f"  drain: gave up after {timeout:.0f}s (received {receiver.count()} of {routed:.0f})")
            break
        last = state
        await asyncio.sleep(0.5)
    return time.monotonic() - t0, c


# ---- the run --------------------------------------------------------------------------------


async def run_bench(args, workdir: Path) -> dict:
    load_before = os.getloadavg()[0]
    up_proc, up_port = start_with_port_file([sys.executable, "-m", "bench.common", "upstream"],
                                            workdir, "upstream")
    upstream = f"http://127.0.0.1:{up_port}"
    receiver = Receiver(workdir)
    targets: dict[str, Target] = {}
    try:
        await wait_http(upstream, up_proc)
        for name in args.configs:
            if name == "direct":
                targets[name] = Target(name, upstream)
            elif name in ("mitmdump", "noop"):
                port = free_port()
                mitmdump = str(Path(sys.executable).parent / "mitmdump")
                extra = []
                if name == "noop":
                    (workdir / "noop_addon.py").write_text(NOOP_ADDON)
                    extra = ["-s", str(workdir / "noop_addon.py")]
                proc = subprocess.Popen([mitmdump, "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1",
                                         "-p", str(port), "-q", *extra],
                                        stdout=open(workdir / f"{name}.log", "ab"), stderr=subprocess.STDOUT)
                targets[name] = Target(name, f"http://127.0.0.1:{port}", proc=proc)
                await wait_http(targets[name].url, proc)
            elif name in ("gateway", "gateway-s"):
                env = {k: v for k, v in os.environ.items() if not k.startswith("WHAZING_OBSERVER")}
                gw = GatewayProcess(workdir / name, upstream, rules_yaml(receiver.url), env=env,
                                    plain_mitmdump=name == "gateway-s")
                await gw.start(timeout=60)
                targets[name] = Target(name, gw.url, gateway=gw)
                await wait_http(gw.url, gw.proc)
        note(f"upstream {upstream}; " + ", ".join(f"{t.name} {t.url}" for t in targets.values()))
        idle = await idle_cpu(targets, args.idle_seconds)

        samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        gw_work: dict[str, list[dict]] = defaultdict(list)
        runs = 0
        for r in range(args.rounds):
            # the configurations of one workload run back to back, in a rotating order, so a
            # round's ratios compare runs that saw about the same background load
            order = list(args.configs[r % len(args.configs):]) + list(args.configs[:r % len(args.configs)])
            for wl in args.workloads:
                for name in order:
                    t = targets[name]
                    runs += 1
                    s, work = await one_run(args, t, wl, receiver, f"{os.getpid()}n{runs}")
                    samples[(wl, name)].append(s)
                    if work:
                        gw_work[f"{name} {wl}"].append(work)
                    note(f"round {r + 1}/{args.rounds} {wl:8} {name:8} {s.per_s:8.0f}/s p50 {s.p50_ms:6.1f} ms "
                         f"p99 {s.p99_ms:6.1f} ms" + (f" cpu {s.cpu_us:5.0f} us" if s.cpu_us else "")
                         + (f" errors {s.errors}" if s.errors else "")
                         + (f" | events {work['events']:.0f} delivered {work['delivered']:.0f} "
                            f"drain {work['drain_s']:.1f}s" if work else ""))

        profile = None
        if args.profile:
            profile = {}
            for name in args.profile_configs:
                if name in targets and name != "direct":
                    for wl, summary in (await run_profile(args, targets[name], receiver, Path(args.profile))).items():
                        profile[f"{name} {wl}"] = summary
        result = report(args, samples, gw_work, profile)
        result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["idle_cpu_pct"] = idle
        return result
    finally:
        for t in targets.values():
            if t.gateway is not None:
                await t.gateway.stop()
            stop_proc(t.proc)
        stop_proc(receiver.proc)
        stop_proc(up_proc)


async def idle_cpu(targets: dict[str, Target], seconds: float) -> dict[str, float]:
    """Each proxy's CPU use with no traffic (timers, polls): a floor under every CPU/op figure."""
    pids = {name: t.pid for name, t in targets.items() if t.pid is not None}
    before = {name: proc_cpu(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - t0
    return {name: round(100 * (proc_cpu(pid) - before[name]) / wall, 2) for name, pid in pids.items()}


def child_pids(gw: GatewayProcess | None) -> list[int]:
    """The gateway's pipeline process and delivery worker (the latest of each), from its log."""
    if gw is None:
        return []
    latest: dict[str, int] = {}
    for r in gw.log_records():
        if r.get("event") in ("pipeline.spawned", "deliver_worker.spawned"):
            latest[r["event"]] = r["pid"]
    return list(latest.values())


async def _load(args, t: Target, wl: str, run_id: str) -> Sample:
    if wl == "rest":
        return await rest_load(t.url, args.seconds, args.warmup, args.concurrency, t.pid)
    return await ws_load(t.url, wl.removeprefix("ws-"), args.seconds, args.warmup, args.ws_clients,
                         args.ws_window, run_id, args.ws_rate, t.pid)


async def one_run(args, t: Target, wl: str, receiver: Receiver, run_id: str) -> tuple[Sample, dict | None]:
    before = await gateway_counters(t.gateway) if t.gateway else None
    received0 = receiver.count()
    children = child_pids(t.gateway)
    children_cpu0 = sum(proc_cpu(p) for p in children)
    if args.pause_children:  # the proxy process's own cost, with nothing else of the gateway's running
        for p in children:
            os.kill(p, signal.SIGSTOP)
    try:
        s = await _load(args, t, wl, run_id)
    finally:
        if args.pause_children:
            for p in children:
                os.kill(p, signal.SIGCONT)
    if t.gateway is None:
        return s, None
    cpu0 = proc_cpu(t.pid)
    drain_s, after = await drain(t.gateway, receiver, args.drain_timeout,
                                 since=before if wl.startswith("ws-") else None)
    work = {k: after.get(k, 0.0) - before.get(k, 0.0)
            for k in ("observations", "events", "deliveries_routed", "observations_dropped", "stage_errors",
                      "decode_errors")}
    work["delivered"] = receiver.count() - received0
    work["drain_s"] = drain_s
    work["drain_cpu_s"] = proc_cpu(t.pid) - cpu0
    # what left the proxy's process still costs CPU: the pipeline process and delivery worker
    work["children_cpu_s"] = sum(proc_cpu(p) for p in children) - children_cpu0
    return s, work


# ---- long window: drops and frame-to-webhook lag over minutes ---------------------------------

_MSG_ID = re.compile(r'"chat:create","payload":\{"id":"([^"]+)"')
_WEBHOOK_TS = re.compile(r'"timestamp":\s*(\d{13})')
_WEBHOOK_MSG = re.compile(r'"message":\{"id":"([^"]+)"')


def received_messages(log: Path, offset: int) -> tuple[dict[str, float], int]:
    """message.received webhooks in the receiver's log after `offset`: {message id: frame-to-webhook lag}."""
    lags: dict[str, float] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for raw in f:
            wid, _, rest = raw.decode(errors="replace").partition("\t")
            arrived, _, body = rest.partition("\t")
            if "message.received" not in body:
                continue
            m = _WEBHOOK_TS.search(body)
            mid = _WEBHOOK_MSG.search(body)
            key = mid.group(1) if mid else wid
            if m and key not in lags:
                lags[key] = float(arrived) - int(m.group(1)) / 1000
        end = f.tell()
    return lags, end


async def run_window(args, workdir: Path) -> dict:
    """One workload for `--window` seconds through the gateway, then wait for the backlog: how
    many message events were lost (frames the clients got vs message webhooks the receiver got),
    records dropped, and frame-to-webhook lag (the frame's send time, carried in the message's
    `timestamp`, to the webhook's arrival at the receiver)."""
    wl = next((w for w in args.workloads if w in ("ws-mixed", "ws-worst")), "ws-mixed")
    load_before = os.getloadavg()[0]
    up_proc, up_port = start_with_port_file([sys.executable, "-m", "bench.common", "upstream"], workdir, "upstream")
    upstream = f"http://127.0.0.1:{up_port}"
    receiver = Receiver(workdir)
    gw = None
    try:
        await wait_http(upstream, up_proc)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHAZING_OBSERVER")}
        gw = GatewayProcess(workdir / "gateway", upstream, rules_yaml(receiver.url), env=env)
        await gw.start(timeout=60)
        await wait_http(gw.url, gw.proc)
        before = await gateway_counters(gw)
        offset = receiver.log.stat().st_size if receiver.log.exists() else 0
        messages: set[str] = set()

        def on_frame(client: int, text: str) -> None:
            if '"chat:create"' in text[:40]:
                m = _MSG_ID.search(text[:120])
                if m and not bool(re.search(r'"fromMe":true', text)):
                    messages.add(m.group(1))

        note(f"long window: {wl} for {args.window:g} s through {gw.url}")
        t0 = time.monotonic()
        s = await ws_load(gw.url, wl.removeprefix("ws-"), args.window, 0.0, args.ws_clients, args.ws_window,
                          f"{os.getpid()}L", args.ws_rate, gw.proc.pid, on_frame=on_frame)
        load_s = time.monotonic() - t0
        note(f"  load done: {s.count} frames, {s.per_s:.0f}/s; {len(messages)} distinct inbound messages; draining")
        # the backlog: until every message arrived or nothing moved for a minute
        last, still_since = -1, time.monotonic()
        t_drain = time.monotonic()
        while True:
            got, _ = received_messages(receiver.log, offset) if receiver.log.exists() else ({}, 0)
            if messages <= got.keys():
                break
            if len(got) != last:
                last, still_since = len(got), time.monotonic()
            elif time.monotonic() - still_since > args.drain_timeout:
                note(f"  drain: nothing new for {args.drain_timeout:.0f} s; stopping")
                break
            await asyncio.sleep(1.0)
        drain_s = time.monotonic() - t_drain
        after = await gateway_counters(gw)
        lags = sorted(got.values())
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in
                 ("events", "records_dropped", "observations_dropped", "record_errors", "outbox_retries")}
        return {
            "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "workload": wl, "window_s": args.window, "load_s": round(load_s, 1), "frames": s.count,
            "frames_per_s": round(s.per_s, 1), "frame_p50_ms": round(s.p50_ms, 1), "frame_p99_ms": round(s.p99_ms, 1),
            "proxy_cpu_us_per_frame": round(s.cpu_us, 1),
            "messages_sent": len(messages), "messages_delivered": len(got),
            # a message the clients saw with no webhook (the gateway may also deliver a few that
            # the proxy passed on while the clients were closing: counted in delivered, not lost)
            "messages_lost": len(messages - got.keys()), "drain_s": round(drain_s, 1),
            "lag_p50_s": round(common.pct(lags, 50), 3) if lags else None,
            "lag_p99_s": round(common.pct(lags, 99), 3) if lags else None,
            "lag_max_s": round(lags[-1], 3) if lags else None,
            **{k: round(v) for k, v in delta.items()},
        }
    finally:
        if gw is not None:
            await gw.stop()
        stop_proc(receiver.proc)
        stop_proc(up_proc)


def window_text(r: dict) -> str:
    return (f"{r['machine']}, load average {r['load_avg'][0]} before / {r['load_avg'][1]} after\n"
            f"long window: {r['workload']} for {r['window_s']:g} s ({r['load_s']} s with the clients' last frames)\n\n"
            "| frames | frames/s | frame p50 / p99 ms | proxy CPU/frame | inbound messages | webhooks received | lost "
            "| records dropped | record errors | outbox retries | frame-to-webhook p50 / p99 / max s | drain s |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {r['frames']} | {r['frames_per_s']:.0f} | {r['frame_p50_ms']} / {r['frame_p99_ms']} | "
            f"{r['proxy_cpu_us_per_frame']:.0f} us | {r['messages_sent']} | {r['messages_delivered']} | "
            f"{r['messages_lost']} | {r['records_dropped'] or r['observations_dropped']} | {r['record_errors']} | "
            f"{r['outbox_retries']} | {r['lag_p50_s']} / {r['lag_p99_s']} / {r['lag_max_s']} | {r['drain_s']} |\n")


# ---- profile --------------------------------------------------------------------------------

_RATE = 250  # py-spy samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


async def run_profile(args, t: Target, receiver: Receiver, outdir: Path) -> dict:
    """py-spy a proxy while each workload runs; summarize where its GIL time went."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy (not a project dependency)")
    outdir.mkdir(parents=True, exist_ok=True)
    result = {}
    for wl in [w for w in args.workloads if w.startswith("ws-")] + (["rest"] if "rest" in args.workloads else []):
        raw = outdir / f"{t.name}-{wl}.txt"
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(t.pid), "--duration", str(int(args.profile_seconds)),
                                     "--rate", str(_RATE), "--gil", "--format", "raw", "--nonblocking", "--output", str(raw)],
                                    stdout=subprocess.DEVNULL, stderr=open(outdir / "py-spy.log", "ab"))
        await asyncio.sleep(0.5)
        s, work = await one_run(argparse.Namespace(**{**vars(args), "seconds": args.profile_seconds, "warmup": 0.0}),
                                t, wl, receiver, f"{os.getpid()}prof{wl}")
        await asyncio.to_thread(spy_proc.wait, 60)
        note(f"profile {t.name} {wl}: {s.per_s:.0f}/s while sampled -> {raw}")
        result[wl] = summarize_profile(raw, args.profile_top, _RATE * args.profile_seconds) | {"per_s": s.per_s, "work": work}
    return result


_ENTRY = ("whazing_gateway/cli/__init__.py", "whazing_gateway/edge/runner.py")  # every stack of the main thread starts here


def summarize_profile(raw: Path, top: int, core_samples: float) -> dict:
    """Collapsed stacks -> where the process's GIL time went, in % of one core.

    Sampled with `--gil`: only the thread holding the GIL is recorded, so the shares are the
    Python work that competes with the proxy's event loop (SQLite's C code and fsync, which
    release the GIL, do not show). `core_samples` is rate x duration: a GIL held all the time.
    """
    total = 0
    areas: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    self_: dict[str, int] = defaultdict(int)
    if not raw.exists():
        return {"samples": 0}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f)
            frames.append((m["func"], m["file"]) if m else (f, ""))
        ours = [fr for fr in frames if fr[1].startswith("whazing_gateway/") and not fr[1].startswith(_ENTRY)]
        if any(func.endswith("._worker") and file == "whazing_gateway/outbox/sqlite.py" for func, file in frames):
            area = "outbox thread (sqlite, off the event loop)"
        elif ours:
            area = "whazing_gateway/ in the proxy process (our code, inclusive)"
        elif any(file.startswith("mitmproxy/") for _, file in frames):
            area = "mitmproxy (proxying itself)"
        else:
            area = "event loop, sockets and other libraries"
        areas[area] += n
        seen = set()
        for func, file in ours:
            key = f"{func} ({file.removeprefix('whazing_gateway/')})"
            if key not in seen:
                incl[key] += n
                seen.add(key)
        if ours:
            func, file = ours[-1]
            self_[f"{func} ({file.removeprefix('whazing_gateway/')})"] += n

    def share(v: int) -> float:
        return round(100.0 * v / core_samples, 1) if core_samples else 0.0

    return {
        "samples": total,
        "cpu_pct_of_core": share(total),
        "areas": {k: share(v) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])},
        "inclusive": [(k, share(v)) for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:top]],
        "self_below": [(k, share(v)) for k, v in sorted(self_.items(), key=lambda kv: -kv[1])[:top]],
    }


# ---- report -------------------------------------------------------------------------------


def _paired(a: list[Sample], b: list[Sample], key) -> float | None:
    """Median over rounds of a[i]/b[i]: each round's runs are neighbours in time."""
    ratios = [key(x) / key(y) for x, y in zip(a, b) if key(y)]
    return round(common.median(ratios), 3) if ratios else None


def report(args, samples, gw_work, profile) -> dict:
    rows = []
    for wl in args.workloads:
        for name in args.configs:
            ss = samples[(wl, name)]
            base = {c: samples[(wl, c)] for c in ("mitmdump", "direct") if c in args.configs}
            rows.append({
                "workload": wl, "config": name,
                "per_s": round(common.median([s.per_s for s in ss]), 1),
                "p50_ms": round(common.median([s.p50_ms for s in ss]), 2),
                "p99_ms": round(common.median([s.p99_ms for s in ss]), 2),
                "count": sum(s.count for s in ss), "errors": sum(s.errors for s in ss),
                "vs_mitmdump": _paired(ss, base["mitmdump"], lambda s: s.per_s) if "mitmdump" in base else None,
                "vs_direct": _paired(ss, base["direct"], lambda s: s.per_s) if "direct" in base else None,
                "cpu_us": round(common.median([s.cpu_us for s in ss]), 1) if name != "direct" else None,
                "cpu_vs_mitmdump": _paired(ss, base["mitmdump"], lambda s: s.cpu_us)
                if name != "direct" and "mitmdump" in base else None,
                "rounds": [round(s.per_s, 1) for s in ss],
            })
    work = {wl: {k: round(common.median([w[k] for w in ws]), 2) for k in ws[0]} for wl, ws in gw_work.items()}
    return {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
            "args": {k: v for k, v in vars(args).items()}, "rows": rows, "gateway_work": work, "profile": profile}


def markdown(result: dict) -> str:
    unit = {"rest": "req/s", "ws-mixed": "frames/s", "ws-paced": "frames/s", "ws-worst": "frames/s"}

    def ratio(v):
        return f"{v:.2f}x" if v is not None else "-"

    out = ["| workload | config | rate | p50 ms | p99 ms | vs mitmdump | vs direct | proxy CPU/op | CPU vs mitmdump | rounds |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        cpu = f"{r['cpu_us']:.0f} us" if r["cpu_us"] else "-"
        out.append(f"| {r['workload']} | {r['config']} | {r['per_s']:.0f} {unit[r['workload']]} | {r['p50_ms']:.1f} | "
                   f"{r['p99_ms']:.1f} | {ratio(r['vs_mitmdump'])} | {ratio(r['vs_direct'])} | {cpu} | "
                   f"{ratio(r['cpu_vs_mitmdump'])} | {' / '.join(f'{x:.0f}' for x in r['rounds'])} |")
    if result["gateway_work"]:
        out += ["", "Gateway work per run (median): observations decoded, events inferred, webhooks routed and"
                " received, observations dropped (no room), seconds (and proxy CPU seconds) to deliver"
                " the backlog after the load stopped, CPU seconds of the pipeline process and delivery worker"
                " over the run and the drain.", "",
                "| config, workload | observations | events | routed | delivered | dropped | errors | drain s | drain CPU s "
                "| pipeline + worker CPU s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for wl, w in result["gateway_work"].items():
            out.append(f"| {wl} | {w['observations']:.0f} | {w['events']:.0f} | {w['deliveries_routed']:.0f} | "
                       f"{w['delivered']:.0f} | {w['observations_dropped']:.0f} | "
                       f"{w['stage_errors'] + w['decode_errors']:.0f} | {w['drain_s']:.1f} | {w['drain_cpu_s']:.2f} | "
                       f"{w.get('children_cpu_s', 0):.2f} |")
    for wl, p in (result.get("profile") or {}).items():
        out += ["", f"Profile of {wl} ({p['per_s']:.0f}/s while sampled; "
                f"GIL held {p.get('cpu_pct_of_core', 0)}% of the time, {p['samples']} samples), in % of wall time:", ""]
        out += [f"- {area}: {share}%" for area, share in p.get("areas", {}).items()]
        out += ["", "| whazing_gateway/ function (inclusive) | % of time |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in p.get("inclusive", [])]
        out += ["", "| innermost whazing_gateway/ frame (self + callees outside it) | % of time |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in p.get("self_below", [])]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--seconds", type=float, default=2.5, help="measured seconds per configuration and workload (default 2.5)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of load before measuring (default 0.5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, configurations alternating; medians reported (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="REST requests in flight (default 8)")
    p.add_argument("--ws-clients", type=int, default=4, help="websocket connections (default 4, like 4 open tabs)")
    p.add_argument("--ws-window", type=int, default=16, help="frames in flight per websocket (default 16)")
    p.add_argument("--ws-rate", type=float, default=50.0,
                   help="ws-paced: broadcasts/s (each reaches every websocket; default 50)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)} (also: noop = mitmdump -s a do-nothing addon"
                   " with the same hooks; gateway-s = mitmdump -q -s whazing_gateway/edge/addon.py)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--idle-seconds", type=float, default=3.0, help="seconds of no traffic to measure idle CPU (default 3)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="max seconds to wait for the gateway's backlog")
    p.add_argument("--quick", action="store_true", help="1 round of 0.5 s per row: checks the bench, not the gateway")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--workdir", metavar="DIR", help="keep configs and logs here (default: a temporary folder)")
    p.add_argument("--profile", metavar="DIR", help="after the table, py-spy each proxy of --profile-configs under each workload; raw stacks to DIR")
    p.add_argument("--profile-configs", default="gateway",
                   help="comma list of the proxies to profile (default gateway; e.g. mitmdump,gateway)")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="seconds sampled per workload (default 10)")
    p.add_argument("--profile-top", type=int, default=15, help="functions listed per profile (default 15)")
    p.add_argument("--pause-children", action="store_true",
                   help="diagnosis: SIGSTOP the gateway's pipeline process and delivery worker while each load runs "
                   "(records wait in the journal): what the proxy process costs by itself")
    p.add_argument("--window", type=float, default=0.0, metavar="SECONDS",
                   help="long-window mode: the first ws workload of --workloads (ws-mixed unless ws-worst is "
                   "named) through the gateway for SECONDS (e.g. 600), then report message events lost, records "
                   "dropped and frame-to-webhook lag p50/p99, counted at a real receiver")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.profile_configs = [c for c in args.profile_configs.split(",") if c]
    bad = [c for c in args.configs + args.profile_configs if c not in CONFIGS + EXTRA_CONFIGS] + \
        [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        build_parser().error(f"unknown config or workload: {', '.join(bad)}")
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.idle_seconds = 0.5, 0.2, 1, 0.5
        args.profile_seconds = min(args.profile_seconds, 2.0)
    if args.window:
        with tempfile.TemporaryDirectory(prefix="wgw-bench-") as tmp:
            workdir = Path(args.workdir or tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            wresult = asyncio.run(run_window(args, workdir))
        sys.stdout.write(window_text(wresult))
        if args.json:
            Path(args.json).write_text(json.dumps(wresult, indent=2, default=str))
        return 0 if wresult["messages_lost"] == 0 else 1
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run_bench(args, workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="wgw-bench-") as tmp:
            result = asyncio.run(run_bench(args, Path(tmp)))
    sys.stdout.write(f"{result['machine']}, load average {result['load_avg'][0]} before / {result['load_avg'][1]} after; "
                     f"{args.rounds} round(s) x {args.seconds:g} s; REST concurrency {args.concurrency}; "
                     f"{args.ws_clients} websockets, window {args.ws_window}, paced {args.ws_rate:g} broadcasts/s\n")
    sys.stdout.write("idle CPU (no traffic): " + ", ".join(f"{k} {v:g}%" for k, v in result["idle_cpu_pct"].items())
                     + "\n\n")
    sys.stdout.write(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
