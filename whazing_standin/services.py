"""What Whazing's services do to the data, and which socket pushes they make, in their order.

Each function mutates the `World` and returns the pushes as `Emit`s; the server sends them
before it answers the HTTP request, as the real services do. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whazing_standin.store import (
    Contact,
    Message,
    Ticket,
    World,
    contact_json,
    iso_now,
    message_json,
    now_ms,
    ticket_json,
)

TRANSFER_NOTICE = "*Mensagem Automática*:\nO seu atendimento está sendo transferido para {target}. Aguarde."


@dataclass(frozen=True, slots=True)
class Emit:
    """One socket.io emit: `event` to the tenant's room, carrying `{type, payload}`."""

    room: str
    event: str
    data: dict[str, Any]


class ServiceError(Exception):
    """An AppError: rendered as `{"error": <code>}` with its HTTP status."""

    def __init__(self, code: str, status: int = 400) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


def emit(tenant_id: int, kind: str, payload: dict[str, Any] | None) -> Emit:
    """helpers/socketEmit: contact types go to `:contactList`, all others to `:ticketList`."""
    suffix = "contactList" if kind.startswith("contact:") else "ticketList"
    return Emit(str(tenant_id), f"{tenant_id}:{suffix}", {"type": kind, "payload": payload})


def _touch(obj: Any) -> None:
    obj.updatedAt = iso_now()


def get_ticket(w: World, tenant_id: int, ticket_id: Any) -> Ticket:
    try:
        t = w.tickets.get(int(ticket_id))
    except (TypeError, ValueError):
        t = None
    if t is None or t.tenantId != tenant_id:
        raise ServiceError("ERR_NO_TICKET_FOUND", 404)
    return t


def open_ticket_of(w: World, tenant_id: int, contact_id: int, whatsapp_id: int | None = None) -> Ticket | None:
    for t in w.tickets.values():
        if (t.tenantId == tenant_id and t.contactId == contact_id and t.status in ("open", "pending")
                and (whatsapp_id is None or t.whatsappId == whatsapp_id)):
            return t
    return None


def _protocol(ticket_id: int) -> str:
    return f"2025{ticket_id:08d}"


# ---- contacts --------------------------------------------------------------------------------

def find_contact(w: World, tenant_id: int, number: str) -> Contact | None:
    for c in w.contacts.values():
        if c.tenantId == tenant_id and c.number == number:
            return c
    return None


def create_or_update_contact(w: World, tenant_id: int, number: str, name: str | None = None,
                             is_group: bool = False, email: str = "") -> tuple[Contact, list[Emit]]:
    """CreateOrUpdateContactService: a new or renamed contact is pushed as `contact:update`."""
    c = find_contact(w, tenant_id, number)
    if c is None:
        c = Contact(w.new_contact_id(), name or number, number, tenant_id, email=email,
                    isGroup=is_group, pushname=name)
        w.contacts[c.id] = c
    elif name and name != c.pushname:
        c.pushname = name
        if c.name == c.number:
            c.name = name
        _touch(c)
    else:
        return c, []
    return c, [emit(tenant_id, "contact:update", contact_json(c) or {})]


def update_contact(w: World, tenant_id: int, contact_id: int, data: dict[str, Any]) -> tuple[Contact, list[Emit]]:
    c = w.contacts.get(contact_id)
    if c is None or c.tenantId != tenant_id:
        raise ServiceError("ERR_NO_CONTACT_FOUND", 404)
    for key in ("name", "number", "email"):
        if key in data and data[key] is not None:
            setattr(c, key, str(data[key]))
    _touch(c)
    return c, [emit(tenant_id, "contact:update", contact_json(c) or {})]


def delete_contact(w: World, tenant_id: int, contact_id: int) -> list[Emit]:
    c = w.contacts.get(contact_id)
    if c is None or c.tenantId != tenant_id:
        raise ServiceError("ERR_NO_CONTACT_FOUND", 404)
    del w.contacts[contact_id]
    return [emit(tenant_id, "contact:delete", contact_json(c) or {})]


# ---- messages --------------------------------------------------------------------------------

def _add_message(w: World, t: Ticket, *, body: str, from_me: bool, contact_id: int, media_type: str,
                 media_url: str | None, status: str, send_type: str | None, user_id: int | None,
                 message_id: str | None = None) -> Message:
    # WhatsApp's message time is in seconds (the native webhook's `timestamp`: 1735689600);
    # the ticket's lastMessageAt is JavaScript's Date.now(), in milliseconds.
    m = Message(message_id or w.new_message_id(), t.id, contact_id, t.tenantId, body, from_me, now_ms() // 1000,
                mediaType=media_type, mediaUrl=media_url, status=status, sendType=send_type,
                userId=user_id, read=from_me)
    w.messages[m.id] = m
    t.lastMessage = body
    t.lastMessageAt = now_ms()
    if from_me:
        t.answered = True
    else:
        t.unreadMessages += 1
    _touch(t)
    return m


def find_or_create_ticket(w: World, tenant_id: int, owner: Contact, whatsapp_id: int
                          ) -> tuple[Ticket, dict[str, bool]]:
    """FindOrCreateTicketService: the open/pending ticket of the contact on the channel, else
    (ReopenTicket setting) its last closed one back to pending, else a new pending ticket."""
    t = open_ticket_of(w, tenant_id, owner.id, whatsapp_id)
    if t is not None:
        return t, {"isCreated": False, "reopened": False}
    if w.reopen_ticket:
        closed = [x for x in w.tickets.values()
                  if x.tenantId == tenant_id and x.contactId == owner.id and x.whatsappId == whatsapp_id]
        if closed:
            t = max(closed, key=lambda x: x.id)
            t.status, t.userId, t.unreadMessages = "pending", None, 0
            _touch(t)
            return t, {"isCreated": True, "reopened": True}
    tid = w.new_ticket_id()
    t = Ticket(tid, owner.id, whatsapp_id, tenant_id, isGroup=owner.isGroup, protocol=_protocol(tid))
    w.tickets[tid] = t
    return t, {"isCreated": True, "reopened": False}


def inbound_message(w: World, tenant_id: int, whatsapp_id: int, number: str, body: str, *,
                    name: str | None = None, media_type: str = "chat", media_url: str | None = None,
                    group_number: str | None = None, group_name: str | None = None,
                    from_me: bool = False, message_id: str | None = None
                    ) -> tuple[Ticket, Message, list[Emit], dict[str, Any]]:
    """A message arriving from WhatsApp (HandleMessage -> FindOrCreateTicketService -> CreateMessage).

    Pushes: `contact:update` for new contacts, `ticket:update` (with `isCreated: true` when the
    ticket was opened or, under the ReopenTicket setting, a closed one was reused), `chat:create`.
    `from_me` is a message typed on the phone itself (`fromMe: true`, `status: "received"`).
    """
    if whatsapp_id not in w.whatsapps or w.whatsapps[whatsapp_id].tenantId != tenant_id:
        raise ServiceError("ERR_NO_WAPP_FOUND", 404)
    emits: list[Emit] = []
    sender, e = create_or_update_contact(w, tenant_id, number, name)
    emits += e
    owner = sender
    if group_number:
        owner, e = create_or_update_contact(w, tenant_id, group_number, group_name, is_group=True)
        emits += e
    t, info = find_or_create_ticket(w, tenant_id, owner, whatsapp_id)
    # The Message's own contact is who wrote it (in a group: the member); the ticket's is the group.
    m = _add_message(w, t, body=body, from_me=from_me, contact_id=sender.id, media_type=media_type,
                     media_url=media_url, status="received", send_type=None, user_id=None,
                     message_id=message_id)
    virtual = {"isCreated": True} if info["isCreated"] else {}
    emits.append(emit(tenant_id, "ticket:update", ticket_json(w, t, **virtual)))
    emits.append(emit(tenant_id, "chat:create", message_json(w, m)))
    return t, m, emits, info


def send_message(w: World, tenant_id: int, t: Ticket, *, body: str, user_id: int | None,
                 media_type: str = "chat", media_url: str | None = None,
                 send_type: str = "chat") -> tuple[Message, list[Emit]]:
    """The platform sends to the contact (agent, API, bot or system): one `chat:create`, fromMe."""
    m = _add_message(w, t, body=body, from_me=True, contact_id=t.contactId, media_type=media_type,
                     media_url=media_url, status="sended", send_type=send_type, user_id=user_id)
    return m, [emit(tenant_id, "chat:create", message_json(w, m))]


def get_message(w: World, tenant_id: int, message_id: str) -> Message:
    m = w.messages.get(message_id)
    if m is None or m.tenantId != tenant_id:
        raise ServiceError("ERR_NO_MESSAGE_FOUND", 404)
    return m


def ack_message(w: World, tenant_id: int, message_id: str, ack: int) -> list[Emit]:
    m = get_message(w, tenant_id, message_id)
    m.ack = ack
    _touch(m)
    return [emit(tenant_id, "chat:ack", message_json(w, m))]


def edit_message(w: World, tenant_id: int, message_id: str, body: str) -> list[Emit]:
    m = get_message(w, tenant_id, message_id)
    m.body, m.edited = body, True
    _touch(m)
    return [emit(tenant_id, "chat:update", message_json(w, m))]


def react_message(w: World, tenant_id: int, message_id: str, reaction: str, user_id: int) -> list[Emit]:
    m = get_message(w, tenant_id, message_id)
    m.reactions.append({"type": reaction, "userId": user_id})
    _touch(m)
    return [emit(tenant_id, "chat:update", message_json(w, m))]


def delete_message(w: World, tenant_id: int, message_id: str) -> None:
    """Marks it deleted; the real backend pushes nothing for this (only the REST call shows it)."""
    m = get_message(w, tenant_id, message_id)
    m.isDeleted = True
    _touch(m)


# ---- tickets ---------------------------------------------------------------------------------

def create_ticket(w: World, tenant_id: int, *, contact_id: int, status: str, user_id: int | None,
                  whatsapp_id: int | None, queue_id: int | None = None, is_created: bool = False
                  ) -> tuple[Ticket, list[Emit]]:
    """CreateTicketService (an agent starts a conversation): `isActiveDemand`, no `isCreated`.

    The external API's createticket passes `is_created=True` (that ticket does carry it).
    """
    c = w.contacts.get(contact_id)
    if c is None or c.tenantId != tenant_id:
        raise ServiceError("ERR_NO_CONTACT_FOUND", 404)
    if whatsapp_id is None:
        whatsapp_id = next((x.id for x in w.whatsapps.values() if x.tenantId == tenant_id and x.isDefault), None)
    if whatsapp_id not in w.whatsapps:
        raise ServiceError("ERR_NO_DEF_WAPP_FOUND", 404)
    if open_ticket_of(w, tenant_id, contact_id) is not None:
        raise ServiceError("ERR_OTHER_OPEN_TICKET", 409)
    tid = w.new_ticket_id()
    t = Ticket(tid, contact_id, whatsapp_id, tenant_id, status=status or "open", userId=user_id,
               queueId=queue_id, isGroup=c.isGroup, isActiveDemand=not is_created, protocol=_protocol(tid))
    w.tickets[tid] = t
    w.add_log(tid, user_id, "create")
    virtual = {"isCreated": True} if is_created else {"isActiveDemand": True}
    return t, [emit(tenant_id, "ticket:update", ticket_json(w, t, **virtual))]


def _target_name(w: World, t: Ticket) -> str:
    if t.userId and t.userId in w.users:
        return w.users[t.userId].name
    if t.queueId and t.queueId in w.queues:
        return w.queues[t.queueId].queue
    return "outro atendente"


def update_ticket(w: World, tenant_id: int, ticket_id: Any, data: dict[str, Any], *,
                  is_transference: bool = False, request_user: int | None = None,
                  emit_old: bool = True) -> tuple[Ticket, list[Emit]]:
    """UpdateTicketService: a status, user or queue change.

    Pushes, in order: the OLD state (every `PUT /tickets/:id` does), the new state (with
    `isTransference: true` for an agent's transfer), `notification:new` when the ticket became
    pending for someone, then the transfer notice sent to the contact (`chat:create`, fromMe).
    """
    t = get_ticket(w, tenant_id, ticket_id)
    emits: list[Emit] = []
    if emit_old:
        emits.append(emit(tenant_id, "ticket:update", ticket_json(w, t)))
    old = (t.status, t.userId, t.queueId)
    status = data.get("status")
    if status == "close":
        status = "closed"
    if status is not None and status not in ("open", "pending", "closed"):
        raise ServiceError("ERR_INVALID_STATUS", 400)
    if old[0] == "closed" and status in ("open", "pending"):
        other = open_ticket_of(w, tenant_id, t.contactId)
        if other is not None and other.id != t.id:
            raise ServiceError("ERR_OTHER_OPEN_TICKET", 409)
    if status is not None:
        t.status = status
    if "userId" in data:
        t.userId = int(data["userId"]) if data["userId"] not in (None, "") else None
    if "queueId" in data:
        t.queueId = int(data["queueId"]) if data["queueId"] not in (None, "") else None
    if t.status == "open" and old[0] != "open":
        t.unreadMessages = 0
    _touch(t)
    if old[0] == "pending" and t.status == "open":
        w.add_log(t.id, request_user, "open")
    if t.status == "closed" and old[0] != "closed":
        w.add_log(t.id, request_user, "closed")
    if is_transference:
        w.add_log(t.id, request_user, "transfered")
        if t.userId:
            w.add_log(t.id, t.userId, "receivedTransfer")
    virtual = {"isTransference": True} if is_transference else {}
    new = ticket_json(w, t, **virtual)
    emits.append(emit(tenant_id, "ticket:update", new))
    if t.status == "pending" and (old[0] != "pending" or old[1:] != (t.userId, t.queueId)):
        emits.append(emit(tenant_id, "notification:new", ticket_json(w, t, **virtual)))
    if is_transference:
        _, e = send_message(w, tenant_id, t, body=TRANSFER_NOTICE.format(target=_target_name(w, t)),
                            user_id=None, send_type="bot")
        emits += e
    return t, emits


def bot_transfer(w: World, tenant_id: int, ticket_id: Any, queue_id: int, body: str | None = None
                 ) -> tuple[Ticket, list[Emit]]:
    """A ChatFlow/Typebot choice moves the ticket to a queue: no old state, no `isTransference`."""
    t = get_ticket(w, tenant_id, ticket_id)
    if queue_id not in w.queues:
        raise ServiceError("ERR_QUEUE_NOT_FOUND", 404)
    emits: list[Emit] = []
    if body:
        _, emits = send_message(w, tenant_id, t, body=body, user_id=None, send_type="bot")
    t.queueId = queue_id
    _touch(t)
    emits.append(emit(tenant_id, "ticket:update", ticket_json(w, t)))
    return t, emits


def job_update(w: World, tenant_id: int, ticket_id: Any, data: dict[str, Any]) -> tuple[Ticket, list[Emit]]:
    """A timer or the external API changes a ticket: one `ticket:update` with the new state only."""
    return update_ticket(w, tenant_id, ticket_id, data, emit_old=False)


def close_tickets(w: World, tenant_id: int, ticket_ids: list[Any], user_id: int | None) -> tuple[list[int], list[Emit]]:
    """closeTicketsService: each ticket closed in turn, one `ticket:update` each (new state)."""
    done: list[int] = []
    emits: list[Emit] = []
    for tid in ticket_ids:
        t = get_ticket(w, tenant_id, tid)
        if t.status == "closed":
            continue
        t.status = "closed"
        _touch(t)
        w.add_log(t.id, user_id, "closed")
        emits.append(emit(tenant_id, "ticket:update", ticket_json(w, t)))
        done.append(t.id)
    return done, emits


def delete_ticket(w: World, tenant_id: int, ticket_id: Any) -> None:
    """No push: the real backend shows a deletion only through the REST call."""
    t = get_ticket(w, tenant_id, ticket_id)
    del w.tickets[t.id]
    for mid in [k for k, m in w.messages.items() if m.ticketId == t.id]:
        del w.messages[mid]
