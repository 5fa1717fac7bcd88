"""The durable outbox: one interface (`base.Outbox`), two engines (sqlite, redis).

`open_outbox(settings)` picks the engine from the settings; the caller awaits `open()`.
"""

from __future__ import annotations

import os
from typing import Any

from whazing_gateway.outbox.base import (
    DEAD,
    DELIVERED,
    PENDING,
    Attempt,
    Outbox,
    OutboxError,
    OutboxFilter,
    OutboxItem,
    TargetPause,
)

__all__ = [
    "DEAD", "DELIVERED", "PENDING", "Attempt", "Outbox", "OutboxError", "OutboxFilter",
    "OutboxItem", "TargetPause", "open_outbox", "sqlite_path_for",
]

DEFAULT_SQLITE_NAME = "outbox.db"


def sqlite_path_for(settings: Any) -> str:
    """`settings.sqlite_path` if set, else `<data_dir>/outbox.db` (data_dir default ".")."""
    path = getattr(settings, "sqlite_path", None)
    if path:
        return os.fspath(path)
    data_dir = getattr(settings, "data_dir", None) or "."
    return os.path.join(os.fspath(data_dir), DEFAULT_SQLITE_NAME)


def open_outbox(settings: Any) -> Outbox:
    """The engine named by `settings.storage_backend` ("sqlite", the default, or "redis").

    Duck-typed: any object with the attributes of whazing_gateway.config.Settings will do.
    Not yet opened: `await outbox.open()` (or `async with`).
    """
    backend = (getattr(settings, "storage_backend", None) or "sqlite").lower()
    if backend == "sqlite":
        from whazing_gateway.outbox.sqlite import SqliteOutbox

        return SqliteOutbox(sqlite_path_for(settings))
    if backend == "redis":
        from whazing_gateway.outbox.redis import RedisOutbox

        kwargs: dict[str, Any] = {}
        for name in ("redis_url", "redis_prefix", "spool_max", "reorder_window_s"):
            value = getattr(settings, name, None)
            if value is not None:
                kwargs[name] = value
        # The spool (deliveries waiting while Redis is down) lives beside the data: it survives a crash.
        kwargs["spool_path"] = os.path.join(os.fspath(getattr(settings, "data_dir", None) or "."), "redis-spool.db")
        return RedisOutbox(**kwargs)
    raise ValueError(f"unknown storage_backend {backend!r} (expected 'sqlite' or 'redis')")
