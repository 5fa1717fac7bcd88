"""Events/s end to end with 1, 2 and 3 replicas sharing one Redis.

Each replica is a real process (tests/redis_replica.py): it puts its share of N deliveries into
the shared RedisOutbox (as the pipeline does) and its real Sender delivers them to a logging
receiver in another process. Measured: N / (last arrival - start), per replica count.

    .venv/bin/python -m bench.replicas [--n 3000] [--replicas 1 2 3] [--order-keys 50]

Needs `redis-server` on PATH (a private instance on a free port is started and stopped).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from tests.redis_server import RedisServer  # noqa: E402


def wait_file(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.05)


def arrivals(log: Path) -> list[float]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out.append(float(parts[1]))
    return out


def run(n: int, replicas: int, order_keys: int, redis_url: str, tmp: Path) -> tuple[float, int]:
    run_dir = tmp / f"r{replicas}"
    run_dir.mkdir()
    port_file, log = run_dir / "receiver.port", run_dir / "receiver.log"
    receiver = subprocess.Popen([sys.executable, str(ROOT / "tests" / "receivers.py"), "--port-file", str(port_file),
                                 "--log", str(log)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: list[subprocess.Popen] = []
    try:
        wait_file(port_file)
        url = f"http://127.0.0.1:{port_file.read_text()}/hook"
        per = n // replicas
        readies = []
        for k in range(replicas):
            # Start consumers first (no production yet) so every replica is warm before timing.
            ready = run_dir / f"rep{k}.ready"
            readies.append(ready)
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "redis_replica.py"), "--redis", redis_url,
                 "--prefix", f"bench{replicas}", "--target-url", url, "--ready", str(ready),
                 "--spool", str(run_dir / f"rep{k}.spool.db"), "--order-keys", str(order_keys),
                 "--produce", f"{k * per}:{(k + 1) * per}", "--batch", "20", "--concurrency", "16"],
                cwd=ROOT, stdout=open(run_dir / f"rep{k}.log", "w"), stderr=subprocess.STDOUT))
        for ready in readies:
            wait_file(ready)
        start = min(ready.stat().st_mtime for ready in readies)
        total = per * replicas
        deadline = time.monotonic() + 300
        while len(arrivals(log)) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(arrivals(log))}/{total} delivered with {replicas} replicas")
            time.sleep(0.2)
        last = max(arrivals(log))
        return total / max(1e-6, last - start), total
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        receiver.terminate()
        receiver.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--order-keys", type=int, default=50, help="tickets the deliveries are spread over")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with RedisServer(tmp / "redis") as redis:
            sys.stdout.write(f"N={args.n} deliveries over {args.order_keys} tickets, {os.cpu_count()} CPUs\n")
            sys.stdout.write("replicas  events/s\n")
            for r in args.replicas:
                rate, total = run(args.n, r, args.order_keys, redis.url, tmp)
                sys.stdout.write(f"{r:>8}  {rate:>8.0f}   ({total} delivered)\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
