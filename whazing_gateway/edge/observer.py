"""The gateway's own socket.io connection, so inbound messages are seen when no agent is online.

It logs in with service credentials from the environment (never from YAML) and connects
through the gateway's OWN listen port: its frames take the same path as a browser's, are
inferred the same way (copies de-duplicated) and show in the flow viewer.

Whazing's auth middleware answers a valid CONNECT with `40{sid}` and then `44{"message":
"authentication error"}` while keeping the socket open. python-socketio's client takes that
`44` as a failed namespace, so the observer does not trust the client's `connected` flag: it
connects without waiting for the namespace and watches the Engine.IO transport instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp
import socketio
import structlog

from whazing_gateway.ops import metrics

log = structlog.get_logger(__name__)


class Observer:
    def __init__(self, base_url: str, email: str, password: str, *,
                 relogin_s: float = 600.0, max_backoff_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.email = email
        self._password = password
        self.relogin_s = relogin_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.connects = 0
        self._task: asyncio.Task | None = None
        self._client: socketio.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings) -> "Observer | None":
        if not settings.observer_enabled:
            return None
        email = os.environ.get(settings.observer_email_env)
        password = os.environ.get(settings.observer_password_env)
        if not email or not password:
            log.warning("no observer credentials: events are inferred from browser traffic only "
                        "(inbound messages are missed while no agent has Whazing open)",
                        email_env=settings.observer_email_env, password_env=settings.observer_password_env)
            return None
        from whazing_gateway.ops.logs import register_secret

        register_secret(password)
        host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::", "") else settings.listen_host
        return cls(f"http://{host}:{settings.listen_port}", email, password)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="whazing-observer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._disconnect()

    async def login(self, session: aiohttp.ClientSession) -> str:
        async with session.post(f"{self.base_url}/auth/login/",
                                json={"email": self.email, "password": self._password}) as resp:
            if resp.status != 200:
                raise PermissionError(f"observer login refused: HTTP {resp.status}")
            body = await resp.json()
        token = body.get("token") if isinstance(body, dict) else None
        if not token:
            raise PermissionError("observer login answered without a token")
        from whazing_gateway.ops.logs import register_secret

        register_secret(token)
        return token

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        metrics.OBSERVER_CONNECTED.set(0)
        if client is not None:
            await _close(client)

    def _alive(self) -> bool:
        return self._client is not None and self._client.eio.state == "connected"

    async def _run(self) -> None:
        backoff = 1.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while True:
                try:
                    token = await self.login(session)
                    client = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
                    await client.connect(self.base_url, auth={"token": token}, transports=["websocket"],
                                         wait=False)
                    # On a token refresh the old socket closes only once the new one is up: no gap.
                    old, self._client = self._client, client
                    if old is not None:
                        await _close(old)
                    self.connected = True
                    self.connects += 1
                    metrics.OBSERVER_CONNECTED.set(1)
                    log.info("observer connected", url=self.base_url, connects=self.connects)
                    backoff = 1.0
                    since = time.monotonic()
                    while self._alive() and time.monotonic() - since < self.relogin_s:
                        await asyncio.sleep(1.0)
                    if self._alive():
                        log.info("observer refreshing its token")
                        continue
                    log.info("observer reconnecting", reason="connection lost")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("observer connection failed; retrying", error=str(exc), retry_in_s=round(backoff, 1))
                    await self._disconnect()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                await self._disconnect()


async def _close(client: socketio.AsyncClient) -> None:
    try:
        await client.eio.disconnect(abort=True)
    except Exception:  # already gone
        pass
