"""The side port: Prometheus `/metrics`, `/healthz` (alive) and `/readyz` (able to do its job).

It runs on its own port so that scraping and orchestrator probes never go through the proxy
(and never show up in Whazing's traffic or in the flow viewer). Readiness is a set of named
checks the runner registers (proxy listening, outbox writable, ...); `/readyz` answers 503 with a
JSON body naming the failing ones, so an operator reading a probe failure knows where to look.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, Union
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from whazing_gateway.ops.metrics import REGISTRY

log = structlog.get_logger(__name__)

CheckResult = Union[bool, tuple[bool, str]]
Check = Callable[[], Union[CheckResult, Awaitable[CheckResult]]]

CHECK_TIMEOUT_S = 5.0


async def run_check(fn: Check, timeout: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """Run one readiness check; an exception or a timeout is a failure with its reason."""
    try:
        result = fn()
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, timeout)
    except asyncio.TimeoutError:
        return False, f"check timed out after {timeout:g}s"
    except Exception as exc:  # a broken check must not break the probe
        return False, f"{type(exc).__name__}: {exc}"
    if isinstance(result, tuple):
        ok, detail = result
        return bool(ok), str(detail)
    return bool(result), ""


class OpsServer:
    """aiohttp server for /metrics, /healthz and /readyz on `host:port` (port 0: any free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: dict[str, Check] | None = None,
        registry: CollectorRegistry = REGISTRY,
        check_timeout: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.check_timeout = check_timeout
        self._checks: dict[str, Check] = dict(readiness or {})
        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()
        self._last_failing: list[str] = []

    def add_check(self, name: str, fn: Check) -> None:
        """Add (or replace) a readiness check: a callable returning bool or (bool, detail),
        possibly async. Sync checks run on the event loop: keep them cheap, or make them async."""
        self._checks[name] = fn

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._index)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the bound sockets' names: where port 0 becomes a real port
            self.port = runner.addresses[0][1]
        self._started_at = time.monotonic()
        log.info("ops server listening", host=self.host, port=self.port,
                 endpoints=["/metrics", "/healthz", "/readyz"])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Run every check concurrently; (all ok, {name: {ok, detail}})."""
        names = list(self._checks)
        results = await asyncio.gather(
            *(run_check(self._checks[n], self.check_timeout) for n in names)
        )
        checks = {n: {"ok": ok, "detail": detail} for n, (ok, detail) in zip(names, results)}
        return all(ok for ok, _ in results), checks

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "uptime_s": round(time.monotonic() - self._started_at, 3)}
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = await self.readiness()
        if ok:
            if self._last_failing:
                log.info("ready again", was_failing=self._last_failing)
                self._last_failing = []
            return web.json_response({"status": "ready", "checks": checks})
        failing = [n for n, c in checks.items() if not c["ok"]]
        if failing != self._last_failing:  # probes repeat every few seconds: log changes only
            log.warning("not ready", failing=failing,
                        details={n: checks[n]["detail"] for n in failing})
            self._last_failing = failing
        return web.json_response(
            {"status": "not ready", "failing": failing, "checks": checks}, status=503
        )

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="whazing-gateway ops: /metrics /healthz /readyz\n")


# Ready-made checks for the runner.


def tcp_listening(host: str, port: int | Callable[[], int | None], timeout: float = 2.0) -> Check:
    """Check that something accepts TCP connections on host:port (the proxy's listen port).

    `port` may be a callable, for a proxy whose port is known only once it has bound.
    """

    async def check() -> tuple[bool, str]:
        p = port() if callable(port) else port
        if not p:
            return False, "not bound yet"
        target = "127.0.0.1" if host in ("", "0.0.0.0", "*") else ("::1" if host == "::" else host)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target, p), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            return False, f"{target}:{p} refused: {type(exc).__name__}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True, f"{target}:{p}"

    return check


def upstream_reachable(url: str, timeout: float = 2.0) -> Check:
    """Check that the upstream (Whazing) accepts a TCP connection: a cheap probe, no request.

    While it fails, clients get `502 Bad Gateway` from the proxy; /readyz says why."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)

    async def check() -> tuple[bool, str]:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except asyncio.TimeoutError:
            return False, f"upstream {host}:{port} unreachable: no answer in {timeout:g}s"
        except OSError as exc:
            return False, f"upstream {host}:{port} unreachable: {exc.strerror or type(exc).__name__}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True, f"{host}:{port}"

    return check


def _probe_dir(path: str) -> tuple[bool, str]:
    try:
        os.makedirs(path, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"
    return True, path


def directory_writable(path: str | os.PathLike[str]) -> Check:
    """Check that a file can be created, written and synced in `path` (the outbox's directory).

    Runs in a thread: a slow or hung disk must not stall the event loop.
    """
    p = os.fspath(path)

    async def check() -> tuple[bool, str]:
        return await asyncio.to_thread(_probe_dir, p)

    return check
