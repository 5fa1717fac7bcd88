"""The inference's state store: which engine a gateway uses (one place, for the proxy and its children)."""

from __future__ import annotations

import os
from typing import Any

from whazing_gateway.state.memory import MemoryState, StateStore


def open_state(settings: Any) -> StateStore:
    """Redis when replicas share it; else a SQLite file kept across restarts (for the catch-up)."""
    if settings.storage_backend == "redis":
        from whazing_gateway.state.redis import RedisState, redis_client

        assert settings.redis_url, "storage.redis.url is required with the redis backend (checked by the config)"
        return RedisState(redis_client(settings.redis_url), settings.redis_prefix)
    if settings.data_dir is not None:  # kept across restarts, for the catch-up
        from whazing_gateway.state.sqlite import SqliteState

        return SqliteState(os.path.join(settings.data_dir, "state.db"))
    return MemoryState()
