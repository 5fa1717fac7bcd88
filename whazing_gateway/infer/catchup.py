"""Catch-up after the gateway was away: Whazing's ticket listing + what we knew -> observations.

While the gateway is down (a restart, an upgrade, a crash) Whazing goes on: inbound WhatsApp
messages open tickets, the bot transfers them, timers close them, and all of it is pushed only to
sockets nobody was reading for us. At start the gateway reads the ticket listing (read-only) and
this module turns it into `ticket:update` payloads for the ordinary inference, which diffs them
against the per-ticket state it kept (persisted, so it survived the restart):

- a ticket we knew: its current state, so the inference finds what changed (transferred,
  closed, reopened, accepted), with the same event ids as live when the change was one step;
- a ticket created while we were away: first its creation (`isCreated`, so `ticket.created`
  gets the id it would have had live), then its current state when it was closed since;
- a ticket we never knew and that is older than our watermark: its state, silently (a first
  sighting of an old ticket is no event).

Messages cannot be fetched without side effects (`GET /messages/:ticketId` marks the ticket
read in Whazing), so they are never fetched: when a ticket's last message is newer than
anything we saw of that ticket, the ticket has a message **gap**, reported, never silent.
Pure: no I/O, no clock; the caller (`whazing_gateway/edge/observer.py`) fetches and submits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

from whazing_gateway.decode import as_int

# State key of the watermark: until this time (unix s) the gateway saw everything Whazing pushed.
# The inference reads it too: a first sighting of a ticket created after it is a missed creation.
WATERMARK_KEY = "catchup:seen_until"

# A message this much newer than the ticket state we kept is one we did not see. Whazing
# stamps `lastMessageAt` and then `updatedAt` in the same update, so a seen message is never
# newer than the state we kept from that update.
GAP_TOLERANCE_S = 0.01
# A ticket created this long after the observer connected was watched live all its life.
LIVE_MARGIN_S = 1.0


def ts(value: Any) -> float | None:
    """Unix seconds of Whazing's ISO times, or of `lastMessageAt` (JavaScript milliseconds)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        if value.isdigit():
            return ts(int(value))
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Known:
    """What the inference kept of one ticket (None fields: nothing kept)."""

    state: Mapping[str, Any] | None = None  # snapshot: status, queueId, userId, updatedAt
    last_received: Mapping[str, Any] | None = None  # the last received message seen
    # A shared state (Redis) read after the restart may hold what was seen live since: it tells
    # what was seen only up to the watermark. None: the state as it was before (nothing later).
    trust_until: float | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A ticket whose last message is newer than anything we saw of it: at least one message
    (received or sent) was missed and is not delivered."""

    tenant_id: int | None
    ticket_id: int
    last_message_at: float
    known_until: float | None
    # True: the last message itself came while nobody watched. False: it came after we were back,
    # so messages before it, while we were away, may or may not exist (reported all the same).
    certain: bool = True


@dataclass
class Plan:
    """Ticket payloads to feed the inference, oldest change first, and the message gaps."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # tickets created while we were away
    changed: list[int] = field(default_factory=list)  # known tickets that changed meanwhile


def key(tenant_id: int | None, ticket_id: int) -> tuple[int | None, int]:
    return tenant_id, ticket_id


def changed_since(tickets: Iterable[Mapping[str, Any]], since: float) -> list[Mapping[str, Any]]:
    """The listed tickets updated at or after `since` (our watermark), oldest first."""
    out = [t for t in tickets if as_int(t.get("id")) is not None and isinstance(t.get("status"), str)
           and (ts(t.get("updatedAt")) or 0.0) >= since]
    return sorted(out, key=lambda t: (ts(t.get("updatedAt")) or 0.0, as_int(t.get("id")) or 0))


def creation_of(ticket: Mapping[str, Any]) -> dict[str, Any]:
    """The ticket as its creation push showed it, as far as the listing tells: same id, created
    now (updatedAt = createdAt); a ticket is never created closed (Whazing opens it pending)."""
    out = dict(ticket)
    out["isCreated"] = True
    out["updatedAt"] = ticket.get("createdAt") or ticket.get("updatedAt")
    if out.get("status") == "closed":
        out["status"] = "pending"
    return out


def gap_of(ticket: Mapping[str, Any], known: Known, tenant_id: int | None, ticket_id: int,
           live_since: float | None = None) -> Gap | None:
    last = ts(ticket.get("lastMessageAt"))
    if last is None:
        return None
    created = ts(ticket.get("createdAt"))
    if live_since is not None and created is not None and created >= live_since + LIVE_MARGIN_S:
        return None  # its whole life was watched live
    seen = [t for t in (ts((known.state or {}).get("updatedAt")),
                        ts((known.last_received or {}).get("createdAt")),
                        ts((known.last_received or {}).get("timestamp"))) if t is not None]
    known_until = max(seen) if seen else None
    if known_until is not None and known.trust_until is not None:
        known_until = min(known_until, known.trust_until)
    if known_until is not None and last <= known_until + GAP_TOLERANCE_S:
        return None
    lr = known.last_received or {}
    if lr.get("body") is not None and lr.get("body") == ticket.get("lastMessage") and known_until is not None \
            and abs(last - known_until) <= 1.0:
        return None  # the last message is the one we saw (its clock is a tick apart)
    return Gap(tenant_id, ticket_id, last, known_until, certain=live_since is None or last < live_since)


def plan(tickets: Iterable[Mapping[str, Any]], known: Mapping[tuple[int | None, int], Known],
         since: float, default_tenant: int | None = None, live_since: float | None = None) -> Plan:
    """The catch-up for `tickets` (the listing) given what we knew before we went away
    (`known`), our watermark `since` (unix seconds: until then, the gateway saw everything) and
    `live_since`, when it was watching again (the observer connected)."""
    out = Plan()
    for ticket in changed_since(tickets, since):
        ticket_id = as_int(ticket.get("id"))
        assert ticket_id is not None
        tenant_id = as_int(ticket.get("tenantId"))
        tenant_id = tenant_id if tenant_id is not None else default_tenant
        k = known.get(key(tenant_id, ticket_id)) or Known()
        current = {k2: v for k2, v in ticket.items() if k2 != "isCreated"}
        if k.state is None:
            created_at = ts(ticket.get("createdAt"))
            if created_at is not None and created_at >= since:
                creation = creation_of(ticket)
                out.payloads.append(creation)
                out.created.append(ticket_id)
                if creation.get("status") != ticket.get("status"):
                    out.payloads.append(current)
            else:
                out.payloads.append(current)  # an old ticket we never saw: remembered, no event
        else:
            if any(k.state.get(f) != ticket.get(f) for f in ("status", "queueId", "userId")):
                out.changed.append(ticket_id)
            out.payloads.append(current)
        gap = gap_of(ticket, k, tenant_id, ticket_id, live_since)
        if gap is not None:
            out.gaps.append(gap)
    return out
