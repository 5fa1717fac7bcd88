"""The plain data handed from stage to stage (infer -> route -> outbox -> deliver).

No mitmproxy types and no I/O here: every stage after the edge is driven by these alone,
so tests, `replay` and the Redis backend all speak the same objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

# Event types. The first five are Whazing's native ones; the last two are ours. The Literal is
# the one declaration every stage (and the rules' JSON Schema) takes its names from.
EventType = Literal[
    "ticket.created",
    "ticket.transferred",
    "ticket.closed",
    "ticket.reopened",
    "ticket.accepted",
    "message.received",
    "message.sent",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
(TICKET_CREATED, TICKET_TRANSFERRED, TICKET_CLOSED, TICKET_REOPENED, TICKET_ACCEPTED,
 MESSAGE_RECEIVED, MESSAGE_SENT) = EVENT_TYPES

# A target's body format: "whazing" (native bodies) or "envelope" ({type, id, timestamp, data}).
Format = Literal["whazing", "envelope"]
FORMATS: tuple[str, ...] = get_args(Format)
# A target's kind: "n8n": a 404 means "workflow not active" and is retried; "generic": 404 is final.
TargetKind = Literal["n8n", "generic"]
TARGET_KINDS: tuple[str, ...] = get_args(TargetKind)
# What became of one delivery attempt.
Outcome = Literal["delivered", "retry", "dead"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)

TICKET_EVENTS = frozenset(t for t in EVENT_TYPES if t.startswith("ticket."))
MESSAGE_EVENTS = frozenset(t for t in EVENT_TYPES if t.startswith("message."))

# `origin` of a ticket.created event, as Whazing's native `Type` names it.
ORIGIN_AGENT = "NewTicketUserCreate"
ORIGIN_INBOUND = "NewTicket"


def stable_id(prefix: str, *parts: Any) -> str:
    """A deterministic id: the same real change gives the same id in every process."""
    digest = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}_{digest[:26]}"


@dataclass(frozen=True, slots=True)
class Event:
    """One real change in Whazing, inferred from traffic.

    `ticket` is the Ticket object as last seen (Whazing's JSON, possibly partial: nested
    `contact`, `queue`, `whatsapp`, `user` when the traffic carried them). `message` is the
    Message of a message event, or the ticket's last received message for ticket events.
    `changes` maps a field (`status`, `queueId`, `userId`) to `(old, new)`.
    """

    id: str
    type: str
    tenant_id: int | None
    ticket_id: int | None
    ts: float
    ticket: Mapping[str, Any] = field(default_factory=dict)
    message: Mapping[str, Any] | None = None
    changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    origin: str | None = None
    source: str = "socket"
    flow_id: str | None = None

    @property
    def order_key(self) -> str | None:
        """Events sharing this key are delivered in order (per tenant and ticket)."""
        if self.ticket_id is None:
            return None
        return f"{self.tenant_id}:{self.ticket_id}"

    @property
    def channel_id(self) -> Any:
        return self.ticket.get("whatsappId") if self.ticket else None

    @property
    def queue_id(self) -> Any:
        return self.ticket.get("queueId") if self.ticket else None


# Default retry schedule in seconds, close to Standard Webhooks': now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True, slots=True)
class Target:
    """Where webhooks go, and how. Secrets are already resolved from the environment."""

    name: str
    url: str
    api_key: str | None = None
    secrets: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_ms: int = 10_000
    concurrency: int = 4
    rate_per_s: float | None = None
    format: Format = "whazing"
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    kind: TargetKind = "n8n"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook to send: the rendered body for one target. Its id is the `webhook-id`."""

    id: str
    target: str
    event_id: str
    event_type: str
    order_key: str | None
    body: bytes
    created_at: float
    ticket_id: int | None = None
    flow_id: str | None = None

    @staticmethod
    def make_id(event_id: str, target: str) -> str:
        """Stable across retries, restarts and replicas: derived from the event and the target."""
        return stable_id("msg", event_id, target)
