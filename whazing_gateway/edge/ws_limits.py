"""A bound on how far one permessage-deflate websocket message may inflate inside mitmproxy.

Whazing's socket.io server compresses frames of 32 KB and more (permessage-deflate), and
mitmproxy inflates every compressed message before any hook sees it, with no limit of its own
(mitmproxy 11 and 12 have no websocket size option; wsproto inflates what it is given). One
1 MB frame of zeros from any client or from the backend would become 1 GiB in the proxy.

mitmproxy builds each side's extension from `wsproto.extensions.PerMessageDeflate` when a
websocket starts, so replacing that class with a subclass that inflates at most
`max_message` bytes per message bounds it for every connection. A message past the bound
closes that websocket with 1009 (message too big), which is what the peer would get from any
server with a message size limit (socket.io's own default, `maxHttpBufferSize`, is 1 MB).

Uncompressed messages are not amplified, but mitmproxy buffers each whole message before its
hook runs, so one client streaming an endless message (fragments without FIN) would grow the
proxy's memory as long as it sends. The same bound applies to them: mitmproxy makes each side
of a websocket from `mitmproxy.proxy.layers.websocket.WebsocketConnection`, and a subclass
closes the socket (1009) once a message's buffered part passes `max_message`.
"""

from __future__ import annotations

import zlib
from typing import Any

import structlog
import wsproto.events
import wsproto.extensions
from wsproto.frame_protocol import CloseReason

from whazing_gateway.ops import metrics

log = structlog.get_logger(__name__)

_ORIGINAL = wsproto.extensions.PerMessageDeflate
# What the subclass relies on: wsproto 1.2's (mitmproxy 11.0.2 and 12.x) private state.
_NEEDED = ("_inbound_compressed", "_inbound_is_compressible", "_decompressor")


class BoundedDeflate(_ORIGINAL):  # type: ignore[misc,valid-type]
    """permessage-deflate that refuses to inflate one message past `max_message` bytes."""

    max_message = 16 << 20
    refused = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._inflated = 0

    def frame_inbound_payload_data(self, proto, data):
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        room = type(self).max_message - self._inflated
        decompressor = self._decompressor
        assert decompressor is not None  # set by frame_inbound_header for a compressed message
        try:
            out = decompressor.decompress(bytes(data), max(room, 0) + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > type(self).max_message:
            return self._refuse()
        return out

    def frame_inbound_complete(self, proto, fin):
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result

    def _refuse(self) -> CloseReason:
        cls = type(self)
        cls.refused += 1
        _refused("ws_inflate", "inflates", cls.max_message, cls.refused)
        self._inflated = 0
        return CloseReason.MESSAGE_TOO_BIG


def _refused(kind: str, what: str, max_message: int, count: int) -> None:
    metrics.BAD_INPUT.labels(kind).inc()
    if count == 1 or count % 1000 == 0:
        log.warning(f"websocket message {what} past proxy.websocket_max_message: connection closed (1009)",
                    max_message=max_message, refused_total=count)


def bounded_connection(base: type, max_message: int) -> Any:
    """A subclass of mitmproxy's WebsocketConnection (a wsproto Connection that mitmproxy's
    layer buffers messages for) that ends a message growing past `max_message` with a close
    1009, the way wsproto reports a frame it cannot accept."""

    class BoundedWebsocketConnection(base):  # type: ignore[misc,valid-type]
        refused = 0
        _unbounded = base

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._buffered = 0  # characters (text) or bytes of the message so far
            self._closed_by_limit = False

        def events(self):
            if self._closed_by_limit:  # the layer is closing this socket: nothing more of it
                return
            for event in super().events():
                if isinstance(event, wsproto.events.Message):
                    if event.message_finished:
                        self._buffered = 0
                    else:
                        self._buffered += len(event.data)
                        if self._buffered > self.max_message:
                            self._closed_by_limit = True
                            cls = type(self)
                            cls.refused += 1
                            _refused("ws_message", "grows", self.max_message, cls.refused)
                            yield wsproto.events.CloseConnection(code=CloseReason.MESSAGE_TOO_BIG,
                                                                 reason="message too big")
                            return
                yield event

    BoundedWebsocketConnection.max_message = max_message
    return BoundedWebsocketConnection


def install(max_message: int) -> bool:
    """Make every websocket mitmproxy starts from now on use the bounds (inflating and
    buffering). False (and a warning) for a part whose mitmproxy or wsproto does not look like
    the one it was written for: that part then works unbounded, as in plain mitmproxy, rather
    than breaking."""
    from mitmproxy.proxy.layers import websocket as ws_layer

    installed = True
    probe = _ORIGINAL()
    missing = [name for name in _NEEDED if not hasattr(probe, name)]
    if missing:
        log.warning("websocket inflate limit not installed: unexpected wsproto", missing=missing)
        installed = False
    else:
        BoundedDeflate.max_message = max_message
        wsproto.extensions.PerMessageDeflate = BoundedDeflate  # type: ignore[misc]
    base = getattr(ws_layer, "WebsocketConnection", None)
    base = getattr(base, "_unbounded", base)  # installed before (a reload): bound the original again
    if not (isinstance(base, type) and issubclass(base, wsproto.Connection)):
        log.warning("websocket message limit not installed: unexpected mitmproxy", found=repr(base))
        return False
    ws_layer.WebsocketConnection = bounded_connection(base, max_message)  # type: ignore[misc]
    return installed
