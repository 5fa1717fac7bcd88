"""`whazing-gateway replay CAPTURE`: a dry run of a saved capture through decode -> infer -> route.

Prints what would be sent, one JSON object per delivery, and sends nothing. Requests,
responses and websocket frames are merged by their timestamps, since that is the order in
which the live gateway would have seen them (a push usually precedes the REST response).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Iterator

from whazing_gateway.edge import records as traffic
from whazing_gateway.edge.addon import wants_frame, wants_request, wants_response
from whazing_gateway.edge.records import Record


def records_of(flows) -> list[Record]:
    """Every record the live hooks would have produced, in the order they would have."""
    out: list[tuple[float, int, Record]] = []
    seq = 0
    for flow in flows:
        if not hasattr(flow, "request"):
            continue
        if wants_request(flow):
            out.append((flow.request.timestamp_start or 0.0, seq, traffic.request_record(flow)))
            seq += 1
        if flow.response is not None and wants_response(flow):
            rec = traffic.exchange_record(flow)
            out.append((rec.ts or 0.0, seq, rec))
            seq += 1
        if flow.websocket is not None:
            for msg in flow.websocket.messages:
                if wants_frame(msg):
                    out.append((msg.timestamp, seq, traffic.frame_record(flow.id, msg)))
                    seq += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in out]


def read_capture(path: str) -> Iterator[Any]:
    from mitmproxy import io

    with open(path, "rb") as f:
        yield from io.FlowReader(f).stream()


async def dry_run(records: list[Record], settings, rules) -> list[dict[str, Any]]:
    """Deliveries the records would cause, as printable dicts (headers as the sender would send)."""
    from whazing_gateway.deliver.sender import build_headers
    from whazing_gateway.infer.inferrer import Inferrer
    from whazing_gateway.pipeline.core import Pipeline
    from whazing_gateway.route.router import Router
    from whazing_gateway.state.memory import MemoryState

    state = MemoryState()
    inferrer = Inferrer(state)
    router = Router(rules, inferrer.uncommitted)
    pipeline = Pipeline(inferrer, router.route, None, json_limit=settings.inspect_max_bytes)
    out = []
    for record in records:
        result = await pipeline.process(record)
        by_id = {e.id: e for e in result.events}
        for d in result.deliveries:
            target = rules.targets[d.target]
            ev = by_id.get(d.event_id)
            headers = dict(build_headers(target, d, int(d.created_at)))
            if "X-N8N-API-KEY" in headers:  # shown present, never printed: dry runs end up in CI logs
                headers["X-N8N-API-KEY"] = "***"
            out.append({"target": d.target, "url": target.url, "event": d.event_type, "event_id": d.event_id,
                        "ticket": ev.ticket_id if ev else d.ticket_id, "headers": headers,
                        "body": json.loads(d.body)})
    return out


def replay_command(args) -> int:
    from mitmproxy.exceptions import FlowReadException

    from whazing_gateway.config import ConfigError, load_rules, load_settings
    from whazing_gateway.ops.logs import configure_logging

    configure_logging("auto", "warning", stream=sys.stderr)  # stdout carries only the deliveries
    try:
        settings = load_settings(args.config)
        rules = load_rules(settings.rules_dir, settings)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    try:
        records = records_of(read_capture(args.capture))
    except (OSError, ValueError, FlowReadException) as exc:
        sys.stderr.write(f"cannot read capture {args.capture}: {exc}\n")
        return 1
    for item in asyncio.run(dry_run(records, settings, rules)):
        sys.stdout.write(json.dumps(item, ensure_ascii=False, indent=None if args.json else 2) + "\n")
    return 0
