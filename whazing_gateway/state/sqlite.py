"""The inference's state, kept across restarts in a SQLite file under data_dir (`state.db`).

Why: after a restart the gateway must know each ticket as it last saw it, so that the catch-up
(`whazing_gateway/infer/catchup.py`) can tell what changed while it was away. Redis deployments
share their state in Redis already; this is the single-gateway counterpart of that.

How, without ever making the event loop wait on the disk: reads are served from memory (a
`MemoryState`, filled from the file once, in a thread, on first use); writes go to memory at
once and to the file from a writer thread, batched (many keys, one transaction). A `kill -9`
loses at most the last few milliseconds of writes: the catch-up then infers those changes
again, under the same event ids, and the outbox ignores a delivery id it already holds.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import queue
import sqlite3
import threading
import time
from typing import Any

import structlog

from whazing_gateway.ops.files import private_file
from whazing_gateway.state.memory import MemoryState

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    expires_at REAL,
    updated_at REAL NOT NULL
);
"""

_STOP = object()


class SqliteState:
    """`StateStore` persisted in one SQLite file; one gateway process per file."""

    def __init__(self, path: str | os.PathLike, *, max_items: int = 100_000, max_batch: int = 1000) -> None:
        self.path = os.fspath(path)
        self._memory = MemoryState(max_items)
        self._max_items = max_items
        self._max_batch = max_batch
        self._writes: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loaded: asyncio.Future | None = None
        self._lock = threading.Lock()
        self.write_errors = 0
        self.loaded_items = 0
        self._baseline: dict[str, Any] = {}

    # ---- the StateStore protocol ----------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        await self._ready()
        return await self._memory.get(key)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        await self._ready()
        await self._memory.set(key, value, ttl_s)
        self._persist(key, value, ttl_s)

    async def add_once(self, key: str, ttl_s: float | None = None) -> bool:
        await self._ready()
        first = await self._memory.add_once(key, ttl_s)
        if first:
            self._persist(key, True, ttl_s)
        return first

    async def set_newer(self, key: str, value: Any, version: float, ttl_s: float | None = None) -> bool:
        """One process per file writes in order; the version is kept in memory only (a restart
        starts without one: the first write after it goes through)."""
        await self._ready()
        written = await self._memory.set_newer(key, value, version, ttl_s)
        if written:
            self._persist(key, value, ttl_s)
        return written

    async def loaded(self, key: str) -> Any | None:
        """The value as it was in the file at start (before this process changed anything): what
        the gateway knew before it went away, for the catch-up."""
        await self._ready()
        return self._baseline.get(key)

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._ready()

    async def close(self) -> None:
        """Write what is queued and stop the writer (also done at interpreter exit)."""
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._writes.put(_STOP)
            thread.join(timeout=10)

    async def _ready(self) -> None:
        if self._loaded is None:
            self._loaded = loaded = asyncio.get_running_loop().create_future()
            try:
                try:
                    rows = await asyncio.to_thread(self._load)
                except Exception as exc:  # an unreadable file: start empty, say so, keep going
                    log.error("state file unreadable: starting with no ticket state", path=self.path,
                              error=repr(exc))
                    rows = []
                now = time.time()
                for key, value, expires_at in rows:
                    if key.startswith(("t:", "m:")):  # ticket state and last messages: the catch-up's
                        self._baseline[key] = value
                    await self._memory.set(key, value, None if expires_at is None else max(0.001, expires_at - now))
                self.loaded_items = len(rows)
                self._start_writer()
                log.info("state loaded", path=self.path, items=len(rows))
            finally:
                loaded.set_result(True)
        elif not self._loaded.done():
            await self._loaded

    # ---- the thread side ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        private_file(self.path)  # 0600 in a 0700 folder: it holds customers' tickets
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        return conn

    def _load(self) -> list[tuple[str, Any, float | None]]:
        conn = self._connect()
        try:
            now = time.time()
            conn.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            rows = conn.execute(
                "SELECT key, value, expires_at FROM state ORDER BY updated_at DESC LIMIT ?", (self._max_items,)
            ).fetchall()
        finally:
            conn.close()
        out = []
        for key, value, expires_at in reversed(rows):  # oldest first: the LRU keeps the newest
            try:
                out.append((key, json.loads(value), expires_at))
            except ValueError:
                continue
        return out

    def _start_writer(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._writer, name="state-sqlite", daemon=True)
                self._thread.start()
                atexit.register(self.close_sync)

    def _persist(self, key: str, value: Any, ttl_s: float | None) -> None:
        try:
            text = json.dumps(value, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            return
        now = time.time()
        self._writes.put((key, None if value is None else text, None if ttl_s is None else now + ttl_s, now))

    def _writer(self) -> None:
        conn: sqlite3.Connection | None = None
        stop = False
        while not stop:
            first = self._writes.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute("BEGIN")
                for row in batch:  # in order: a key set then cleared must end cleared
                    if row[1] is None:
                        conn.execute("DELETE FROM state WHERE key = ?", (row[0],))
                    else:
                        conn.execute("INSERT OR REPLACE INTO state (key, value, expires_at, updated_at)"
                                     " VALUES (?,?,?,?)", row)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # memory stays right; only a restart would forget
                self.write_errors += 1
                log.error("state write failed: a restart would forget these changes", path=self.path,
                          error=str(exc), keys=len(batch))
                if conn is not None:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
        if conn is not None:
            conn.close()
