"""A python-socketio client that survives Whazing's double auth callback.

The real server (and the stand-in, by default) sends `40{"sid":...}` and then
`44{"message":"authentication error"}` to a VALID client. python-socketio 5.x treats that
44 as a rejection: `connect()` raises "One or more namespaces failed to connect" and the
connection is closed. This subclass ignores a CONNECT_ERROR for a namespace that is already
connected (it still fires `connect_error`, as the JS client does), and stays connected.
"""

from __future__ import annotations

from typing import Any

import socketio
import structlog

log = structlog.get_logger(__name__)


class TolerantAsyncClient(socketio.AsyncClient):
    """`socketio.AsyncClient`, except that a 44 after a 40 on the same namespace is not fatal."""

    quirk_errors: int = 0

    async def _handle_error(self, namespace: Any, data: Any) -> None:  # noqa: D401 - override
        ns = namespace or "/"
        if ns in self.namespaces:
            self.quirk_errors += 1
            log.info("standin.client_quirk_ignored", namespace=ns, data=data)
            args = data if isinstance(data, (list, tuple)) else (() if data is None else (data,))
            await self._trigger_event("connect_error", ns, *args)
            return
        await super()._handle_error(namespace, data)
