"""A python-socketio client that survives Whazing's double auth callback.

The real server (and the stand-in, by default) sends `40{"sid":...}` and then
`44{"message":"authentication error"}` to a VALID client. python-socketio 5.x treats that
44 as a rejection: `connect()` raises "One or more namespaces failed to connect" and the
connection is closed. This subclass ignores a CONNECT_ERROR for a namespace that is already
connected (it still fires `connect_error`, as the JS client does), and stays connected.

It also makes `disconnect()` prompt on the polling transport: python-engineio 4.x's client
stops its write loop before the CLOSE packet goes out, then waits up to 15 s for its pending
long-poll GET. Owning the HTTP session lets `disconnect()` abort that GET.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import socketio
import structlog

log = structlog.get_logger(__name__)


class TolerantAsyncClient(socketio.AsyncClient):
    """`socketio.AsyncClient`, except that a 44 after a 40 on the same namespace is not fatal."""

    quirk_errors: int = 0
    _own_http: aiohttp.ClientSession | None = None

    async def connect(self, *args: Any, **kwargs: Any) -> None:
        if self.eio.http is None or self.eio.http.closed:
            self._own_http = aiohttp.ClientSession()
            self.eio.http = self._own_http
            self.eio.external_http = True
        await super().connect(*args, **kwargs)

    async def disconnect(self) -> None:
        own = self._own_http
        if own is None:
            await super().disconnect()
            return
        task = asyncio.ensure_future(super().disconnect())
        if self.eio.current_transport == "polling":
            await asyncio.sleep(0.05)  # let the DISCONNECT packet go out first
            await own.close()  # aborts the pending long-poll GET
        await task
        if not own.closed:
            await own.close()
        self._own_http = None

    async def _handle_error(self, namespace: Any, data: Any) -> None:  # noqa: D401 - override
        ns = namespace or "/"
        if ns in self.namespaces:
            self.quirk_errors += 1
            log.info("standin.client_quirk_ignored", namespace=ns, data=data)
            args = data if isinstance(data, (list, tuple)) else (() if data is None else (data,))
            await self._trigger_event("connect_error", ns, *args)
            return
        await super()._handle_error(namespace, data)
