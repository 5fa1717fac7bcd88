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
Messages sent uncompressed are not amplified: they cost what the peer really sends.
"""

from __future__ import annotations

import zlib

import structlog
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
        metrics.BAD_INPUT.labels("ws_inflate").inc()
        if cls.refused == 1 or cls.refused % 1000 == 0:
            log.warning("websocket message inflates past proxy.websocket_max_message: connection closed (1009)",
                        max_message=cls.max_message, refused_total=cls.refused)
        self._inflated = 0
        return CloseReason.MESSAGE_TOO_BIG


def install(max_message: int) -> bool:
    """Make every websocket mitmproxy starts from now on use the bounded extension.

    False (and a warning) if this wsproto does not look like the one the subclass was written
    for: compression then works unbounded, as in plain mitmproxy, rather than breaking."""
    probe = _ORIGINAL()
    missing = [name for name in _NEEDED if not hasattr(probe, name)]
    if missing:
        log.warning("websocket inflate limit not installed: unexpected wsproto", missing=missing)
        return False
    BoundedDeflate.max_message = max_message
    wsproto.extensions.PerMessageDeflate = BoundedDeflate  # type: ignore[misc]
    return True
