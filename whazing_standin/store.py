"""In-memory Whazing data and its JSON shapes.

Records are plain dataclasses; the `*_json` functions turn them into the objects the real
backend puts on the wire (Sequelize `toJSON()` order and field names, nested associations),
so every route and every socket push renders the same object the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from whazing_standin import seed


def iso_now() -> str:
    """JavaScript's `Date.toISOString()` form: milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


@dataclass
class User:
    id: int
    name: str
    email: str
    password: str
    profile: str
    tenantId: int
    queues: tuple[int, ...] = ()
    tokenVersion: int = 0
    isOnline: bool = False
    configs: dict[str, Any] = field(default_factory=dict)  # the SPA's per-user UI preferences


@dataclass
class Queue:
    id: int
    queue: str
    tenantId: int
    isActive: bool = True
    createdAt: str = field(default_factory=iso_now)
    updatedAt: str = field(default_factory=iso_now)


@dataclass
class Whatsapp:
    id: int
    name: str
    number: str
    tenantId: int
    status: str = "CONNECTED"
    type: str = "whatsapp"
    isDefault: bool = False
    # Rating: the real backend holds a close for `timeRating` minutes; here seconds, for tests.
    ratingEnabled: bool = False
    timeRating: float = 0.0


@dataclass
class Contact:
    id: int
    name: str
    number: str
    tenantId: int
    email: str = ""
    profilePicUrl: str | None = None
    isGroup: bool = False
    pushname: str | None = None
    createdAt: str = field(default_factory=iso_now)
    updatedAt: str = field(default_factory=iso_now)


@dataclass
class Ticket:
    id: int
    contactId: int
    whatsappId: int
    tenantId: int
    status: str = "pending"
    userId: int | None = None
    queueId: int | None = None
    isGroup: bool = False
    unreadMessages: int = 0
    lastMessage: str | None = None
    lastMessageAt: int | None = None
    answered: bool = False
    isActiveDemand: bool = False
    protocol: str = ""
    apiConfig: dict[str, Any] | None = None
    closingReasonId: int | None = None
    createdAt: str = field(default_factory=iso_now)
    updatedAt: str = field(default_factory=iso_now)


@dataclass
class Message:
    id: str
    ticketId: int
    contactId: int
    tenantId: int
    body: str
    fromMe: bool
    timestamp: int
    mediaType: str = "chat"
    mediaUrl: str | None = None
    status: str = "received"
    ack: int = 0
    read: bool = False
    sendType: str | None = None
    userId: int | None = None
    isDeleted: bool = False
    edited: bool = False
    reactions: list[Any] = field(default_factory=list)
    quotedMsgId: str | None = None
    createdAt: str = field(default_factory=iso_now)
    updatedAt: str = field(default_factory=iso_now)


@dataclass
class ApiConfig:
    id: str
    name: str
    token: str
    sessionId: int
    tenantId: int
    userId: int
    isActive: bool = True


@dataclass
class LogTicket:
    id: int
    ticketId: int
    userId: int | None
    type: str
    createdAt: str = field(default_factory=iso_now)


@dataclass
class World:
    """Everything the stand-in knows. Counters are part of it, so a reset replays the same ids."""

    users: dict[int, User] = field(default_factory=dict)
    queues: dict[int, Queue] = field(default_factory=dict)
    whatsapps: dict[int, Whatsapp] = field(default_factory=dict)
    contacts: dict[int, Contact] = field(default_factory=dict)
    tickets: dict[int, Ticket] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    api_configs: dict[str, ApiConfig] = field(default_factory=dict)
    logs: list[LogTicket] = field(default_factory=list)
    reopen_ticket: bool = False
    private_files: bool = False  # media under /public/ only with a valid bearer (newer builds' privateFile)
    settings: dict[str, str] = field(default_factory=lambda: dict(seed.SETTINGS))
    general_settings: dict[str, str] = field(default_factory=lambda: dict(seed.GENERAL_SETTINGS))
    next_contact: int = 1
    next_ticket: int = 1
    next_message: int = 1
    next_log: int = 1

    def new_message_id(self) -> str:
        """A WhatsApp-like id ("3EB0" + 16 hex), derived from a counter: same sequence every run."""
        n = self.next_message
        self.next_message += 1
        return "3EB0" + hashlib.sha256(f"standin-message-{n}".encode()).hexdigest()[:16].upper()

    def new_contact_id(self) -> int:
        self.next_contact += 1
        return self.next_contact - 1

    def new_ticket_id(self) -> int:
        self.next_ticket += 1
        return self.next_ticket - 1

    def add_log(self, ticket_id: int, user_id: int | None, kind: str) -> None:
        self.logs.append(LogTicket(self.next_log, ticket_id, user_id, kind))
        self.next_log += 1


def seeded_world() -> World:
    """A fresh world holding the seed of `whazing_standin.seed`."""
    w = World()
    for uid, name, email, profile, queues in seed.USERS:
        w.users[uid] = User(uid, name, email, seed.PASSWORD, profile, seed.TENANT_ID, tuple(queues))
    for qid, name in seed.QUEUES.items():
        w.queues[qid] = Queue(qid, name, seed.TENANT_ID)
    for cid, name in seed.CHANNELS.items():
        w.whatsapps[cid] = Whatsapp(cid, name, seed.CHANNEL_NUMBERS[cid], seed.TENANT_ID,
                                    isDefault=cid == seed.CHANNEL_VENDAS)
    w.api_configs[seed.API_ID] = ApiConfig(seed.API_ID, seed.API_NAME, seed.API_TOKEN, seed.API_CHANNEL,
                                           seed.TENANT_ID, seed.ADMIN_ID)
    return w


# ---- JSON shapes -------------------------------------------------------------------------------

def user_json(u: User | None) -> dict[str, Any] | None:
    """The `user` association as tickets include it (attributes id, name, email, profile)."""
    if u is None:
        return None
    return {"id": u.id, "name": u.name, "email": u.email, "profile": u.profile}


def user_full_json(u: User) -> dict[str, Any]:
    return {"id": u.id, "name": u.name, "email": u.email, "profile": u.profile, "tenantId": u.tenantId,
            "isOnline": u.isOnline, "queues": [{"id": q} for q in u.queues]}


def queue_json(q: Queue | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"id": q.id, "queue": q.queue, "isActive": q.isActive, "tenantId": q.tenantId,
            "createdAt": q.createdAt, "updatedAt": q.updatedAt}


def whatsapp_json(w: Whatsapp | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {"id": w.id, "name": w.name, "status": w.status, "type": w.type, "number": w.number,
            "isDefault": w.isDefault, "tenantId": w.tenantId}


def contact_json(c: Contact | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"id": c.id, "name": c.name, "number": c.number, "email": c.email,
            "profilePicUrl": c.profilePicUrl, "isGroup": c.isGroup, "pushname": c.pushname,
            "lid": None, "kanbanId": None, "followupId": None, "tenantId": c.tenantId,
            "createdAt": c.createdAt, "updatedAt": c.updatedAt, "tags": [], "extraInfo": [],
            "wallets": []}


def ticket_json(w: World, t: Ticket, **virtual: Any) -> dict[str, Any]:
    """A Ticket with `contact`, `user`, `queue`, `whatsapp` loaded, plus virtual fields when given."""
    out: dict[str, Any] = {
        "id": t.id, "status": t.status, "unreadMessages": t.unreadMessages,
        "lastMessage": t.lastMessage, "lastMessageAt": t.lastMessageAt, "answered": t.answered,
        "isGroup": t.isGroup, "isActiveDemand": t.isActiveDemand, "protocol": t.protocol,
        "channel": "whatsapp", "userId": t.userId, "contactId": t.contactId,
        "whatsappId": t.whatsappId, "queueId": t.queueId, "tenantId": t.tenantId,
        "apiConfig": t.apiConfig, "closingReasonId": t.closingReasonId,
        "autoReplyId": None, "stepAutoReplyId": None, "chatFlowId": None, "stepChatFlow": None,
        "createdAt": t.createdAt, "updatedAt": t.updatedAt,
        "isTransference": None, "isCreated": None,
    }
    out.update(virtual)
    out["contact"] = contact_json(w.contacts.get(t.contactId))
    out["user"] = user_json(w.users.get(t.userId)) if t.userId else None
    out["queue"] = queue_json(w.queues.get(t.queueId)) if t.queueId else None
    out["whatsapp"] = whatsapp_json(w.whatsapps.get(t.whatsappId))
    return out


def message_json(w: World, m: Message) -> dict[str, Any]:
    """A Message with `ticket` (and its contact), `contact` (who wrote it: in a group, the member;
    the ticket's contact is the group) and `user` loaded."""
    t = w.tickets[m.ticketId]
    return {
        "id": m.id, "messageId": m.id, "ack": m.ack, "status": m.status, "read": m.read,
        "fromMe": m.fromMe, "body": m.body, "mediaType": m.mediaType, "mediaUrl": m.mediaUrl,
        "mediaName": m.mediaUrl.rsplit("/", 1)[-1] if m.mediaUrl else None,
        "timestamp": m.timestamp, "isDeleted": m.isDeleted, "edited": m.edited,
        "reactions": list(m.reactions), "sendType": m.sendType, "userId": m.userId,
        "quotedMsgId": m.quotedMsgId, "ticketId": m.ticketId, "contactId": m.contactId,
        "tenantId": m.tenantId, "dataJson": None, "scheduleDate": None,
        "createdAt": m.createdAt, "updatedAt": m.updatedAt,
        "ticket": {
            "id": t.id, "status": t.status, "queueId": t.queueId, "userId": t.userId,
            "whatsappId": t.whatsappId, "isGroup": t.isGroup, "protocol": t.protocol,
            "apiConfig": t.apiConfig, "contactId": t.contactId, "tenantId": t.tenantId,
            "contact": contact_json(w.contacts.get(t.contactId)),
            "whatsapp": whatsapp_json(w.whatsapps.get(t.whatsappId)),
        },
        "contact": contact_json(w.contacts.get(m.contactId)),
        "user": user_json(w.users.get(m.userId)) if m.userId else None,
        "quotedMsg": None,
    }
