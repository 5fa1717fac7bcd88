"""Decode stage: raw traffic records -> observations of Whazing's REST calls and socket events.

Pure functions over `whazing_gateway.edge.records` records; nothing here touches mitmproxy. A record that
cannot be decoded raises `DecodeError`/`BodyError`; the caller counts it, logs it once and moves on.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import Any

from whazing_gateway.decode import routes
from whazing_gateway.decode.bodies import BodyError, decompress, loads, parse_json
from whazing_gateway.decode.socketio import (
    EIO_MESSAGE,
    DecodeError,
    decode_engine,
    decode_polling_body,
    decode_socket,
)
from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, Record, WsFrame
from whazing_gateway.ops import metrics

__all__ = ["RestCall", "SocketEvent", "Observation", "decode", "as_int", "DecodeError", "BodyError",
           "MAX_ID", "MAX_TOKEN_CHARS"]

# Socket event channels we read; everything else (whatsapp sessions, users, chat-interno...) is ignored.
READ_CHANNELS = ("ticketList", "contactList")
# Whazing's ids are positive integers that fit a signed 64-bit column; anything else is "not an id".
MAX_ID = (1 << 63) - 1
# A bearer token's length: Whazing's JWTs are a few hundred characters.
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True, slots=True)
class RestCall:
    """A REST call on a route we read. `status` is None when only the request has been seen."""

    kind: str
    params: dict[str, str]
    method: str
    path: str
    status: int | None
    request_json: Any
    response_json: Any
    tenant_id: int | None
    user_id: int | None
    ts: float
    flow_id: str | None = None


@dataclass(frozen=True, slots=True)
class SocketEvent:
    """A server -> client socket.io event on a tenant channel: `1:ticketList` {type, payload}."""

    tenant_id: int | None
    channel: str
    type: str | None
    payload: Any
    ts: float
    flow_id: str | None = None


Observation = RestCall | SocketEvent


def jwt_claims(authorization: str | None) -> dict[str, Any]:
    """The claims of a bearer JWT, unverified: only used to learn the tenant and user of a call.

    Bounded like a body (length, nesting, numbers); a token that is not one gives {} and is
    counted. Callers must not modify the returned dict."""
    if not authorization or not authorization[:7].lower() == "bearer ":
        return {}
    if len(authorization) > MAX_TOKEN_CHARS:  # checked before the cache: it never keeps a huge key
        metrics.BAD_INPUT.labels("jwt").inc()
        return {}
    return _claims(authorization)


@functools.lru_cache(maxsize=1024)
def _claims(authorization: str) -> dict[str, Any]:
    """Cached: an agent's browser sends the same token with every call for hours."""
    parts = authorization[7:].strip().split(".")
    if len(parts) != 3:
        return {}
    try:
        pad = "=" * (-len(parts[1]) % 4)
        claims = loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (BodyError, binascii.Error, ValueError):
        metrics.BAD_INPUT.labels("jwt").inc()
        return {}
    return claims if isinstance(claims, dict) else {}


def as_int(value: Any) -> int | None:
    """Whazing ids: positive int64 integers, sometimes digit strings (route params, event names).

    Never booleans, never '²' (a digit to str.isdigit(), not to int()), never above 2^63-1."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        n = int(value)
        return n if 0 < n <= MAX_ID else None
    return None


def socket_event(data: list[Any], ts: float, flow_id: str | None) -> SocketEvent | None:
    """A decoded socket.io event `[name, arg...]` -> SocketEvent if it is on a channel we read."""
    name = data[0]
    tenant, sep, channel = name.partition(":")
    if not sep or channel not in READ_CHANNELS:
        return None
    body = data[1] if len(data) > 1 else None
    if not isinstance(body, dict):
        raise DecodeError(f"{name} event without an object payload")
    kind = body.get("type")
    return SocketEvent(as_int(tenant), channel, kind if isinstance(kind, str) else None,
                       body.get("payload"), ts, flow_id)


def _socket_events_from_text(text: str, ts: float, flow_id: str | None) -> list[SocketEvent]:
    eio = decode_engine(text)
    if eio.type != EIO_MESSAGE or not isinstance(eio.data, str):
        return []
    pkt = decode_socket(eio.data)
    if pkt.event_name is None:
        return []
    ev = socket_event(pkt.data, ts, flow_id)
    return [ev] if ev else []


def decode_frame(frame: WsFrame, limit: int = 1 << 20) -> list[SocketEvent]:
    """Server -> client text frames only: that is where Whazing's pushes travel. Frames above
    the inspection limit (the same as bodies) are not read."""
    if frame.from_client or not frame.is_text:
        return []
    if len(frame.content) > limit:
        raise DecodeError(f"websocket frame larger than {limit} bytes", "too_large")
    try:
        text = frame.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"websocket text frame is not UTF-8: {exc}") from None
    return _socket_events_from_text(text, frame.ts, frame.flow_id)


def _decode_polling(rec: HttpExchange, limit: int) -> list[Observation]:
    """Server packets of a long-poll answer (Engine.IO compresses big ones with gzip/deflate)."""
    if rec.method != "GET" or rec.status != 200 or not rec.resp_body:
        return []
    raw = decompress(rec.resp_body, rec.resp_headers.get("content-encoding"), limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"polling body is not UTF-8: {exc}") from None
    out: list[Observation] = []
    for eio in decode_polling_body(text):
        if eio.type == EIO_MESSAGE and isinstance(eio.data, str):
            pkt = decode_socket(eio.data)
            if pkt.event_name is not None:
                ev = socket_event(pkt.data, rec.ts, rec.flow_id)
                if ev:
                    out.append(ev)
    return out


def decode(record: Record, json_limit: int = 1 << 20) -> list[Observation]:
    """Every observation a record holds (none for traffic we do not read).

    Raises only DecodeError/BodyError, each counted by kind in `bad_input_total`: whatever a
    hostile record does to a decoder costs that record alone."""
    try:
        return _decode(record, json_limit)
    except (DecodeError, BodyError) as exc:
        metrics.BAD_INPUT.labels(exc.kind).inc()
        raise
    except Exception as exc:  # a decoder bug on odd input (RecursionError, MemoryError...)
        metrics.BAD_INPUT.labels("internal").inc()
        raise DecodeError(f"decoder failed: {exc!r}", "internal") from None


def _decode(record: Record, json_limit: int) -> list[Observation]:
    if isinstance(record, WsFrame):
        return list(decode_frame(record, json_limit))
    route = routes.match(record.method, record.path)
    if route is None:
        return []
    if isinstance(record, HttpExchange) and route.kind == routes.SOCKET_POLLING:
        return _decode_polling(record, json_limit)
    if route.kind == routes.SOCKET_POLLING:
        return []
    if isinstance(record, HttpRequestSeen):
        claims = jwt_claims(record.headers.get("authorization"))
        req = parse_json(record.body, record.headers.get("content-encoding"), json_limit) \
            if "json" in record.headers.get("content-type", "") else None
        return [RestCall(route.kind, route.params, record.method, record.path, None, req, None,
                         as_int(claims.get("tenantId")), as_int(claims.get("id")), record.ts, record.flow_id)]
    claims = jwt_claims(record.req_headers.get("authorization"))
    req = parse_json(record.req_body, record.req_headers.get("content-encoding"), json_limit) \
        if "json" in record.req_headers.get("content-type", "") else None
    resp = parse_json(record.resp_body, record.resp_headers.get("content-encoding"), json_limit) \
        if "json" in record.resp_headers.get("content-type", "") else None
    return [RestCall(route.kind, route.params, record.method, record.path, record.status, req, resp,
                     as_int(claims.get("tenantId")), as_int(claims.get("id")), record.ts, record.flow_id)]
