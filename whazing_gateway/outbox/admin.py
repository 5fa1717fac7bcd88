"""`whazing-gateway deliveries list|show|retry|purge|test|targets`: look into the outbox and replay from it.

Works on the outbox named by gateway.yaml (`--config`), or by the environment variable
`WHAZING_GATEWAY_OUTBOX` (a sqlite file path, for scripts and tests). Safe to run while the
gateway runs: SQLite in WAL mode lets it read, and its writes wait for the gateway's.
`retry` also resumes a target paused by a `410 Gone`, so a replay reaches it. `test TARGET`
queues Whazing's "test" button body for one target, so the running gateway's worker sends it
like any webhook (signed, with the target's headers) and `--wait` reports the outcome. `purge` with no
filter would empty the outbox of every finished delivery: it asks first on a terminal, and needs
`--yes` otherwise. `targets` shows each target's health as the Sender last wrote it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

from whazing_gateway import model
from whazing_gateway.ops.logs import mask_url
from whazing_gateway.outbox.base import DEAD, DELIVERED, HEALTHY, Attempt, Outbox, OutboxFilter, OutboxItem

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


def _masked(text: str | None) -> str | None:
    """Rows written before masking at rest may still hold a URL's userinfo: never print it."""
    return None if text is None else mask_url(text)


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
        "updated_at": _iso(item.updated_at), "last_status": item.last_status, "last_error": _masked(item.last_error),
    }
    if attempts is not None:
        out["body"] = body_out
        out["attempt_log"] = [
            {"at": _iso(a.at), "status_code": a.status_code, "latency_ms": a.latency_ms, "error": _masked(a.error)}
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


TEST_EVENT_TYPE = "test"


def test_delivery(target: str, now: float | None = None) -> model.Delivery:
    """Whazing's test body for `target`, as one delivery (its own id on every call)."""
    from whazing_gateway.route.payloads import test_body

    at = time.time() if now is None else now
    return model.Delivery(id=model.stable_id("msg", "test", target, time.time_ns(), os.getpid()), target=target,
                          event_id=model.stable_id("evt", "test", target, at), event_type=TEST_EVENT_TYPE,
                          order_key=None, body=test_body(at), created_at=at)


test_delivery.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def known_targets(args: Any) -> list[str] | None:
    """Target names of the config's rules folder; None when there is no config to read."""
    config = getattr(args, "config", None)
    if os.environ.get(ENV_OUTBOX) and (not config or not os.path.exists(config)):
        return None
    from whazing_gateway.config import load_rules, load_settings

    settings = load_settings(config or "gateway.yaml")
    return sorted(load_rules(settings.rules_dir, settings).targets)


async def _send_test(args: Any, outbox: Outbox, out) -> int:
    names = getattr(args, "known_targets", None)
    if names is not None and args.target not in names:
        sys.stderr.write(f"unknown target '{args.target}' (targets: {', '.join(names) or 'none'})\n")
        return 1
    delivery = test_delivery(args.target)
    await outbox.put([delivery])
    result: dict[str, Any] = {"id": delivery.id, "target": delivery.target, "status": "pending"}
    if not args.json:
        out.write(f"{delivery.id} queued for {delivery.target}\n")
    deadline = time.monotonic() + max(args.wait or 0, 0)
    item = None
    while args.wait:
        found = await outbox.get(delivery.id)
        item = found[0] if found else None
        if (item is not None and item.status != "pending") or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    if item is not None:
        result.update(status=item.status, attempts=item.attempts, last_status=item.last_status,
                      last_error=item.last_error)
    if args.json:
        out.write(json.dumps(result) + "\n")
    elif args.wait:
        detail = f"HTTP {item.last_status}" if item is not None and item.last_status else ""
        if item is not None and item.last_error:
            detail = f"{detail} {item.last_error}".strip()
        out.write(f"{result['status']}{' after ' + str(result.get('attempts', 0)) + ' attempt(s)' if item else ''}"
                  f"{': ' + detail if detail else ''}\n")
    if not args.wait:
        return 0
    return 0 if result["status"] == DELIVERED else 1
def _unfiltered(flt: OutboxFilter) -> bool:
    return not flt.ids and all(v is None for v in (flt.target, flt.event_type, flt.status, flt.since, flt.until))


def confirm_purge_all(args: Any, ask: Callable[[str], str] | None = None, interactive: bool | None = None) -> bool:
    """`purge` with no filter: True with --yes, or when a person at a terminal says yes."""
    if getattr(args, "yes", False):
        return True
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        sys.stderr.write("purge with no filter deletes every delivered and dead delivery: "
                         "add --yes (or a filter such as --status dead --until DATE)\n")
        return False
    answer = (ask or input)("Delete every delivered and dead delivery (pending ones are kept)? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def targets_report(outbox: Outbox) -> list[dict[str, Any]]:
    """Per target: its health (as the Sender wrote it), a 410 pause, and how many wait for it."""
    health = await outbox.target_health()
    paused = await outbox.paused_targets()
    pending = await outbox.pending_by_target()
    rows = []
    for name in sorted(set(health) | set(paused) | set(pending)):
        h = health.get(name)
        p = paused.get(name)
        rows.append({
            "target": name,
            "state": "paused" if p is not None else (h.state if h is not None else HEALTHY),
            "since": _iso(p.at if p is not None else (h.since if h and h.since else None)),
            "failures": h.failures if h is not None else 0,
            "failed_probes": h.probes if h is not None else 0,
            "next_probe": _iso(h.next_probe_at) if h is not None and p is None and h.state != HEALTHY else None,
            "held": pending.get(name, 0),
            "last_error": p.reason if p is not None else (h.last_error if h is not None else None),
        })
    return rows


async def _run(args: Any, outbox: Outbox, out) -> int:
    action = args.action
    if action == "test":
        return await _send_test(args, outbox, out)
    if action == "targets":
        report = await targets_report(outbox)
        if args.json:
            out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            return 0
        out.write(_table([[r["target"], r["state"], r["since"], str(r["failures"]), str(r["failed_probes"]),
                           r["next_probe"] or "-", str(r["held"]), (r["last_error"] or "")[:60]] for r in report],
                         ["target", "state", "since", "failures", "failed probes", "next probe", "held", "last error"])
                  if report else "no targets seen yet\n")
        return 0
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
        rows = [[_iso(a.at), str(a.status_code or "-"), f"{a.latency_ms:.1f}", _masked(a.error) or ""] for a in attempts]
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
                 (_masked(i.last_error) or "")[:60]] for i in items]
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
        if _unfiltered(flt) and not confirm_purge_all(args):
            out.write(json.dumps({"purged": 0, "refused": True}) + "\n" if args.json else "nothing purged\n")
            return 1
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
    if args.action == "test" and not hasattr(args, "known_targets"):
        try:
            args.known_targets = known_targets(args)
        except Exception as exc:
            sys.stderr.write(f"cannot read the rules: {exc}\n")
            return 1
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
