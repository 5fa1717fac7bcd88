"""Small shared state for inference and routing (ticket state, de-duplication, queue integrations).

One async interface, two engines: `MemoryState` (bounded, one process; the default) and the
Redis engine in `whazing_gateway/outbox/redis.py` (shared by replicas). Async because the
Redis engine does network I/O; the memory engine never awaits anything slow.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol


class KeyValue(Protocol):
    """Reads and writes only: what the router keeps per ticket (its queue integrations)."""

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None: ...


class StateStore(KeyValue, Protocol):

    async def add_once(self, key: str, ttl_s: float | None = None) -> bool:
        """Mark `key` seen; True only for the first caller (the de-duplication primitive)."""
        ...

    async def set_newer(self, key: str, value: Any, version: float, ttl_s: float | None = None) -> bool:
        """Write `value` unless `key` holds a higher `version` already; True if written.

        A ticket's state is written by whichever replica inferred its change: one that ran late
        (starved of CPU, a slow batch) must not put back an older state over a newer one, or the
        next change is diffed against the past and becomes an event that never happened."""
        ...


class MemoryState:
    """A bounded LRU map with optional expiry: per-process caches must not grow without limit."""

    def __init__(self, max_items: int = 100_000, clock=time.monotonic) -> None:
        # key -> (value, expiry, version of a `set_newer` value: kept in the item, not a slot of its own)
        self._items: OrderedDict[str, tuple[Any, float | None, float | None]] = OrderedDict()
        self._max = max_items
        self._clock = clock

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, key: str) -> tuple[Any, float | None, float | None] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item

    def _put(self, key: str, value: Any, ttl_s: float | None, version: float | None = None) -> None:
        self._items[key] = (value, None if ttl_s is None else self._clock() + ttl_s, version)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    async def get(self, key: str) -> Any | None:
        item = self._live(key)
        return None if item is None else item[0]

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        self._put(key, value, ttl_s)

    async def add_once(self, key: str, ttl_s: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        self._put(key, True, ttl_s)
        return True

    async def set_newer(self, key: str, value: Any, version: float, ttl_s: float | None = None) -> bool:
        held = self._live(key)
        if held is not None and held[2] is not None and held[2] > version:
            return False
        self._put(key, value, ttl_s, version)
        return True
