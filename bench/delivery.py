"""Delivery benchmark: webhooks/s to a local receiver and event-to-delivery latency, outbox on.

The gateway's delivery path exactly (SqliteOutbox in WAL mode, synchronous=FULL, -> Sender,
signed with a whsec_ secret), feeding a logging aiohttp receiver that runs in its own process
on 127.0.0.1. Two runs:

  burst   N events put as fast as the outbox accepts them (one put per event, concurrently, as
          the pipeline does): throughput = N / (last arrival - first put).
  steady  events at a fixed rate, one put each: event-to-delivery latency (receiver arrival time
          minus the event time) p50/p99; the throughput run's latencies include queueing.

    .venv/bin/python -m bench.delivery [--count 5000] [--rate 200] [--seconds 5] [--unordered]

Prints a small markdown table. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from whazing_gateway import model  # noqa: E402
from whazing_gateway.deliver import signing  # noqa: E402
from whazing_gateway.deliver.sender import Sender  # noqa: E402
from whazing_gateway.outbox.sqlite import SqliteOutbox  # noqa: E402

TARGET = "bench"


def start_receiver(workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    port_file, log_file = workdir / "port", workdir / "received.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "receivers.py"), "--port-file", str(port_file),
                             "--log", str(log_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("receiver did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/webhook", log_file


def read_log(log_file: Path) -> dict[str, tuple[float, float]]:
    """webhook-id -> (first arrival, event time)."""
    out: dict[str, tuple[float, float]] = {}
    if not log_file.exists():
        return out
    for line in log_file.read_text().splitlines():
        try:
            wid, at, body = line.split("\t", 2)
            created = json.loads(body)["created_at"]
        except ValueError:
            continue
        if wid not in out:
            out[wid] = (float(at), float(created))
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def run(phase: str, url: str, log_file: Path, workdir: Path, args) -> dict:
    outbox = SqliteOutbox(workdir / f"{phase}.db")
    await outbox.open()
    target = model.Target(name=TARGET, url=url, secrets=(signing.new_secret(),), api_key="bench",
                          concurrency=args.concurrency)
    sender = Sender(outbox, lambda: {TARGET: target}, per_ticket_order=not args.unordered, poll_interval=0.05)
    await sender.start()
    ids: list[str] = []

    async def one(seq: int) -> None:
        now = time.time()
        ticket = seq % args.tickets
        d = model.Delivery(
            id=model.Delivery.make_id(f"{phase}_{seq}", TARGET), target=TARGET, event_id=f"{phase}_{seq}",
            event_type=model.MESSAGE_RECEIVED, order_key=f"1:{ticket}", created_at=now, ticket_id=ticket,
            body=json.dumps({"created_at": now, "seq": seq, "messageBody": "x" * 200}).encode(),
        )
        await outbox.put([d])
        ids.append(d.id)
        sender.wake()

    t0 = time.time()
    if phase == "burst":
        await asyncio.gather(*(one(i) for i in range(args.count)))
    else:
        n = int(args.rate * args.seconds)
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(max(0.0, t0 + (i + 1) / args.rate - time.time()))
        await asyncio.gather(*tasks)
    accepted_s = time.time() - t0
    deadline = time.monotonic() + 300
    while await outbox.pending_count() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sender.stop()
    await outbox.close()
    await asyncio.sleep(0.2)  # the receiver's log lines are flushed per request
    got = read_log(log_file)
    mine = [got[i] for i in ids if i in got]
    last = max(at for at, _ in mine)
    lat = [(at - created) * 1000 for at, created in mine]
    return {
        "phase": phase, "events": len(ids), "delivered": len(mine), "accept_per_s": len(ids) / accepted_s,
        "per_s": len(mine) / (last - t0), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
    }


async def main_async(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url, log_file = start_receiver(workdir)
        try:
            results = [await run("burst", url, log_file, workdir, args),
                       await run("steady", url, log_file, workdir, args)]
        finally:
            proc.terminate()
            proc.wait(10)
    sys.stdout.write(f"\nDelivery bench ({os.cpu_count()} cores, sqlite WAL synchronous=FULL, signed, "
                     f"concurrency {args.concurrency}, {args.tickets} tickets, "
                     f"{'unordered' if args.unordered else 'per-ticket order'})\n\n")
    sys.stdout.write("| run | events | delivered | accepted/s | webhooks/s | event-to-delivery p50 | p99 |\n")
    sys.stdout.write("|---|---:|---:|---:|---:|---:|---:|\n")
    for r in results:
        label = "burst" if r["phase"] == "burst" else f"steady {args.rate:g}/s"
        sys.stdout.write(f"| {label} | {r['events']} | {r['delivered']} | {r['accept_per_s']:.0f} | {r['per_s']:.0f} "
                         f"| {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |\n")
    return 0 if all(r["delivered"] == r["events"] for r in results) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=5000, help="events in the burst run")
    p.add_argument("--rate", type=float, default=200, help="events per second in the steady run")
    p.add_argument("--seconds", type=float, default=5, help="length of the steady run")
    p.add_argument("--tickets", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--unordered", action="store_true")
    args = p.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
