"""Whazing's REST routes (section 2 of the Whazing notes) -> what a call means.

Only the calls that can reveal or cause a ticket or message change are named; everything else
is `None` and costs one dictionary lookup and a few regex tests on the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# kind names
LOGIN = "auth.login"
TICKET_LIST = "ticket.list"
TICKET_SHOW = "ticket.show"
TICKET_CREATE = "ticket.create"
TICKET_UPDATE = "ticket.update"
TICKET_DELETE = "ticket.delete"
TICKETS_CLOSE = "tickets.close"
MESSAGE_SEND = "message.send"
MESSAGE_DELETE = "message.delete"
EXT_SEND = "external.send"
EXT_UPDATE_QUEUE = "external.updatequeue"
EXT_UPDATE_TICKET = "external.updateticketinfo"
EXT_CREATE_TICKET = "external.createticket"
EXT_SHOW_TICKET = "external.showticket"
EXT_GET_TICKET = "external.ticket"
SOCKET_POLLING = "socketio.polling"


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    params: dict[str, str]


_EXT = r"/v1/api/external/(?P<apiId>[^/]+)"
_TABLE: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p + r"/?$"), k)
    for m, p, k in [
        ("POST", r"/auth/login", LOGIN),
        ("GET", r"/tickets", TICKET_LIST),
        ("GET", r"/tickets/(?P<ticketId>\d+)", TICKET_SHOW),
        ("POST", r"/tickets", TICKET_CREATE),
        ("PUT", r"/tickets/(?P<ticketId>\d+)", TICKET_UPDATE),
        ("DELETE", r"/tickets/(?P<ticketId>\d+)", TICKET_DELETE),
        ("POST", r"/tickets/close-tickets", TICKETS_CLOSE),
        ("POST", r"/messages/(?P<ticketId>\d+)", MESSAGE_SEND),
        ("DELETE", r"/messages/(?P<messageId>[^/]+)", MESSAGE_DELETE),
        ("POST", _EXT, EXT_SEND),
        ("POST", _EXT + r"/updatequeue", EXT_UPDATE_QUEUE),
        ("POST", _EXT + r"/updateticketinfo", EXT_UPDATE_TICKET),
        ("POST", _EXT + r"/createticket", EXT_CREATE_TICKET),
        ("POST", _EXT + r"/(?:showticket|showallticket|showticketchatbot)", EXT_SHOW_TICKET),
        ("GET", _EXT + r"/ticket/(?P<ticketId>\d+)", EXT_GET_TICKET),
        ("GET", r"/socket\.io", SOCKET_POLLING),
        ("POST", r"/socket\.io", SOCKET_POLLING),
    ]
]
_BY_METHOD: dict[str, list[tuple[re.Pattern[str], str]]] = {}
for _m, _p, _k in _TABLE:
    _BY_METHOD.setdefault(_m, []).append((_p, _k))

# What the inference reads of each kind. Requests: only creations, whose push would otherwise look
# like any new ticket. Responses: those that carry a Ticket (or drop one), and polling bodies.
# Everything else (logins, sends, bulk closes...) is named but never copied off the hot path.
READ_REQUEST = frozenset({TICKET_CREATE, EXT_CREATE_TICKET})
TICKET_RESPONSES = frozenset({TICKET_SHOW, TICKET_CREATE, TICKET_UPDATE, EXT_UPDATE_QUEUE, EXT_UPDATE_TICKET,
                              EXT_CREATE_TICKET, EXT_SHOW_TICKET, EXT_GET_TICKET})
READ_RESPONSE = TICKET_RESPONSES | {TICKET_LIST, TICKET_DELETE, SOCKET_POLLING}

# First path segments worth a closer look; anything else is ignored at once.
_PREFIXES = ("/auth/", "/tickets", "/messages/", "/v1/api/external/", "/socket.io")


def match(method: str, path: str) -> Route | None:
    """The route of a request (path without the query string), or None if it is not one we read."""
    if not path.startswith(_PREFIXES):
        return None
    for pattern, kind in _BY_METHOD.get(method.upper(), ()):
        m = pattern.match(path)
        if m:
            return Route(kind, m.groupdict())
    return None
