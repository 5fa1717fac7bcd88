"""The default outbox engine: one SQLite file in WAL mode, driven from one dedicated thread.

Why a thread of its own: sqlite calls block, and the proxy's event loop must never wait on the
disk. Every operation is queued to that thread; whatever is queued when it wakes runs in ONE
transaction (many `put`s and `record_attempt`s coalesced into one commit and one fsync), each
operation inside its own savepoint so one failing operation does not take the others down.

One gateway process per file: `recover()` releases every lease, which is right only when the
process that calls it is the sole sender. The admin CLI may open the same file meanwhile (WAL lets
it read while the gateway writes; its writes wait `busy_timeout_ms`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import structlog

from whazing_gateway import model
from whazing_gateway.ops.logs import mask_url
from whazing_gateway.ops.files import private_file
from whazing_gateway.outbox.base import (
    DEAD,
    DELIVERED,
    PENDING,
    Attempt,
    Outbox,
    OutboxError,
    OutboxFilter,
    OutboxItem,
    Outcome,
    TargetHealth,
    TargetPause,
)

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    target         TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    order_key      TEXT,
    body           BLOB NOT NULL,
    created_at     REAL NOT NULL,
    ticket_id      INTEGER,
    flow_id        TEXT,
    status         TEXT NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    round_attempts INTEGER NOT NULL DEFAULT 0,
    next_at        REAL NOT NULL,
    lease_until    REAL,
    last_error     TEXT,
    last_status    INTEGER,
    accepted_at    REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_due_by_target ON deliveries (target, next_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_heads ON deliveries (target, order_key, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries (created_at);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    at          REAL NOT NULL,
    status_code INTEGER,
    latency_ms  REAL NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_delivery ON attempts (delivery_id, at);
CREATE TABLE IF NOT EXISTS paused_targets (
    target TEXT PRIMARY KEY,
    url    TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS target_health (
    target        TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    failures      INTEGER NOT NULL,
    since         REAL NOT NULL,
    next_probe_at REAL,
    last_error    TEXT,
    probes        INTEGER NOT NULL,
    updated_at    REAL NOT NULL
);
"""

_COLUMNS = (
    "id, target, event_id, event_type, order_key, body, created_at, ticket_id, flow_id, status, "
    "attempts, round_attempts, next_at, last_error, last_status, accepted_at, updated_at, lease_until"
)

_STOP = object()


def _row_to_item(row: Sequence[Any]) -> OutboxItem:
    (id_, target, event_id, event_type, order_key, body, created_at, ticket_id, flow_id, status,
     attempts, round_attempts, next_at, last_error, last_status, accepted_at, updated_at,
     lease_until) = row
    delivery = model.Delivery(
        id=id_, target=target, event_id=event_id, event_type=event_type, order_key=order_key,
        body=bytes(body), created_at=created_at, ticket_id=ticket_id, flow_id=flow_id,
    )
    return OutboxItem(
        delivery=delivery, status=status, attempts=attempts, round_attempts=round_attempts,
        next_at=next_at, last_error=last_error, last_status=last_status, accepted_at=accepted_at,
        updated_at=updated_at, lease_until=lease_until,
    )


def _where(flt: OutboxFilter) -> tuple[str, list[Any]]:
    """SQL for OutboxFilter (same meaning as OutboxFilter.matches)."""
    clauses: list[str] = []
    args: list[Any] = []
    if flt.ids:
        clauses.append(f"id IN ({','.join('?' * len(flt.ids))})")
        args.extend(flt.ids)
    for column, value in (("target", flt.target), ("event_type", flt.event_type), ("status", flt.status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if flt.since is not None:
        clauses.append("created_at >= ?")
        args.append(flt.since)
    if flt.until is not None:
        clauses.append("created_at < ?")
        args.append(flt.until)
    return (" AND ".join(clauses) or "1"), args


class _Op:
    __slots__ = ("fn", "write", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], write: bool,
                 future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.write = write
        self.future = future
        self.loop = loop


def _resolve(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the work is done (or not) all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class SqliteOutbox(Outbox):
    """`Outbox` on a local SQLite file. See the module docstring for the threading model."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 2000,
        max_batch: int = 1000,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._max_bytes = max_bytes  # a disk budget: past it, puts fail like on a full disk
        self._clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self.commits = 0  # write transactions committed (each may hold many operations)

    # ---- the thread -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        private_file(self.path)  # 0600 in a 0700 folder: it holds customers' messages
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("outbox.sqlite_not_wal", path=self.path, journal_mode=mode)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        if self._max_bytes:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(16, int(self._max_bytes) // page_size)}")
        conn.executescript(SCHEMA)
        return conn

    def _worker(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is _STOP:
                    stop = True
                    break
                batch.append(op)
            self._run_batch(batch)
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover - closing a broken file
                pass
            self._conn = None

    def _run_batch(self, batch: list[_Op]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        writes = any(op.write for op in batch)
        write_error: BaseException | None = None
        try:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            if writes:
                conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn)
                except Exception as exc:  # one bad operation must not sink the batch...
                    if not conn.in_transaction:  # ...unless sqlite rolled it all back (full, I/O)
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((None, exc))
                    if op.write and isinstance(exc, sqlite3.Error):  # disk full, I/O error...
                        write_error = exc
                else:
                    conn.execute("RELEASE op")
                    results.append((result, None))
            if writes:
                conn.execute("COMMIT")
        except Exception as exc:  # BEGIN (locked), COMMIT (disk full, I/O error): nothing committed
            if self._conn is not None:
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if writes:
                self._failed(exc)
            log.error("outbox.sqlite_error", path=self.path, error=str(exc), ops=len(batch))
            error = OutboxError(f"outbox {self.path}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            results = [(None, error)] * len(batch)
        else:
            if writes:
                self.commits += 1
                if write_error is None:
                    self._succeeded()
                else:
                    self._failed(write_error)
                    log.error("outbox.sqlite_error", path=self.path, error=str(write_error))
        for op, (result, failure) in zip(batch, results):
            if failure is not None and isinstance(failure, sqlite3.Error):
                wrapped = OutboxError(f"outbox {self.path}: {type(failure).__name__}: {failure}")
                wrapped.__cause__ = failure
                failure = wrapped
            op.loop.call_soon_threadsafe(_resolve, op.future, result, failure)

    async def _call(self, fn: Callable[[sqlite3.Connection], Any], write: bool = True) -> Any:
        if self._thread is None:
            raise OutboxError("outbox is not open")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Op(fn, write, future, loop))
        return await future

    # ---- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._worker, name="outbox-sqlite", daemon=True)
        self._thread.start()
        try:
            await self._call(lambda conn: None, write=True)  # connect + schema now, loudly
        except BaseException:
            await self.close()
            raise
        log.debug("outbox.opened", engine="sqlite", path=self.path)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)

    # ---- pipeline ---------------------------------------------------------------------------

    async def put(self, deliveries: Sequence[model.Delivery]) -> None:
        if not deliveries:
            return
        now = self._clock()
        rows = [
            (d.id, d.target, d.event_id, d.event_type, d.order_key, d.body, d.created_at,
             d.ticket_id, d.flow_id, now, now, now)
            for d in deliveries
        ]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries (id, target, event_id, event_type, order_key, body,"
                " created_at, ticket_id, flow_id, next_at, accepted_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

        await self._call(op)

    # ---- sender -----------------------------------------------------------------------------

    async def claim(
        self,
        now: float,
        limit: int,
        *,
        lease_s: float = 60.0,
        targets: Mapping[str, int] | None = None,
        ordered: bool = True,
        probe: bool = False,
    ) -> list[OutboxItem]:
        if limit <= 0:
            return []
        # INDEXED BY: walk due items in due order and stop at `limit`; left to itself the planner
        # may pick the heads index and sort the whole backlog on every claim.
        base = (
            f"SELECT {_COLUMNS}, seq FROM deliveries d INDEXED BY {{index}}"
            " WHERE d.status = 'pending'" + ("" if probe else " AND d.next_at <= :now") +
            " AND (d.lease_until IS NULL OR d.lease_until <= :now)"
        )
        if ordered:
            base += (
                " AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p"
                " WHERE p.status = 'pending' AND p.target = d.target AND p.order_key = d.order_key"
                " AND p.seq < d.seq))"
            )
        sort_col = 16 if probe else 12  # updated_at (least recently tried first) or next_at
        order = f" ORDER BY d.{'updated_at' if probe else 'next_at'}, d.seq LIMIT :limit"
        queries: list[tuple[str, dict[str, Any]]]
        if targets is None:
            queries = [(base.format(index="deliveries_due") + order, {"now": now, "limit": limit})]
        else:
            queries = [
                (base.format(index="deliveries_due_by_target") + " AND d.target = :target" + order,
                 {"now": now, "limit": min(cap, limit), "target": name})
                for name, cap in targets.items() if cap > 0
            ]

        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows: list[Any] = []
            for sql, args in queries:
                rows.extend(conn.execute(sql, args).fetchall())
            rows.sort(key=lambda r: (r[sort_col], r[-1]))
            rows = rows[:limit]
            if not rows:
                return []
            until = now + lease_s
            conn.executemany(
                "UPDATE deliveries SET lease_until = ? WHERE seq = ?", [(until, r[-1]) for r in rows]
            )
            items = []
            for r in rows:
                item = _row_to_item(r[:-1])
                items.append(_with_lease(item, until))
            return items

        return await self._call(op)

    async def record_attempt(
        self, item_id: str, attempt: Attempt, outcome: Outcome, next_at: float | None,
        *, counted: bool = True,
    ) -> None:
        status = {"delivered": DELIVERED, "retry": PENDING, "dead": DEAD}[outcome]
        now = self._clock()
        error = None if attempt.error is None else mask_url(attempt.error)  # no URL secret at rest
        last_error = error
        if last_error is None and outcome != "delivered" and attempt.status_code is not None:
            last_error = f"HTTP {attempt.status_code}"

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                " round_attempts = round_attempts + ?, next_at = COALESCE(?, next_at),"
                " lease_until = NULL, last_error = ?, last_status = ?, updated_at = ? WHERE id = ?",
                (status, 1 if counted else 0, next_at, last_error, attempt.status_code, now, item_id),
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO attempts (delivery_id, at, status_code, latency_ms, error)"
                    " VALUES (?,?,?,?,?)",
                    (item_id, attempt.at, attempt.status_code, attempt.latency_ms, error),
                )

        await self._call(op)

    async def release(self, item_ids: Sequence[str], next_at: float | None = None) -> None:
        ids = list(item_ids)
        if not ids:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET lease_until = NULL, next_at = COALESCE(?, next_at)"
                " WHERE id = ? AND status = 'pending'",
                [(next_at, i) for i in ids],
            )

        await self._call(op)

    async def wake_target(self, target: str, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET next_at = ? WHERE target = ? AND status = 'pending'"
                " AND next_at > ? AND attempts > 0 AND (lease_until IS NULL OR lease_until <= ?)",
                (now, target, now, now),
            ).rowcount

        return await self._call(op)

    async def recover(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET lease_until = NULL"
                " WHERE status = 'pending' AND lease_until IS NOT NULL"
            ).rowcount

        return await self._call(op)

    async def pending_count(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]

        return await self._call(op, write=False)

    async def pending_by_target(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(
                "SELECT target, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY target"
            ).fetchall())

        return await self._call(op, write=False)

    # ---- target pauses ----------------------------------------------------------------------

    async def pause_target(self, pause: TargetPause) -> None:
        await self._call(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO paused_targets (target, url, reason, at) VALUES (?,?,?,?)",
            (pause.target, mask_url(pause.url), mask_url(pause.reason), pause.at),
        ) and None)

    async def resume_target(self, target: str) -> bool:
        return await self._call(lambda conn: conn.execute(
            "DELETE FROM paused_targets WHERE target = ?", (target,)).rowcount > 0)

    async def paused_targets(self) -> dict[str, TargetPause]:
        def op(conn: sqlite3.Connection) -> dict[str, TargetPause]:
            rows = conn.execute("SELECT target, url, reason, at FROM paused_targets").fetchall()
            return {r[0]: TargetPause(target=r[0], url=r[1], reason=r[2], at=r[3]) for r in rows}

        return await self._call(op, write=False)

    async def set_target_health(self, health: TargetHealth) -> None:
        h = health
        await self._call(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO target_health (target, state, failures, since, next_probe_at,"
            " last_error, probes, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            (h.target, h.state, h.failures, h.since, h.next_probe_at, h.last_error, h.probes, h.updated_at),
        ) and None)

    async def target_health(self) -> dict[str, TargetHealth]:
        def op(conn: sqlite3.Connection) -> dict[str, TargetHealth]:
            rows = conn.execute(
                "SELECT target, state, failures, since, next_probe_at, last_error, probes, updated_at"
                " FROM target_health").fetchall()
            return {r[0]: TargetHealth(*r) for r in rows}

        return await self._call(op, write=False)

    # ---- admin ------------------------------------------------------------------------------

    async def find(self, flt: OutboxFilter) -> list[OutboxItem]:
        where, args = _where(flt)
        sql = f"SELECT {_COLUMNS} FROM deliveries WHERE {where} ORDER BY created_at DESC, seq DESC"
        if flt.limit is not None:
            sql += " LIMIT ?"
            args = [*args, flt.limit]

        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            return [_row_to_item(r) for r in conn.execute(sql, args).fetchall()]

        return await self._call(op, write=False)

    async def get(self, item_id: str) -> tuple[OutboxItem, list[Attempt]] | None:
        def op(conn: sqlite3.Connection):
            row = conn.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return None
            attempts = [
                Attempt(at=a[0], status_code=a[1], latency_ms=a[2], error=a[3])
                for a in conn.execute(
                    "SELECT at, status_code, latency_ms, error FROM attempts"
                    " WHERE delivery_id = ? ORDER BY at, rowid", (item_id,))
            ]
            return _row_to_item(row), attempts

        return await self._call(op, write=False)

    async def retry(self, flt: OutboxFilter, now: float) -> int:
        where, args = _where(flt)

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET status = 'pending', next_at = ?, lease_until = NULL,"
                f" round_attempts = 0, updated_at = ? WHERE {where}",
                [now, now, *args],
            ).rowcount

        return await self._call(op)

    async def purge(self, flt: OutboxFilter) -> int:
        if flt.status == PENDING:
            return 0
        where, args = _where(flt)
        where = f"({where}) AND status IN ('delivered', 'dead')"

        def op(conn: sqlite3.Connection) -> int:
            conn.execute(
                f"DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE {where})", args
            )
            return conn.execute(f"DELETE FROM deliveries WHERE {where}", args).rowcount

        return await self._call(op)


def _with_lease(item: OutboxItem, until: float) -> OutboxItem:
    from dataclasses import replace

    return replace(item, lease_until=until)
