"""`whazing-gateway deliveries list|show|retry|purge`: look into the outbox and replay from it.

Works on the outbox named by gateway.yaml (`--config`), or by the environment variable
`WHAZING_GATEWAY_OUTBOX` (a sqlite file path, for scripts and tests). Safe to run while the
gateway runs: SQLite in WAL mode lets it read, and its writes wait for the gateway's.
`retry` also resumes a target paused by a `410 Gone`, so a replay reaches it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from whazing_gateway.outbox.base import DEAD, Attempt, Outbox, OutboxFilter, OutboxItem

ENV_OUTBOX = "WHAZING_GATEWAY_OUTBOX"


def parse_time(value: str | None) -> float | None:
    """Unix seconds, or an ISO 8601 time (local time when it has no offset)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    text = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a time: {value!r} (use ISO 8601 or unix seconds)") from exc
    return dt.timestamp()


def filter_from_args(args: Any) -> OutboxFilter:
    limit = getattr(args, "limit", 100)
    return OutboxFilter(
        ids=tuple(getattr(args, "ids", None) or ()),
        target=getattr(args, "target", None),
        event_type=getattr(args, "event_type", None),
        status=getattr(args, "status", None),
        since=parse_time(getattr(args, "since", None)),
        until=parse_time(getattr(args, "until", None)),
        limit=limit if limit and limit > 0 else None,
    )


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def item_to_json(item: OutboxItem, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    body = item.body.decode("utf-8", errors="replace")
    try:
        body_out: Any = json.loads(body)
    except ValueError:
        body_out = body
    out: dict[str, Any] = {
        "id": item.id, "target": item.target, "event_id": item.event_id, "event_type": item.event_type,
        "order_key": item.order_key, "ticket_id": item.ticket_id, "status": item.status,
        "attempts": item.attempts, "next_at": _iso(item.next_at) if item.status == "pending" else None,
        "created_at": _iso(item.created_at), "accepted_at": _iso(item.accepted_at),
        "updated_at": _iso(item.updated_at), "last_status": item.last_status, "last_error": item.last_error,
    }
    if attempts is not None:
        out["body"] = body_out
        out["attempt_log"] = [
            {"at": _iso(a.at), "status_code": a.status_code, "latency_ms": a.latency_ms, "error": a.error}
            for a in attempts
        ]
    return out


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def _default_outbox(args: Any) -> Outbox:
    path = os.environ.get(ENV_OUTBOX)
    if path:
        from whazing_gateway.outbox.sqlite import SqliteOutbox

        return SqliteOutbox(path)
    from whazing_gateway.config import load_settings
    from whazing_gateway.outbox import open_outbox

    return open_outbox(load_settings(getattr(args, "config", "gateway.yaml")))


async def _run(args: Any, outbox: Outbox, out) -> int:
    action = args.action
    if action == "show":
        found = await outbox.get(args.id)
        if found is None:
            sys.stderr.write(f"no delivery {args.id}\n")
            return 1
        item, attempts = found
        data = item_to_json(item, attempts)
        if args.json:
            out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            return 0
        for key in ("id", "target", "event_type", "event_id", "order_key", "ticket_id", "status", "attempts",
                    "next_at", "created_at", "accepted_at", "updated_at", "last_status", "last_error"):
            out.write(f"{key:12} {data[key] if data[key] is not None else '-'}\n")
        out.write("attempts:\n")
        rows = [[_iso(a.at), str(a.status_code or "-"), f"{a.latency_ms:.1f}", a.error or ""] for a in attempts]
        out.write(_table(rows, ["at", "status", "latency_ms", "error"]) if rows else "  (none)\n")
        out.write("body:\n" + json.dumps(data["body"], indent=2, ensure_ascii=False) + "\n")
        return 0

    flt = filter_from_args(args)
    if action == "list":
        items = await outbox.find(flt)
        if args.json:
            out.write(json.dumps([item_to_json(i) for i in items], indent=2, ensure_ascii=False) + "\n")
            return 0
        rows = [[i.id, i.target, i.event_type, i.status, str(i.attempts), _iso(i.created_at),
                 (i.last_error or "")[:60]] for i in items]
        out.write(_table(rows, ["id", "target", "type", "status", "attempts", "event time", "last error"]))
        return 0
    if action == "retry":
        if not flt.ids and flt.status is None:
            flt = OutboxFilter(target=flt.target, event_type=flt.event_type, status=DEAD,
                               since=flt.since, until=flt.until, limit=None)
        matched = await outbox.find(OutboxFilter(**{**_fields(flt), "limit": None}))
        count = await outbox.retry(flt, time.time())
        resumed = []
        paused = await outbox.paused_targets()
        for name in sorted({i.target for i in matched} | ({flt.target} if flt.target else set())):
            if name in paused and await outbox.resume_target(name):
                resumed.append(name)
        if args.json:
            out.write(json.dumps({"retried": count, "resumed_targets": resumed}) + "\n")
        else:
            out.write(f"{count} deliveries queued again\n")
            for name in resumed:
                out.write(f"target {name} resumed (was paused)\n")
        return 0
    if action == "purge":
        count = await outbox.purge(OutboxFilter(**{**_fields(flt), "limit": None}))
        out.write(json.dumps({"purged": count}) + "\n" if args.json else f"{count} deliveries purged\n")
        return 0
    sys.stderr.write(f"unknown action {action}\n")
    return 2


def _fields(flt: OutboxFilter) -> dict[str, Any]:
    return {name: getattr(flt, name) for name in OutboxFilter.__dataclass_fields__}


def deliveries_command(args: Any, outbox_factory: Callable[[Any], Outbox] | None = None, out=None) -> int:
    """Entry point of the CLI subcommand (argparse Namespace from whazing_gateway/cli/__init__.py)."""
    out = out if out is not None else sys.stdout
    try:  # logs go to stderr so that --json output stays clean
        from whazing_gateway.ops.logs import configure_logging

        configure_logging(level="warning", stream=sys.stderr)
    except Exception:  # pragma: no cover - logging must never stop an admin command
        pass
    try:
        outbox = (outbox_factory or _default_outbox)(args)
    except Exception as exc:
        sys.stderr.write(f"cannot open the outbox: {exc}\n")
        return 1

    async def main() -> int:
        async with outbox:
            return await _run(args, outbox, out)

    try:
        return asyncio.run(main())
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
