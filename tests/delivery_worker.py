"""A process to kill: puts deliveries into a sqlite outbox while a Sender delivers them.

Exactly what the gateway does behind its hooks (pipeline puts -> outbox -> Sender), minus the
proxy. Used by the crash test and the bench:

    python -m tests.delivery_worker --db PATH --url URL --count N --accepted FILE [--secret whsec_...]
    python -m tests.delivery_worker --db PATH --url URL --drain      # deliver what is left, exit 0

Each id is appended to --accepted only after its `put` returned (= committed = accepted).
Ids are deterministic (`delivery_id(seq)`), bodies are `{"seq", "ticket", "created_at"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from whazing_gateway import model
from whazing_gateway.deliver.sender import Sender
from whazing_gateway.outbox.sqlite import SqliteOutbox

TARGET = "crash"


def delivery_id(seq: int) -> str:
    return model.Delivery.make_id(f"evt_{seq}", TARGET)


def make_delivery(seq: int, tickets: int) -> model.Delivery:
    ticket = seq % tickets
    now = time.time()
    body = json.dumps({"seq": seq, "ticket": ticket, "created_at": now}, separators=(",", ":")).encode()
    return model.Delivery(id=delivery_id(seq), target=TARGET, event_id=f"evt_{seq}",
                          event_type=model.MESSAGE_RECEIVED, order_key=f"1:{ticket}", body=body,
                          created_at=now, ticket_id=ticket)


async def run(args: argparse.Namespace) -> int:
    outbox = SqliteOutbox(args.db)
    await outbox.open()
    target = model.Target(name=TARGET, url=args.url, secrets=tuple(args.secret or ()),
                          concurrency=args.concurrency, retry_schedule=(0, 0.2, 0.5, 1, 1, 1, 1, 1))
    sender = Sender(outbox, lambda: {TARGET: target}, per_ticket_order=not args.unordered,
                    poll_interval=0.05, housekeeping_s=0.5)
    await sender.start()
    if not args.drain:
        accepted = open(args.accepted, "a", buffering=1)
        for start in range(0, args.count, args.batch):
            batch = [make_delivery(seq, args.tickets) for seq in range(start, min(args.count, start + args.batch))]
            await outbox.put(batch)  # returns once committed: from here on they are accepted
            accepted.write("".join(d.id + "\n" for d in batch))
            sender.wake()
            if args.pause:
                await asyncio.sleep(args.pause)
        accepted.close()
    while await outbox.pending_count():
        await asyncio.sleep(0.05)
    await sender.stop()
    await outbox.close()
    sys.stdout.write("drained\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--secret", action="append")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--tickets", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between puts")
    p.add_argument("--accepted", default="/dev/null")
    p.add_argument("--drain", action="store_true")
    p.add_argument("--unordered", action="store_true")
    args = p.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
