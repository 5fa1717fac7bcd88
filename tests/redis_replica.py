"""One outbox replica in its own process: the real Sender working from a shared RedisOutbox.

For the multi-process tests (kill -9 mid-load, Redis restart) and bench/replicas.py:

    python tests/redis_replica.py --redis URL --prefix P --target-url URL --ready FILE \
        [--produce FROM:TO] [--order-keys N] [--heartbeat-ttl S] [--spool FILE] [--go FILE]

It writes FILE once its outbox is open (with its replica id). With --produce it also plays the
pipeline: puts deliveries msg_FROM..msg_TO-1 (order key = index % N), appending each accepted
id to FILE.accepted once `put` returned (with --go, only once that file exists, so that replicas
started together also produce together). It runs until SIGTERM/SIGINT (or is killed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from whazing_gateway import model  # noqa: E402
from whazing_gateway.deliver.sender import Sender  # noqa: E402
from whazing_gateway.outbox.redis import RedisOutbox  # noqa: E402


def delivery(i: int, order_keys: int, target: str = "recv") -> model.Delivery:
    key = f"1:{i % order_keys}" if order_keys else None
    return model.Delivery(
        id=f"msg_{i}", target=target, event_id=f"evt_{i}", event_type=model.MESSAGE_RECEIVED,
        order_key=key, body=f'{{"i":{i},"key":"{key}"}}'.encode(), created_at=time.time(),
        ticket_id=i % order_keys if order_keys else None,
    )


async def produce(outbox: RedisOutbox, start: int, stop: int, order_keys: int, accepted_path: str,
                  batch: int, pause_s: float, go: str | None = None) -> None:
    while go and not os.path.exists(go):
        await asyncio.sleep(0.01)
    with open(accepted_path, "a", buffering=1) as out:
        for first in range(start, stop, batch):
            chunk = [delivery(i, order_keys) for i in range(first, min(stop, first + batch))]
            await outbox.put(chunk)
            out.write("".join(f"{d.id}\n" for d in chunk))
            if pause_s:
                await asyncio.sleep(pause_s)


async def main_async(args: argparse.Namespace) -> None:
    outbox = RedisOutbox(args.redis, args.prefix, args.spool_max, spool_path=args.spool,
                         heartbeat_s=max(0.1, args.heartbeat_ttl / 4), heartbeat_ttl_s=args.heartbeat_ttl,
                         flush_interval_s=0.1, timeout_s=1.0)
    target = model.Target(name="recv", url=args.target_url, timeout_ms=args.timeout_ms,
                          concurrency=args.concurrency, retry_schedule=(0, 0.2, 0.5, 1, 1, 1, 1, 1, 1, 1))
    await outbox.open()
    sender = Sender(outbox, lambda: {"recv": target}, poll_interval=0.05, breaker_threshold=1000,
                    recover_on_start=True)
    await sender.start()
    with open(args.ready + ".tmp", "w") as f:
        f.write(outbox.replica_id)
    os.replace(args.ready + ".tmp", args.ready)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    producer = None
    if args.produce:
        start, end = (int(x) for x in args.produce.split(":"))
        producer = asyncio.create_task(produce(outbox, start, end, args.order_keys, args.ready + ".accepted",
                                               args.batch, args.pause, args.go))
    await stop.wait()
    if producer is not None:
        producer.cancel()
    await sender.stop(timeout=5)
    await outbox.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis", required=True)
    p.add_argument("--prefix", default="wgw")
    p.add_argument("--target-url", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--spool")
    p.add_argument("--spool-max", type=int, default=10_000)
    p.add_argument("--produce", help="FROM:TO delivery indexes to put")
    p.add_argument("--order-keys", type=int, default=20)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--go", help="start producing once this file exists")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between produced batches")
    p.add_argument("--heartbeat-ttl", type=float, default=2.0)
    p.add_argument("--timeout-ms", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
