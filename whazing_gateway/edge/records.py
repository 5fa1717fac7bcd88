"""The edge: mitmproxy flows and websocket messages -> plain records of raw traffic.

This is the only module besides `gateway.py` and `replay.py` that touches mitmproxy objects,
and it only reads attributes (duck typing, no mitmproxy import), so the records below are
what every later stage sees. Hooks call these on the hot path: they copy references, never
decode or parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Request/response headers the decoder needs; everything else stays in the flow.
_KEPT_HEADERS = ("content-type", "content-encoding", "authorization")


@dataclass(slots=True)
class HttpRequestSeen:
    """A request, seen before it goes upstream (its effects arrive on sockets before its response)."""

    flow_id: str
    ts: float
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(slots=True)
class HttpExchange:
    """A finished request/response pair."""

    flow_id: str
    ts: float
    method: str
    path: str
    query: str
    status: int
    req_headers: dict[str, str] = field(default_factory=dict)
    req_body: bytes | None = None
    resp_headers: dict[str, str] = field(default_factory=dict)
    resp_body: bytes | None = None


@dataclass(slots=True)
class WsFrame:
    """One websocket message (already decompressed by mitmproxy when permessage-deflate is on)."""

    flow_id: str
    ts: float
    from_client: bool
    content: bytes
    is_text: bool = True


Record = HttpRequestSeen | HttpExchange | WsFrame


_KEPT_RAW = frozenset(name.encode() for name in _KEPT_HEADERS)


def _headers(h) -> dict[str, str]:
    """The kept headers, as `h.get(name)` gives them (repeats joined with ", "), in one pass
    over the raw fields: mitmproxy's `get` scans every field again for each name asked."""
    fields = getattr(h, "fields", None)
    if fields is None:  # not mitmproxy's Headers
        return {name: h[name] for name in _KEPT_HEADERS if name in h}
    out: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.lower()
        if name in _KEPT_RAW:
            key = name.decode()
            value = raw_value.decode("utf-8", "surrogateescape")
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def split_path(path_and_query: str) -> tuple[str, str]:
    path, _, query = path_and_query.partition("?")
    return path, query


def request_record(flow) -> HttpRequestSeen:
    """Record a request before it is answered (creations, updates, sends)."""
    path, query = split_path(flow.request.path)
    return HttpRequestSeen(
        flow.id, flow.request.timestamp_start, flow.request.method, path, query,
        _headers(flow.request.headers), flow.request.raw_content,
    )


def exchange_record(flow) -> HttpExchange:
    """Record a finished request/response pair."""
    path, query = split_path(flow.request.path)
    resp = flow.response
    return HttpExchange(
        flow.id, resp.timestamp_end or resp.timestamp_start or flow.request.timestamp_start,
        flow.request.method, path, query, resp.status_code,
        _headers(flow.request.headers), flow.request.raw_content,
        _headers(resp.headers), resp.raw_content,
    )


def frame_record(flow_id: str, message) -> WsFrame:
    return WsFrame(flow_id, message.timestamp, message.from_client, message.content, message.is_text)
