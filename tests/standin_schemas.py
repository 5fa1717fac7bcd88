"""Field lists of the objects Whazing puts on the wire (from the Whazing traffic notes (shared/whazing/README.md beside this project)).

`check(obj, schema)` returns the differences: a missing field or a value of the wrong type.
Extra fields are allowed (Whazing versions add fields), missing ones are not: if the stand-in
drifts from the notes, a test says which field.
"""

from __future__ import annotations

import re
from typing import Any

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
NoneType = type(None)
INT = (int,)
OPT_INT = (int, NoneType)
STR = (str,)
OPT_STR = (str, NoneType)
BOOL = (bool,)
OPT_BOOL = (bool, NoneType)
OPT_DICT = (dict, NoneType)

# Section 4: the 10 contact fields of the native webhook (phoneNumber is Contact.number).
CONTACT: dict[str, Any] = {
    "id": INT, "name": STR, "number": STR, "email": STR, "profilePicUrl": OPT_STR, "isGroup": BOOL,
    "pushname": OPT_STR, "lid": OPT_STR, "kanbanId": OPT_INT, "followupId": OPT_INT,
}

USER_REF: dict[str, Any] = {"id": INT, "name": STR}
QUEUE_REF: dict[str, Any] = {"id": INT, "queue": STR}
WHATSAPP_REF: dict[str, Any] = {"id": INT, "name": STR}

# Section 3 (ticket:update): the full object with its associations; ids are integers.
TICKET: dict[str, Any] = {
    "id": INT, "status": STR, "queueId": OPT_INT, "userId": OPT_INT, "whatsappId": INT, "contactId": INT,
    "isGroup": BOOL, "protocol": STR, "apiConfig": OPT_DICT, "closingReasonId": OPT_INT,
    "createdAt": "iso", "updatedAt": "iso", "isCreated": OPT_BOOL, "isTransference": OPT_BOOL,
    "isActiveDemand": OPT_BOOL, "unreadMessages": INT, "lastMessage": OPT_STR,
    "contact": CONTACT, "user": ("optional", USER_REF), "queue": ("optional", QUEUE_REF),
    "whatsapp": WHATSAPP_REF,
}

# Section 3 (chat:create): `ticket` {id, status, queueId, userId, whatsappId, isGroup, contact}.
MESSAGE_TICKET: dict[str, Any] = {
    "id": INT, "status": STR, "queueId": OPT_INT, "userId": OPT_INT, "whatsappId": INT, "isGroup": BOOL,
    "protocol": STR, "apiConfig": OPT_DICT, "contact": CONTACT,
}

# Sections 3 and 4: a Message, with what the native message webhook reads from it.
MESSAGE: dict[str, Any] = {
    "id": STR, "messageId": STR, "body": STR, "fromMe": BOOL, "mediaType": STR, "mediaUrl": OPT_STR,
    "ticketId": INT, "contactId": INT, "timestamp": INT, "ack": INT, "sendType": OPT_STR, "status": STR,
    "isDeleted": BOOL, "edited": BOOL, "reactions": (list,), "dataJson": (dict, str, NoneType),
    "userId": OPT_INT, "ticket": MESSAGE_TICKET, "contact": CONTACT,
    "user": ("optional", USER_REF),
}

ENVELOPE_KEYS = {"type", "payload"}
TICKET_LIST_TYPES = {"chat:create", "chat:update", "chat:ack", "chat:delete", "ticket:update", "notification:new"}
CONTACT_LIST_TYPES = {"contact:update", "contact:delete"}
PAYLOAD_SCHEMA = {
    "chat:create": MESSAGE, "chat:update": MESSAGE, "chat:ack": MESSAGE, "chat:delete": MESSAGE,
    "ticket:update": TICKET, "notification:new": TICKET,
    "contact:update": CONTACT, "contact:delete": CONTACT,
}


def check(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every field of `schema` present in `obj` with an allowed type (nested schemas recurse)."""
    if not isinstance(obj, dict):
        return [f"{path or '<root>'}: not an object"]
    errors: list[str] = []
    for name, rule in schema.items():
        where = f"{path}.{name}" if path else name
        if name not in obj:
            errors.append(f"{where}: missing")
            continue
        value = obj[name]
        if isinstance(rule, tuple) and len(rule) == 2 and rule[0] == "optional":
            if value is not None:
                errors += check(value, rule[1], where)
        elif isinstance(rule, dict):
            errors += check(value, rule, where)
        elif rule == "iso":
            if not (isinstance(value, str) and ISO.match(value)):
                errors.append(f"{where}: not an ISO timestamp: {value!r}")
        elif not isinstance(value, rule) or (isinstance(value, bool) and bool not in rule):
            errors.append(f"{where}: {type(value).__name__} not in {[t.__name__ for t in rule]}")
    return errors


def check_emit(event: str, data: Any, tenant_id: int) -> list[str]:
    """An emit: right event name for its type, `{type, payload}` envelope, payload schema."""
    if not isinstance(data, dict) or set(data) != ENVELOPE_KEYS:
        return [f"{event}: envelope keys {sorted(data) if isinstance(data, dict) else data!r}"]
    kind = data["type"]
    expected = (f"{tenant_id}:contactList" if kind in CONTACT_LIST_TYPES
                else f"{tenant_id}:ticketList" if kind in TICKET_LIST_TYPES else None)
    if expected != event:
        return [f"{event}: type {kind!r} does not belong to this event"]
    return [f"{kind}: {e}" for e in check(data["payload"], PAYLOAD_SCHEMA[kind])]
