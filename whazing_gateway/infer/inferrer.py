"""Infer stage: observations -> events, exactly once per real change.

Whazing never says "ticket transferred": every change arrives as a full Ticket (socket
`ticket:update`, REST responses), often many times (one copy per open browser tab, plus the
REST response, plus the old state that every `PUT /tickets/:id` re-emits first). So the
inference keeps a small per-ticket state (status, queueId, userId, updatedAt) and turns the
*difference* into events, with ids derived from the change itself, so that every copy, every
process and every replica names the same change the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import structlog

from whazing_gateway import model
from whazing_gateway.decode import RestCall, SocketEvent, as_int, routes
from whazing_gateway.model import Event, stable_id
from whazing_gateway.state.memory import StateStore

log = structlog.get_logger(__name__)

TRACKED = ("status", "queueId", "userId")
CLOSED, OPEN, PENDING = "closed", "open", "pending"
# A ticket whose createdAt and updatedAt are this close was just made (builds without `isCreated`).
FRESH_S = 2.0
# Fields kept of a received message for ticket events and queue integrations (start_on_transfer).
_MESSAGE_DROP = ("ticket",)


@dataclass(frozen=True, slots=True)
class InferSettings:
    ticket_ttl_s: float = 30 * 86400
    dedup_ttl_s: float = 86400
    hint_ttl_s: float = 60


def _ts(iso: Any) -> float | None:
    if not isinstance(iso, str) or len(iso) > 64:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):  # junk, or a date no clock can hold
        return None


# Payload times further than this from when we saw them are not trusted (a skewed clock, junk).
MAX_CLOCK_SKEW_S = 300.0


def event_time(payload_time: Any, observed: float) -> float:
    """When a change happened, as Whazing's own record says (`updatedAt`, `createdAt`).

    Deterministic, unlike the moment one process happened to see it: replicas that each infer
    the same change stamp it alike, so per-ticket order across replicas is Whazing's order.
    Falls back to `observed` when the payload has no usable time.
    """
    t = _ts(payload_time)
    if t is None or abs(t - observed) > MAX_CLOCK_SKEW_S:
        return observed
    return t


# A message id: an integer, or WhatsApp's id string; anything else (objects, huge strings) is not one.
MAX_MESSAGE_ID_CHARS = 256


def _is_message_id(mid: Any) -> bool:
    if isinstance(mid, bool):
        return False
    if isinstance(mid, int):
        return as_int(mid) is not None
    return isinstance(mid, str) and 0 < len(mid) <= MAX_MESSAGE_ID_CHARS


def _phone(number: Any) -> str | None:
    """A contact number usable as a state key (a short string or integer), else None."""
    if isinstance(number, int) and not isinstance(number, bool):
        number = str(number)
    return number if isinstance(number, str) and 0 < len(number) <= 64 else None


def _is_ticket(obj: Any) -> bool:
    return isinstance(obj, dict) and as_int(obj.get("id")) is not None and isinstance(obj.get("status"), str)


def snapshot(ticket: Mapping[str, Any]) -> dict[str, Any]:
    """What we remember of a ticket: the fields whose changes are events, and its clock."""
    return {
        "status": ticket.get("status"),
        "queueId": ticket.get("queueId"),
        "userId": ticket.get("userId"),
        "updatedAt": ticket.get("updatedAt"),
    }


def is_stale(old: Mapping[str, Any], ticket: Mapping[str, Any]) -> bool:
    """True when `ticket` is older than what we know (a re-emitted old state, a late GET)."""
    a, b = _ts(old.get("updatedAt")), _ts(ticket.get("updatedAt"))
    return a is not None and b is not None and b < a


def looks_new(ticket: Mapping[str, Any]) -> bool:
    """Is a first sighting a creation? `isCreated` (build 2.7.3+), else timestamps."""
    if ticket.get("isCreated") is True:
        return True
    created, updated = _ts(ticket.get("createdAt")), _ts(ticket.get("updatedAt"))
    return created is not None and updated is not None and abs(updated - created) <= FRESH_S


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, dict[str, tuple[Any, Any]]]]:
    """The events that turn ticket state `old` into `new`, in the order they happened.

    Pure: `(type, changes)` pairs. Section 7 of the Whazing notes defines each type.
    """
    out: list[tuple[str, dict[str, tuple[Any, Any]]]] = []
    s0, s1 = old.get("status"), new.get("status")
    q0, q1 = old.get("queueId"), new.get("queueId")
    u0, u1 = old.get("userId"), new.get("userId")
    status_change = {"status": (s0, s1)} if s0 != s1 else {}
    if s0 == CLOSED and s1 in (OPEN, PENDING):
        out.append((model.TICKET_REOPENED, dict(status_change)))
    elif s0 == PENDING and s1 == OPEN:
        out.append((model.TICKET_ACCEPTED, {**status_change, **({"userId": (u0, u1)} if u0 != u1 else {})}))
    transfer: dict[str, tuple[Any, Any]] = {}
    if q0 != q1 and q1 is not None:
        transfer["queueId"] = (q0, q1)
    if u0 != u1 and u0 is not None and u1 is not None:
        transfer["userId"] = (u0, u1)
    if transfer:
        if "queueId" in transfer and u0 != u1:
            transfer["userId"] = (u0, u1)
        if "userId" in transfer and q0 != q1:
            transfer["queueId"] = (q0, q1)
        out.append((model.TICKET_TRANSFERRED, {**transfer, **status_change}))
    if s1 == CLOSED and s0 != CLOSED:
        out.append((model.TICKET_CLOSED, dict(status_change)))
    return out


class Inferrer:
    """Observations in, events out. One instance per process; its state may be shared (Redis).

    Two steps, so that a crash never loses an event another replica would have emitted:
    `infer()` reads the state and keeps its own writes in an overlay; the caller puts the
    deliveries in the outbox, then `commit()` marks the events seen and writes the state. A
    replica dying in between leaves the state untouched, so another one infers the same change
    again, under the same ids (the outbox ignores a delivery id it already holds).
    """

    def __init__(self, state: StateStore, settings: InferSettings | None = None, *,
                 away_since: float | None = None) -> None:
        self.state = state
        self.settings = settings or InferSettings()
        # The catch-up watermark as it was when this process started (the pipeline process reads
        # it then): tickets created after it and never seen were created while the gateway was
        # away. None: read the state's current one (a pipeline in the proxy's own process).
        self.away_since = away_since
        self._overlay: dict[str, Any] = {}
        self._writes: list[tuple[str, Any, float | None, float | None]] = []

    async def observe(self, obs: RestCall | SocketEvent) -> list[Event]:
        """`infer` then `commit`: the events that were new (for callers with no outbox)."""
        events = await self.infer(obs)
        first = await self.commit(events)
        return [e for e, new in zip(events, first) if new]

    async def infer(self, obs: RestCall | SocketEvent) -> list[Event]:
        if isinstance(obs, SocketEvent):
            return await self._socket(obs)
        return await self._rest(obs)

    async def commit(self, events: list[Event]) -> list[bool]:
        """Mark `events` seen and write the state `infer` computed. For each event: True if this
        call was the first to mark it (False: a replica or an earlier copy got there first)."""
        writes, self._writes, self._overlay = self._writes, [], {}
        first = [await self.state.add_once(f"e:{e.id}", self.settings.dedup_ttl_s) for e in events]
        for key, value, ttl, version in writes:
            if version is None:
                await self.state.set(key, value, ttl)
            else:  # a ticket's state: never back to an older one (replicas commit in any order)
                await self.state.set_newer(key, value, version, ttl)
        return first

    # -- uncommitted writes: per-record containment and outbox refusals (pipeline/core.py) --------
    @property
    def uncommitted(self) -> "Uncommitted":
        """The state as this batch sees it, for the router's own small state (queue
        integrations): its writes are undone and committed with the inference's."""
        return Uncommitted(self)

    def savepoint(self) -> tuple[int, dict[str, Any]]:
        """Where the uncommitted writes stand, to undo one record that failed half-way."""
        return len(self._writes), dict(self._overlay)

    def rollback(self, savepoint: tuple[int, dict[str, Any]]) -> None:
        del self._writes[savepoint[0]:]
        self._overlay = savepoint[1]

    def forget(self, start: int, end: int) -> None:
        """Drop the writes of one record of the batch (its deliveries were refused): never committed."""
        del self._writes[start:end]

    def discard(self) -> None:
        """Forget every uncommitted write: the outbox never took these events."""
        self._writes, self._overlay = [], {}

    async def _get(self, key: str) -> Any:
        if key in self._overlay:
            return self._overlay[key]
        return await self.state.get(key)

    def _set(self, key: str, value: Any, ttl: float | None, version: float | None = None) -> None:
        self._overlay[key] = value
        self._writes.append((key, value, ttl, version))

    def _set_ticket(self, key: str, snap: dict[str, Any]) -> None:
        """A ticket's state, versioned by its `updatedAt` (see `StateStore.set_newer`)."""
        self._set(key, snap, self.settings.ticket_ttl_s, _ts(snap.get("updatedAt")))

    async def _seen(self, event_id: str) -> bool:
        return bool(await self._get(f"e:{event_id}"))

    # -- sources -------------------------------------------------------------------------------
    async def _socket(self, ev: SocketEvent) -> list[Event]:
        if ev.channel != "ticketList" or not isinstance(ev.payload, dict):
            return []
        if ev.type in ("ticket:update", "notification:new"):
            return await self.ticket_seen(ev.payload, ev.tenant_id, ev.ts, "socket", ev.flow_id)
        if ev.type == "chat:create":
            return await self.message_seen(ev.payload, ev.tenant_id, ev.ts, ev.flow_id)
        return []

    async def _rest(self, call: RestCall) -> list[Event]:
        if call.status is None:  # request seen, not yet answered: remember who is creating what
            await self._remember_intent(call)
            return []
        if not 200 <= call.status < 300:
            await self._withdraw_intent(call)
            return []
        body = call.response_json
        if call.kind == routes.TICKET_DELETE:
            self._set(self._tkey(call.tenant_id, as_int(call.params.get("ticketId"))), None, 1)
            return []
        if call.kind == routes.TICKET_LIST and isinstance(body, dict):
            out: list[Event] = []
            for t in body.get("tickets") or ():
                if _is_ticket(t):
                    out += await self.ticket_seen(t, call.tenant_id, call.ts, "rest", call.flow_id, may_create=False)
            return out
        if call.kind in routes.TICKET_RESPONSES and _is_ticket(body):
            may_create = call.kind in (routes.TICKET_CREATE, routes.EXT_CREATE_TICKET)
            return await self.ticket_seen(body, call.tenant_id, call.ts, "rest", call.flow_id, may_create=may_create)
        return []

    @staticmethod
    def _intent_key(call: RestCall) -> str | None:
        body = call.request_json if isinstance(call.request_json, dict) else {}
        if call.kind == routes.TICKET_CREATE and as_int(body.get("contactId")) is not None:
            return f"hint:c:{as_int(body.get('contactId'))}"
        if call.kind == routes.EXT_CREATE_TICKET and _phone(body.get("number")):
            return f"hint:n:{_phone(body.get('number'))}"
        return None

    async def _remember_intent(self, call: RestCall) -> None:
        """`POST /tickets` and external `createticket` are agent creations (`NewTicketUserCreate`).

        The request is seen before the backend's socket push, so a hint keyed by contact lets the
        push, which looks like any other new ticket, be told apart. The hint names its flow, so
        that a refused request (anyone can send one) withdraws it again: see `_withdraw_intent`.
        """
        key = self._intent_key(call)
        if key is not None:
            self._set(key, call.flow_id or True, self.settings.hint_ttl_s)

    async def _withdraw_intent(self, call: RestCall) -> None:
        """A creation Whazing refused (401, 403, 4xx, 5xx) makes no ticket: its hint would mislabel
        the next inbound ticket of that contact as agent-made."""
        if call.kind not in routes.READ_REQUEST:
            return
        key = self._intent_key(call)
        if key is not None and call.flow_id is not None and await self._get(key) == call.flow_id:
            self._set(key, None, 1)

    # -- tickets -------------------------------------------------------------------------------
    @staticmethod
    def _tkey(tenant: int | None, ticket_id: int | None) -> str:
        return f"t:{tenant}:{ticket_id}"

    async def _origin(self, ticket: Mapping[str, Any]) -> str:
        contact = v if isinstance(v := ticket.get("contact"), dict) else {}
        cid = as_int(ticket.get("contactId")) or as_int(contact.get("id"))
        if cid is not None and await self._get(f"hint:c:{cid}"):
            return model.ORIGIN_AGENT
        number = _phone(contact.get("number"))
        if number and await self._get(f"hint:n:{number}"):
            return model.ORIGIN_AGENT
        if ticket.get("isActiveDemand") is True and ticket.get("isCreated") is not True:
            return model.ORIGIN_AGENT
        return model.ORIGIN_INBOUND

    async def ticket_seen(
        self,
        ticket: Mapping[str, Any],
        tenant_id: int | None,
        ts: float,
        source: str,
        flow_id: str | None,
        *,
        may_create: bool = True,
    ) -> list[Event]:
        ticket_id = as_int(ticket.get("id"))
        if ticket_id is None or not isinstance(ticket.get("status"), str):
            return []
        tenant_id = tenant_id if tenant_id is not None else as_int(ticket.get("tenantId"))
        key = self._tkey(tenant_id, ticket_id)
        old = await self._get(key)
        if old is not None and is_stale(old, ticket):
            return []
        new = snapshot(ticket)
        if old is None:
            fresh = may_create and looks_new(ticket)
            if ticket.get("isCreated") is not True and (
                    (fresh and ticket.get("status") == CLOSED) or (not fresh and await self._created_while_away(ticket))):
                # Its creation push was missed (the gateway was away, or the ticket closed at
                # once): the creation, then what changed since, under the ids they would have
                # had live (infer/catchup.py).
                from whazing_gateway.infer.catchup import creation_of

                events = await self.ticket_seen(creation_of(ticket), tenant_id, ts, source, flow_id)
                return events + await self.ticket_seen(ticket, tenant_id, ts, source, flow_id, may_create=False)
            self._set_ticket(key, new)
            if not (may_create and looks_new(ticket)):
                return []  # first sighting of an old ticket: no event
            origin = await self._origin(ticket)
            changes = {f: (None, new[f]) for f in TRACKED if new[f] is not None}
            marker = ticket.get("createdAt") or ticket.get("updatedAt")
            eid = stable_id("evt", tenant_id, ticket_id, model.TICKET_CREATED, marker)
            when = event_time(marker, ts)
            return await self._emit([(model.TICKET_CREATED, changes, eid, origin)], ticket, tenant_id, ticket_id, when, source, flow_id)
        if all(old.get(f) == new[f] for f in TRACKED):
            if old.get("updatedAt") != new["updatedAt"] and new["updatedAt"] is not None:
                self._set_ticket(key, new)
            return []
        self._set_ticket(key, new)
        found = []
        for etype, changes in diff(old, new):
            eid = stable_id("evt", tenant_id, ticket_id, etype,
                            *(f"{f}={old.get(f)}>{new[f]}" for f in TRACKED), new["updatedAt"])
            found.append((etype, changes, eid, None))
        return await self._emit(found, ticket, tenant_id, ticket_id, event_time(new["updatedAt"], ts), source, flow_id)

    async def _created_while_away(self, ticket: Mapping[str, Any]) -> bool:
        """Created after the catch-up watermark (until then the gateway saw everything), yet never
        seen: its creation happened while the gateway was away."""
        from whazing_gateway.infer.catchup import WATERMARK_KEY

        since = self.away_since if self.away_since is not None else await self._get(WATERMARK_KEY)
        created = _ts(ticket.get("createdAt"))
        return isinstance(since, (int, float)) and created is not None and created >= since

    async def _emit(self, found, ticket, tenant_id, ticket_id, ts, source, flow_id) -> list[Event]:
        if not found:
            return []
        last = await self._get(f"m:{tenant_id}:{ticket_id}")
        out = []
        for etype, changes, eid, origin in found:
            if await self._seen(eid):
                continue
            self._overlay[f"e:{eid}"] = True  # a second copy within this record is no new event
            out.append(Event(eid, etype, tenant_id, ticket_id, ts, dict(ticket), last, changes, origin, source, flow_id))
        return out

    # -- messages ------------------------------------------------------------------------------
    async def message_seen(
        self, message: Mapping[str, Any], tenant_id: int | None, ts: float, flow_id: str | None
    ) -> list[Event]:
        mid = message.get("id") or message.get("messageId")
        if not _is_message_id(mid) or not isinstance(message.get("fromMe"), bool):
            return []
        ticket = v if isinstance(v := message.get("ticket"), dict) else {}
        ticket_id = as_int(message.get("ticketId")) or as_int(ticket.get("id"))
        tenant_id = tenant_id if tenant_id is not None else as_int(message.get("tenantId"))
        etype = model.MESSAGE_SENT if message["fromMe"] else model.MESSAGE_RECEIVED
        eid = stable_id("evt", tenant_id, "message", mid)
        if await self._seen(eid):
            return []
        self._overlay[f"e:{eid}"] = True
        if etype == model.MESSAGE_RECEIVED and ticket_id is not None:
            kept = {k: v for k, v in message.items() if k not in _MESSAGE_DROP}
            self._set(f"m:{tenant_id}:{ticket_id}", kept, self.settings.ticket_ttl_s)
        ticket_view = dict(ticket)
        if ticket_id is not None:
            ticket_view.setdefault("id", ticket_id)
        when = event_time(message.get("createdAt"), ts)
        return [Event(eid, etype, tenant_id, ticket_id, when, ticket_view, dict(message), {}, None, "socket", flow_id)]


class Uncommitted:
    """A store whose reads see the batch's uncommitted writes and whose writes wait for
    `Inferrer.commit`: what the router remembers about a ticket is undone with the record."""

    def __init__(self, inferrer: Inferrer) -> None:
        self._inferrer = inferrer

    async def get(self, key: str) -> Any:
        return await self._inferrer._get(key)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        self._inferrer._set(key, value, ttl_s)
