"""Webhook bodies: `whazing` (Whazing's native bodies, field for field) or `envelope`.

`whazing` lets an n8n flow written for Whazing's own webhooks run unchanged; `envelope` is
for receivers that want the event type, a stable id and the raw objects. Values the traffic
did not show are null, never invented; integers stay integers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from whazing_gateway import model
from whazing_gateway.upstream.media import Media
from whazing_gateway.route.rules import channel_of, message_ticket, ticket_contact

FORMATS = model.FORMATS  # declared once, as model.Format

# `Type` of the native ticket webhooks; the last two are ours (Whazing has no such events).
TICKET_TYPE_NAMES = {
    model.TICKET_TRANSFERRED: "TransferTicket",
    model.TICKET_CLOSED: "ClosedTicket",
    model.TICKET_REOPENED: "ReopenTicket",
    model.TICKET_ACCEPTED: "AcceptTicket",
}

CONTACT_FIELDS = ("id", "name", "phoneNumber", "profilePicUrl", "email", "isGroup", "pushname", "lid",
                  "kanbanId", "followupId")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def _m(obj: Any) -> Mapping[str, Any]:
    return obj if isinstance(obj, Mapping) else {}


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ticket_view(event: model.Event) -> dict[str, Any]:
    """The ticket as best known: the event's ticket, completed by the message's snapshot. For a
    message event the snapshot's status wins (the status when the message came); a ticket event's
    message is an older one, so there the ticket's own status stands."""
    view = dict(message_ticket(event))
    for k, v in (event.ticket or {}).items():
        if v is not None or k not in view:
            view[k] = v
    mt = message_ticket(event)
    if event.type in model.MESSAGE_EVENTS and mt.get("status") is not None:
        view["status"] = mt["status"]
    if view.get("id") is None and event.ticket_id is not None:
        view["id"] = event.ticket_id
    return view


def contact_body(contact: Mapping[str, Any], fallback_id: Any = None) -> dict[str, Any]:
    """The 10 contact fields of the native bodies; `phoneNumber` is the Contact's `number`."""
    out = {k: contact.get(k) for k in CONTACT_FIELDS}
    out["phoneNumber"] = None if contact.get("number") is None else str(contact["number"])
    if out["id"] is None:
        out["id"] = fallback_id
    return out


def _whatsapp(event: model.Event) -> dict[str, Any]:
    cid, name = channel_of(event)
    return {"id": cid, "name": name}


def _message_body_text(event: model.Event) -> str:
    """`messageBody` of a ticket webhook, as Whazing fills it (notes, section 4).

    `""` when an agent created the ticket; otherwise the ticket's own `lastMessage` as the push
    carried it: the inbound text for NewTicket and for a reopen by a new message, and for
    transfers and closes the last message whoever sent it (agent, bot, system notice). Only a
    ticket object without `lastMessage` (older builds) falls back to the last received message.
    """
    if event.type == model.TICKET_CREATED and event.origin == model.ORIGIN_AGENT:
        return ""
    last = (event.ticket or {}).get("lastMessage")
    if isinstance(last, str):
        return last
    body = _m(event.message).get("body")
    return body if isinstance(body, str) else ""


def ticket_type(event: model.Event) -> str:
    if event.type == model.TICKET_CREATED:
        return event.origin if event.origin in (model.ORIGIN_AGENT, model.ORIGIN_INBOUND) else model.ORIGIN_INBOUND
    return TICKET_TYPE_NAMES[event.type]


def whazing_ticket_body(event: model.Event) -> dict[str, Any]:
    t = _ticket_view(event)
    return {
        "Type": ticket_type(event),
        "messageBody": _message_body_text(event),
        "ticket": {k: t.get(k) for k in ("id", "status", "protocol", "queueId", "userId", "apiConfig",
                                         "closingReasonId")},
        "contact": contact_body(ticket_contact(event), t.get("contactId")),
        "whatsapp": _whatsapp(event),
    }


def _user(msg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The agent of a hand-sent message: what the traffic showed of it, or null."""
    user = msg.get("user")
    if isinstance(user, Mapping):
        return {"id": user.get("id"), "name": user.get("name"), "email": user.get("email")}
    if msg.get("userId") is not None:
        return {"id": msg["userId"], "name": None, "email": None}
    return None


def whazing_message_body(event: model.Event, media: Media | None = None) -> dict[str, Any]:
    """A native message body. `media` is given when the rule asked for media in base64: its
    base64 fills `mediaBase64`; when it was left out, `mediaBase64Note` (last key) says why."""
    msg = _m(event.message)
    t = _ticket_view(event)
    contact = ticket_contact(event)
    sender = msg.get("contact")
    contactmessage = None
    if t.get("isGroup") or contact.get("isGroup"):
        if isinstance(sender, Mapping) and sender.get("id") != contact.get("id"):
            contactmessage = contact_body(sender)
    return {
        "messageId": msg.get("messageId", msg.get("id")),
        "messageBody": msg.get("body"),
        "timestamp": msg.get("timestamp"),
        "status": msg.get("status"),
        "fromMe": msg.get("fromMe", event.type == model.MESSAGE_SENT),
        "mediaType": msg.get("mediaType"),
        "mediaUrl": msg.get("mediaUrl"),
        "mediaBase64": media.base64 if media is not None else None,
        "isDeleted": msg.get("isDeleted"),
        "sendType": msg.get("sendType"),
        "edited": msg.get("edited"),
        "reactions": msg.get("reactions"),
        "dataJson": msg.get("dataJson"),
        "ticket": {k: t.get(k) for k in ("id", "status", "protocol", "queueId", "apiConfig", "isGroup")},
        "contact": contact_body(contact, t.get("contactId")),
        "contactmessage": contactmessage,
        "user": _user(msg),
        "whatsapp": _whatsapp(event),
    } | _media_note(media)


def _media_note(media: Media | None) -> dict[str, Any]:
    return {"mediaBase64Note": media.note} if media is not None and media.note else {}


def whazing_body(event: model.Event, media: Media | None = None) -> dict[str, Any]:
    if event.type in model.MESSAGE_EVENTS:
        return whazing_message_body(event, media)
    return whazing_ticket_body(event)


def envelope_body(event: model.Event, media: Media | None = None) -> dict[str, Any]:
    data_media = {"mediaBase64": media.base64} | _media_note(media) if media is not None else {}
    return {
        "type": event.type,
        "id": event.id,
        "timestamp": iso_utc(event.ts),
        "data": {
            "tenantId": event.tenant_id,
            "ticket": dict(event.ticket) if event.ticket else None,
            "message": dict(event.message) if event.message is not None else None,
            "changes": {k: {"from": v[0], "to": v[1]} for k, v in (event.changes or {}).items()},
            "origin": event.origin,
            **data_media,
        },
    }


def render(event: model.Event, fmt: str = "whazing", media: Media | None = None) -> bytes:
    """The body of one webhook for a target of format `fmt`: compact JSON, UTF-8. `media`: the
    message's media for a rule with media in base64 (None: the rule did not ask)."""
    if fmt == "whazing":
        return _dumps(whazing_body(event, media))
    if fmt == "envelope":
        return _dumps(envelope_body(event, media))
    raise ValueError(f"unknown payload format {fmt!r} (expected one of {', '.join(FORMATS)})")


def test_body(ts: float | None = None) -> bytes:
    """The body of Whazing's "test" button, for a test delivery to a target."""
    return _dumps({"event": "test", "origin": "webhook-config", "timestamp": iso_utc(time.time() if ts is None else ts)})


test_body.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one
