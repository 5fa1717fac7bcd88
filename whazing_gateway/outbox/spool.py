"""The local spool of the Redis outbox: where deliveries wait while Redis is unreachable.

A small SQLite file (or `:memory:`), bounded to `max_items` rows, oldest first. A file survives
a crash of the gateway: the next start flushes what the last one could not. The calls are
synchronous and short; the Redis outbox runs them in a thread so the event loop never waits on
the disk. What does not fit is refused and reported to the caller, who counts and logs it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Sequence

from whazing_gateway import model
from whazing_gateway.ops.files import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    target     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    event_type TEXT NOT NULL,
    order_key  TEXT,
    body       BLOB NOT NULL,
    created_at REAL NOT NULL,
    ticket_id  INTEGER,
    flow_id    TEXT
);
"""


class Spool:
    """Bounded FIFO of deliveries in SQLite. Thread-safe (one lock); every write is committed."""

    def __init__(self, path: str | os.PathLike | None, max_items: int) -> None:
        self.path = ":memory:" if path is None else os.fspath(path)
        self.max_items = max(0, int(max_items))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> int:
        """Open (creating the file) and return how many deliveries a previous life left."""
        with self._lock:
            if self._conn is None:
                if self.path != ":memory:":
                    private_file(self.path)  # 0600 in a 0700 folder: it holds customers' messages
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                if self.path != ":memory:":
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")  # survives a process crash
                conn.executescript(_SCHEMA)
                self._conn = conn
            return self._count()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _count(self) -> int:
        assert self._conn is not None
        return self._conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._count()

    def add(self, deliveries: Sequence[model.Delivery]) -> tuple[int, list[model.Delivery]]:
        """Keep as many as fit (oldest kept, newest refused): returns (stored, refused)."""
        with self._lock:
            assert self._conn is not None
            room = self.max_items - self._count()
            kept, refused = list(deliveries[: max(0, room)]), list(deliveries[max(0, room):])
            if kept:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT OR IGNORE INTO spool (id, target, event_id, event_type, order_key, body,"
                        " created_at, ticket_id, flow_id) VALUES (?,?,?,?,?,?,?,?,?)",
                        [(d.id, d.target, d.event_id, d.event_type, d.order_key, d.body, d.created_at,
                          d.ticket_id, d.flow_id) for d in kept],
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            return len(kept), refused

    def peek(self, n: int) -> list[tuple[int, model.Delivery]]:
        """The oldest `n` deliveries with their sequence numbers (not removed)."""
        with self._lock:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT seq, id, target, event_id, event_type, order_key, body, created_at, ticket_id,"
                " flow_id FROM spool ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [
            (r[0], model.Delivery(id=r[1], target=r[2], event_id=r[3], event_type=r[4], order_key=r[5],
                                  body=bytes(r[6]), created_at=r[7], ticket_id=r[8], flow_id=r[9]))
            for r in rows
        ]

    def remove_through(self, seq: int) -> int:
        """Forget every delivery up to `seq` (they are in Redis now); returns how many remain."""
        with self._lock:
            assert self._conn is not None
            self._conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            return self._count()
