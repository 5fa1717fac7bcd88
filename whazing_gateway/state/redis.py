"""Shared state in Redis for scale-out replicas (`RedisState`), and the Redis client they use.

Several gateway replicas behind a load balancer share one Redis. Event ids are deterministic, so
`add_once` on a shared key de-duplicates the same change seen by two replicas. Redis being down
must never stop the traffic: the state falls back to a local `MemoryState`. The shared outbox
lives beside it in `whazing_gateway/outbox/redis.py`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from whazing_gateway.state.memory import MemoryState

log = structlog.get_logger(__name__)

# Errors that mean "Redis is unreachable or broke the connection", not "our command was wrong".
try:  # pragma: no branch
    from redis.exceptions import BusyLoadingError
    from redis.exceptions import ConnectionError as _RConnErr
    from redis.exceptions import TimeoutError as _RTimeout
    from redis.exceptions import TryAgainError as _RTryAgain
    REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
        _RConnErr, _RTimeout, BusyLoadingError, _RTryAgain, ConnectionError, TimeoutError, OSError,
    )
except ImportError:  # pragma: no cover - redis is a declared dependency
    REDIS_DOWN_ERRORS = (ConnectionError, TimeoutError, OSError)

# Anything Redis can throw at a write (down, OOM, read-only replica...): the outbox spools.
from redis.exceptions import RedisError as _RedisError  # noqa: E402

RedisError_: tuple[type[BaseException], ...] = (_RedisError, *REDIS_DOWN_ERRORS)


def make_client(url: str, timeout_s: float = 2.0, max_connections: int = 32):
    """An asyncio Redis client with short timeouts: a hung Redis must not hold the traffic path.

    A blocking pool: bursts queue for a connection instead of opening hundreds of sockets.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.connection import BlockingConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s * 2,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 1.0),
        retry=Retry(NoBackoff(), 0),  # we fall back ourselves; no silent retry loops inside calls
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


def key_prefix(prefix: str) -> str:
    """`wgw` -> `wgw:` (so `redis-cli --scan --pattern 'wgw:*'` finds every key of a deployment)."""
    return prefix if not prefix or prefix.endswith(":") else prefix + ":"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _loads(raw: bytes | str | None) -> Any | None:
    if raw is None:
        return None
    return json.loads(raw)


# Where a `set_newer` value's version is kept, beside it (`<key>#v`).
VERSION_SUFFIX = "#v"

# KEYS: value, version; ARGV: value JSON, version, ttl in ms (0: none). Not written when the held
# version is higher: replicas commit in any order, and a late one must not turn a ticket back.
_SET_NEWER = """
local held = redis.call('GET', KEYS[2])
if held and tonumber(held) and tonumber(held) > tonumber(ARGV[2]) then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""


class RedisState:
    """`StateStore` on Redis: JSON values, SET NX EX for `add_once`; a local fallback when down.

    While Redis is unreachable every call is answered by a per-process `MemoryState`, so inference
    goes on (de-duplication across replicas is then weaker: at-least-once, never a stall). Redis is
    tried again at most every `retry_s`; the switch both ways is logged once.
    """

    def __init__(self, client, prefix: str = "wgw", retry_s: float = 1.0,
                 fallback: MemoryState | None = None, clock=time.monotonic) -> None:
        self._r = client
        self._prefix = key_prefix(prefix)
        self._retry_s = retry_s
        self._fallback = fallback if fallback is not None else MemoryState()
        self._clock = clock
        self._down_since: float | None = None
        self._next_try = 0.0
        self._set_newer: Any = None

    @property
    def degraded(self) -> bool:
        """True while answers come from the local fallback."""
        return self._down_since is not None

    def _key(self, key: str) -> str:
        return f"{self._prefix}state:{key}"

    def _use_redis(self) -> bool:
        return self._down_since is None or self._clock() >= self._next_try

    def _went_down(self, exc: BaseException) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            log.warning("redis_state_down_using_local_fallback", error=repr(exc))
        self._next_try = now + self._retry_s

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.info("redis_state_back", down_s=round(self._clock() - self._down_since, 3))
            self._down_since = None

    @staticmethod
    def _px(ttl_s: float | None) -> int | None:
        return None if ttl_s is None else max(1, int(ttl_s * 1000))

    async def get(self, key: str) -> Any | None:
        if self._use_redis():
            try:
                raw = await self._r.get(self._key(key))
            except REDIS_DOWN_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()
                return _loads(raw)
        return await self._fallback.get(key)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        # The fallback always gets the value too: if Redis goes down next, recent state is at hand.
        await self._fallback.set(key, value, ttl_s)
        if self._use_redis():
            try:
                await self._r.set(self._key(key), _dumps(value), px=self._px(ttl_s))
            except REDIS_DOWN_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()

    async def add_once(self, key: str, ttl_s: float | None = None) -> bool:
        if self._use_redis():
            try:
                first = await self._r.set(self._key(key), b"1", nx=True, px=self._px(ttl_s))
            except REDIS_DOWN_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()
                await self._fallback.set(key, True, ttl_s)
                return bool(first)
        return await self._fallback.add_once(key, ttl_s)

    async def set_newer(self, key: str, value: Any, version: float, ttl_s: float | None = None) -> bool:
        kept = await self._fallback.set_newer(key, value, version, ttl_s)
        if self._use_redis():
            if self._set_newer is None:
                self._set_newer = self._r.register_script(_SET_NEWER)
            try:
                written = await self._set_newer(keys=[self._key(key), self._key(key + VERSION_SUFFIX)],
                                                args=[_dumps(value), repr(float(version)), self._px(ttl_s) or 0])
            except REDIS_DOWN_ERRORS as exc:
                self._went_down(exc)
            else:
                self._came_back()
                return bool(written)
        return kept

    async def close(self) -> None:
        try:
            await self._r.aclose()
        except REDIS_DOWN_ERRORS:
            pass


def open_state(url: str, prefix: str = "wgw") -> RedisState:
    """The shared state for a replica (no I/O here: the first call connects)."""
    return RedisState(make_client(url), prefix)


# Alias used by whazing_gateway/pipeline/services.py.
redis_client = make_client
