"""The stand-in process: start the app of `whazing_standin.app` on a port, stop it cleanly."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web

from whazing_standin.app import build_app
from whazing_standin.core import Standin

log = structlog.get_logger(__name__)


@dataclass
class StandinServer:
    """A running stand-in: `url` (http://host:port), `port`, `standin` and `stop()`."""

    url: str
    port: int
    standin: Standin
    runner: web.AppRunner

    async def stop(self) -> None:
        try:
            await self.standin.sio.shutdown()
        except Exception as exc:  # already closed sockets must not stop the shutdown
            log.info("standin.shutdown_error", error=str(exc))
        await self.runner.cleanup()


async def start_standin(host: str = "127.0.0.1", port: int = 0, *, auth_error_quirk: bool = True,
                        backend_url: str | None = None, token_ttl: int = 8 * 3600) -> StandinServer:
    """Start a stand-in on host:port (0 picks a free port) and return once it listens."""
    standin = Standin(auth_error_quirk=auth_error_quirk, token_ttl=token_ttl)
    runner = web.AppRunner(build_app(standin), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = runner.addresses[0][1]
    url = f"http://{host}:{real_port}"
    standin.backend_url = backend_url or url
    log.info("standin.listening", url=url, auth_error_quirk=auth_error_quirk)
    return StandinServer(url, real_port, standin, runner)
