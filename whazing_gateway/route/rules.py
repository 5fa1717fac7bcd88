"""Routing rules as plain data, and the pure questions asked of them ("does this rule take this event?").

Loading and validation live in `whazing_gateway/config/__init__.py`; the queue-integration state machine lives in
`whazing_gateway/route/router.py`. Here only facts about one event and one rule, so they are table-testable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whazing_gateway import model
from whazing_gateway.route.patterns import Pattern

ANY = "*"
# A rules file is hand-written YAML of a few KB; parsing one of 50 MB would take the process
# minutes and gigabytes, so anything past this is refused before it is read.
MAX_RULES_FILE_BYTES = 1 << 20


def rules_file_too_big(path: Path, report: Callable[[int, str], None] | None = None,
                       limit: int = MAX_RULES_FILE_BYTES) -> str | None:
    """Why `path` is refused unparsed, or None if it may be read; `report(line, why)` is told too."""
    try:
        size = path.stat().st_size
    except OSError:
        return None  # the loader reports an unreadable file itself
    if size <= limit:
        return None
    why = f"rules file of {size} bytes is larger than {limit} bytes: refused unparsed (split it)"
    if report is not None:
        report(0, why)
    return why


# ----------------------------------------------------------------------------- event fields


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def message_ticket(event: model.Event) -> Mapping[str, Any]:
    """The ticket snapshot carried by the message itself (its state at message time), or {}."""
    t = _get(event.message, "ticket")
    return t if isinstance(t, Mapping) else {}


def ticket_field(event: model.Event, key: str) -> Any:
    """A ticket field from the event's ticket, falling back to the message's ticket snapshot."""
    t = event.ticket or {}
    if key in t and t[key] is not None:
        return t[key]
    return message_ticket(event).get(key)


def ticket_status(event: model.Event) -> Any:
    """The status the open/pending filters look at: the ticket's status when the message came."""
    mt = message_ticket(event)
    if mt.get("status") is not None:
        return mt["status"]
    return (event.ticket or {}).get("status")


def ticket_contact(event: model.Event) -> Mapping[str, Any]:
    """The ticket's contact (for a group: the group), from whichever object carried it."""
    for c in (_get(event.ticket, "contact"), _get(message_ticket(event), "contact")):
        if isinstance(c, Mapping):
            return c
    c = _get(event.message, "contact")
    return c if isinstance(c, Mapping) else {}


def is_group(event: model.Event) -> bool:
    if ticket_field(event, "isGroup"):
        return True
    return bool(ticket_contact(event).get("isGroup"))


def channel_of(event: model.Event) -> tuple[Any, Any]:
    """(whatsappId, channel name or None)."""
    cid = ticket_field(event, "whatsappId")
    w = ticket_field(event, "whatsapp")
    name = _get(w, "name")
    if cid is None:
        cid = _get(w, "id")
    return cid, name


def queue_of(event: model.Event) -> tuple[Any, Any]:
    """(queueId, queue name or None). Whazing's Queue names its name field `queue`."""
    qid = ticket_field(event, "queueId")
    q = ticket_field(event, "queue")
    name = _get(q, "queue") or _get(q, "name")
    if qid is None:
        qid = _get(q, "id")
    return qid, name


def knows_queue(event: model.Event) -> bool:
    """Whether the traffic told the ticket's queue (a null queueId says "no queue"; no key says nothing)."""
    return "queueId" in (event.ticket or {}) or "queueId" in message_ticket(event)


def queue_name_for(event: model.Event, queue_id: Any) -> Any:
    """The name of `queue_id` if the event's ticket carries that queue object."""
    q = ticket_field(event, "queue")
    if isinstance(q, Mapping) and same_id(q.get("id", queue_id), queue_id):
        return q.get("queue") or q.get("name")
    return None


def message_text(event: model.Event) -> str | None:
    body = _get(event.message, "body")
    return body if isinstance(body, str) else None


def contact_number(event: model.Event) -> str | None:
    n = ticket_contact(event).get("number")
    return None if n is None else str(n)


def tags_of(event: model.Event) -> set[str]:
    """Tag names and ids (as casefolded strings), when the traffic carried them."""
    out: set[str] = set()
    tags = ticket_contact(event).get("tags") or ticket_field(event, "tags") or []
    if not isinstance(tags, list):
        return out
    for t in tags:
        if isinstance(t, Mapping):
            for k in ("tag", "name", "id"):
                if t.get(k) is not None:
                    out.add(str(t[k]).casefold())
        elif t is not None:
            out.add(str(t).casefold())
    return out


def same_id(a: Any, b: Any) -> bool:
    """Ids compare as text: Whazing sends integers, but a decoded URL or YAML may give strings."""
    return a is not None and b is not None and str(a) == str(b)


def status_allowed(status: Any, open_: bool, pending: bool) -> bool:
    """Whazing's "ticket open" / "ticket pending" filters for message events.

    Both off: no message webhooks. An `open` ticket needs `open`, a `pending` one `pending`;
    any other or unknown status passes while at least one filter is on.
    """
    if not open_ and not pending:
        return False
    if status == "open":
        return open_
    if status == "pending":
        return pending
    return True


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Match:
    """Conditions beyond Whazing's native options; every one given must hold."""

    tenants: frozenset[str] | None = None
    contact_number: Pattern | None = None  # RE2 (linear time): see route/patterns.py
    text: Pattern | None = None
    tags: frozenset[str] | None = None  # any of these (casefolded names or ids)

    def accepts(self, event: model.Event) -> bool:
        if self.tenants is not None and str(event.tenant_id) not in self.tenants:
            return False
        if self.contact_number is not None:
            n = contact_number(event)
            if n is None or not self.contact_number.search(n):
                return False
        if self.text is not None:
            t = message_text(event)
            if t is None or not self.text.search(t):
                return False
        if self.tags is not None and not (self.tags & tags_of(event)):
            return False
        return True


def _selects(specs: tuple[Any, ...], ident: Any, name: Any) -> bool:
    for s in specs:
        if s == ANY:
            return True
        if isinstance(s, str):
            if isinstance(name, str) and name.casefold() == s.casefold():
                return True
        elif same_id(s, ident):
            return True
    return False


@dataclass(frozen=True)
class ChannelRule:
    """Whazing's per-channel webhook: the listed events of the selected channels go to `targets`."""

    name: str
    source: str  # "file:line", for logs
    channels: tuple[Any, ...]  # ids (int), names (str), or "*"
    targets: tuple[str, ...]
    events: frozenset[str]
    enabled: bool = True
    open: bool = True
    pending: bool = True
    groups: bool = False
    match: Match = field(default_factory=Match)
    media_base64: bool = False  # "media in base64": message bodies carry the media's bytes

    def accepts(self, event: model.Event) -> bool:
        if not self.enabled or event.type not in self.events:
            return False
        if not _selects(self.channels, *channel_of(event)):
            return False
        if is_group(event) and not self.groups:
            return False
        if event.type in model.MESSAGE_EVENTS and not status_allowed(ticket_status(event), self.open, self.pending):
            return False
        return self.match.accepts(event)


@dataclass(frozen=True)
class QueueRule:
    """Whazing's queue integration: the ticket's messages, while it sits in the queue, go to `targets`."""

    name: str
    source: str
    queues: tuple[Any, ...]
    targets: tuple[str, ...]
    events: frozenset[str] = frozenset(model.MESSAGE_EVENTS)
    enabled: bool = True
    open: bool = True
    pending: bool = True
    groups: bool = False
    start_on_transfer: bool = False
    match: Match = field(default_factory=Match)
    media_base64: bool = False  # "media in base64": message bodies carry the media's bytes

    def selects_queue(self, queue_id: Any, queue_name: Any) -> bool:
        return self.enabled and queue_id is not None and _selects(self.queues, queue_id, queue_name)

    def _filters(self, event: model.Event) -> bool:
        if is_group(event) and not self.groups:
            return False
        if not status_allowed(ticket_status(event), self.open, self.pending):
            return False
        return self.match.accepts(event)

    def accepts_message(self, event: model.Event) -> bool:
        """A message while the ticket is in the queue: the event toggles, then the filters."""
        return event.type in self.events and self._filters(event)

    def accepts_start(self, event: model.Event) -> bool:
        """The at-once webhook on transfer: `start_on_transfer` is its toggle; filters still apply."""
        return self.start_on_transfer and self._filters(event)


@dataclass(frozen=True)
class RuleSet:
    """Everything `rules/*.yaml` defines, validated; swapped whole on reload."""

    targets: Mapping[str, model.Target] = field(default_factory=dict)
    channel_rules: tuple[ChannelRule, ...] = ()
    queue_rules: tuple[QueueRule, ...] = ()
    files: tuple[Path, ...] = ()

    def summary(self) -> str:
        return (f"{len(self.targets)} targets, {len(self.channel_rules)} channel rules, "
                f"{len(self.queue_rules)} queue rules")
