"""Shared fixtures: the real peers a test talks to, started for it and stopped after it.

    redis_server / redis_server_aof   a real redis-server on a free port (tests/redis_server.py)
    standin                           the Whazing stand-in (whazing_standin) on a free port
    receiver                          a webhook receiver answering 200 (tests/receivers.py)
    make_receiver(script, then)       ... one that answers from a script (fails, hangs, 410)
    start_gateway(workdir, upstream, rules, ...)
                                      a real `whazing-gateway run` process (tests/harness.py)
    http                              an aiohttp session that keeps cookies of 127.0.0.1

Tests ask for them by name; the helper modules keep only classes and functions.

The fast lane is `pytest -m "not slow"`: every test that starts a process (a gateway, redis,
the stand-in as a program, ruff, mypy, pip...) must be marked `slow`, and `_no_process_in_the_fast_lane`
fails a test that is not marked and starts one anyway.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import GatewayProcess
from tests.receivers import Receiver, Script
from tests.redis_server import RedisServer
from whazing_standin.server import StandinServer, start_standin


class _Spawned:
    """How many processes this test session has started (asyncio's subprocesses included:
    they are subprocess.Popen underneath)."""

    count = 0
    at_last_check = 0
    popen_init = subprocess.Popen.__init__

    @staticmethod
    def counting_init(self, *args, **kwargs):
        _Spawned.count += 1
        _Spawned.popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _Spawned.counting_init  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def _count_processes_from_the_first_test() -> None:
    """What a pytest-xdist worker starts for itself before its first test is no test's."""
    _Spawned.at_last_check = _Spawned.count


@pytest.fixture(autouse=True)
def _no_process_in_the_fast_lane(request) -> Iterator[None]:
    # Counted from the end of the previous test: module-scoped fixtures set up for this one count.
    yield
    started = _Spawned.count - _Spawned.at_last_check
    _Spawned.at_last_check = _Spawned.count
    if started and request.node.get_closest_marker("slow") is None:
        pytest.fail(f"{request.node.nodeid} started {started} process(es) but is not marked "
                    f"@pytest.mark.slow: the fast lane (-m 'not slow') must start none", pytrace=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server (no persistence) for one test."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_server_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with appendonly yes: its data survives `restart()`."""
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture
async def standin() -> AsyncIterator[StandinServer]:
    """The Whazing stand-in, seeded, with the 40-then-44 socket.io auth quirk on."""
    server = await start_standin()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Start receivers with scripted answers: `await make_receiver(script=[500], then=200)`."""
    started: list[Receiver] = []

    async def make(script: tuple[Script, ...] | list[Script] = (), then: Script = 200) -> Receiver:
        r = await Receiver(script=script, then=then).start()
        started.append(r)
        return r

    try:
        yield make
    finally:
        for r in started:
            await r.stop()


@pytest.fixture
async def receiver(make_receiver) -> Receiver:
    """A webhook receiver that answers 200 to everything and records it."""
    return await make_receiver()


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    """Start real gateway processes (`GatewayProcess` arguments); all are stopped after the test."""
    started: list[GatewayProcess] = []

    async def start(workdir: Path, upstream: str, rules: str, **kwargs: Any) -> GatewayProcess:
        gw = GatewayProcess(workdir, upstream, rules, **kwargs)
        started.append(gw)
        return await gw.start()

    try:
        yield start
    finally:
        for gw in started:
            await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session
