"""Engine.IO v4 / Socket.IO v5 codec (the wire protocol of Whazing's socket.io 3).

Decoding only: the gateway never re-encodes traffic. Websocket frames carry one Engine.IO
packet each; polling bodies carry several separated by the record separator 0x1e.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whazing_gateway.decode.bodies import BodyError, loads

RECORD_SEPARATOR = "\x1e"

# Engine.IO packet types.
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE, EIO_UPGRADE, EIO_NOOP = "0123456"
# Socket.IO packet types.
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_CONNECT_ERROR, SIO_BINARY_EVENT, SIO_BINARY_ACK = range(7)


# Ack ids and attachment counts are small counters; more digits than this is not socket.io.
MAX_COUNTER_DIGITS = 18


class DecodeError(ValueError):
    """The bytes are not a well-formed packet; the traffic itself is passed through untouched.

    `kind` names the class of bad input for the metrics (frame, too_large, too_deep, number...)."""

    def __init__(self, message: str, kind: str = "frame") -> None:
        super().__init__(message)
        self.kind = kind


def _is_counter(text: str) -> bool:
    """ASCII digits only (str.isdigit() also takes '²', which int() refuses), and few of them."""
    return 0 < len(text) <= MAX_COUNTER_DIGITS and text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class EnginePacket:
    type: str
    data: str | bytes


@dataclass(frozen=True, slots=True)
class SocketPacket:
    type: int
    namespace: str = "/"
    data: Any = None
    ack_id: int | None = None
    attachments: int = 0

    @property
    def event_name(self) -> str | None:
        if self.type in (SIO_EVENT, SIO_BINARY_EVENT) and isinstance(self.data, list) and self.data:
            name = self.data[0]
            return name if isinstance(name, str) else None
        return None

    @property
    def args(self) -> list[Any]:
        if self.type in (SIO_EVENT, SIO_BINARY_EVENT) and isinstance(self.data, list):
            return self.data[1:]
        return []


def decode_engine(text: str) -> EnginePacket:
    """One Engine.IO packet from a websocket text frame or one polling record."""
    if not text:
        raise DecodeError("empty Engine.IO packet")
    kind = text[0]
    if kind == "b":  # binary data in a polling body, base64 encoded
        import base64

        try:
            return EnginePacket(EIO_MESSAGE, base64.b64decode(text[1:], validate=True))
        except ValueError as exc:
            raise DecodeError(f"bad base64 binary packet: {exc}") from None
    if kind not in "0123456":
        raise DecodeError(f"unknown Engine.IO packet type {kind!r}")
    return EnginePacket(kind, text[1:])


def decode_polling_body(body: str) -> list[EnginePacket]:
    """All Engine.IO packets of one polling request or response body."""
    return [decode_engine(part) for part in body.split(RECORD_SEPARATOR) if part]


def decode_socket(payload: str) -> SocketPacket:
    """One Socket.IO packet from the data of an Engine.IO message packet."""
    if not payload or not _is_counter(payload[0]):
        raise DecodeError("Socket.IO packet without a type")
    kind = int(payload[0])
    if kind > SIO_BINARY_ACK:
        raise DecodeError(f"unknown Socket.IO packet type {kind}")
    i, n = 1, len(payload)
    attachments = 0
    if kind in (SIO_BINARY_EVENT, SIO_BINARY_ACK):
        dash = payload.find("-", i)
        if dash < 0 or not _is_counter(payload[i:dash]):
            raise DecodeError("binary Socket.IO packet without an attachment count")
        attachments = int(payload[i:dash])
        i = dash + 1
    namespace = "/"
    if i < n and payload[i] == "/":
        comma = payload.find(",", i)
        if comma < 0:
            namespace, i = payload[i:], n
        else:
            namespace, i = payload[i:comma], comma + 1
    ack_id = None
    j = i
    while j < n and "0" <= payload[j] <= "9":
        j += 1
    if j - i > MAX_COUNTER_DIGITS:
        raise DecodeError("Socket.IO ack id too long", "number")
    if j > i:
        ack_id, i = int(payload[i:j]), j
    data = None
    if i < n:
        try:
            data = loads(payload[i:])
        except BodyError as exc:
            raise DecodeError(f"Socket.IO payload is not JSON: {exc}", exc.kind) from None
    if kind in (SIO_EVENT, SIO_BINARY_EVENT) and not (isinstance(data, list) and data):
        raise DecodeError("Socket.IO event without an event name")
    return SocketPacket(kind, namespace, data, ack_id, attachments)


def decode_message(text: str) -> SocketPacket | None:
    """A websocket text frame -> its Socket.IO packet, or None for Engine.IO control packets."""
    eio = decode_engine(text)
    if eio.type != EIO_MESSAGE or not isinstance(eio.data, str):
        return None
    return decode_socket(eio.data)
