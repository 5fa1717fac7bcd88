"""The shared outbox for scale-out replicas: one Redis, sorted sets and per-ticket lists, Lua.

Every transition of a delivery is one Lua script (`lua/*.lua` beside this module), so replicas
never see half a move. Redis being down must never stop the traffic: `put` falls back to a
bounded local spool flushed, in order, when Redis answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import socket
import sqlite3
import time
from importlib import resources
from typing import Any, Callable, Mapping, Sequence

import structlog

from whazing_gateway import model
from whazing_gateway.ops import metrics
from whazing_gateway.ops.logs import mask_url
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
from whazing_gateway.outbox.spool import Spool
from whazing_gateway.state.redis import RedisError_, key_prefix, make_client

log = structlog.get_logger(__name__)

# A ticket's events closer than this by Whazing's clock keep the order they were accepted in;
# only events further apart are put back in Whazing's order (see RedisOutbox). Whazing's stamps
# need not follow cause at that scale: the push of a new or reopened ticket can carry an
# `updatedAt` later than its first message's `createdAt` (the ticket is touched again for its
# last message before the push), while every replica sees the ticket's push first and accepts
# its event first.
ORDER_TOLERANCE_S = 1.0


# ---- the outbox ---------------------------------------------------------------------------------
#
# Keys (P = "<prefix>:ob:"), one Redis (standalone or Sentinel; the scripts build key names, so
# not Cluster):
#   P d:<id>            hash: the delivery and its progress (fields of OutboxItem, `seq`, `owner`)
#   P a:<id>            list: attempts, JSON, oldest first
#   P q:<target>\x1f<order_key>   list: unfinished ordered deliveries in acceptance order
#   P due:<target>      zset: claimable candidates (heads of their order queue, unordered items);
#                       score = next_at, or lease_until while leased (an expired lease is due)
#   P held:<target>     zset: ordered deliveries behind their head (claimed only with ordered=False)
#   P targets           set of target names;  P all: zset id -> created_at (admin listing)
#   P seq               acceptance counter;   P paused: hash target -> JSON TargetPause
#   P owners            zset replica -> heartbeat expiry;  P own:<replica>: set of its leased ids
# Every transition is one Lua script, so replicas never see half a move.

_NONE = "\x00"  # ARGV marker for None (Lua has no nil inside argument lists)






# Replicas whose heartbeat expired: their leases end now, so the others claim their deliveries.




def _arg(value: Any) -> str | bytes:
    if value is None:
        return _NONE
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, str)):
        return value
    return str(value)


def _s(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _f(raw: bytes | None) -> float | None:
    return None if raw is None else float(raw)


def _i(raw: bytes | None) -> int | None:
    return None if raw is None else int(raw)


def _item_from_hash(h: dict[bytes, bytes]) -> OutboxItem:
    """HGETALL -> OutboxItem (absent field = None)."""
    delivery = model.Delivery(
        id=h[b"id"].decode(), target=h[b"target"].decode(), event_id=h[b"event_id"].decode(),
        event_type=h[b"event_type"].decode(), order_key=_s(h.get(b"order_key")), body=h[b"body"],
        created_at=float(h[b"created_at"]), ticket_id=_i(h.get(b"ticket_id")), flow_id=_s(h.get(b"flow_id")),
    )
    return OutboxItem(
        delivery=delivery, status=h[b"status"].decode(), attempts=int(h[b"attempts"]),
        round_attempts=int(h[b"round_attempts"]), next_at=float(h[b"next_at"]),
        last_error=_s(h.get(b"last_error")), last_status=_i(h.get(b"last_status")),
        accepted_at=float(h[b"accepted_at"]), updated_at=float(h[b"updated_at"]),
        lease_until=_f(h.get(b"lease_until")),
    )


def _pairs(flat: list) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _seq(h: dict[bytes, bytes]) -> int:
    return int(h.get(b"seq", 0))


class RedisOutbox(Outbox):
    """`Outbox` shared by replicas through one Redis, with a local spool for Redis outages.

    Leases: an item is leased by this replica (`replica_id`) until `lease_until`. Each replica
    beats a heartbeat every `heartbeat_s`; when one dies (kill -9, host gone) its heartbeat
    expires after `heartbeat_ttl_s` and the survivors release its leases at once instead of
    waiting for the lease to run out: its pending deliveries are claimed by the others.

    Order per (target, order_key) is acceptance order, corrected by event time (Delivery.created_at)
    where that is clear: two replicas may accept one ticket's events in either order, so an
    ordered delivery waits `reorder_window_s` before it is claimable and goes before
    not-yet-started ones that happened more than ORDER_TOLERANCE_S later.

    `put` never raises because Redis is down: the deliveries go to the spool (a SQLite file when
    `spool_path` is set, else memory) and a background task writes them to Redis, in order, when
    it answers again. A full spool refuses the newest: counted (metrics.SPOOL_DROPPED) and logged.
    """

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        redis_prefix: str = "wgw",
        spool_max: int = 10_000,
        *,
        spool_path: str | os.PathLike | None = None,
        replica_id: str | None = None,
        heartbeat_s: float = 2.0,
        heartbeat_ttl_s: float = 10.0,
        flush_interval_s: float = 0.5,
        flush_batch: int = 500,
        timeout_s: float = 2.0,
        reorder_window_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        client=None,
    ) -> None:
        self.redis_url = redis_url
        self._p = key_prefix(redis_prefix) + "ob:"
        self._client = client
        self._timeout_s = timeout_s
        self._reorder_window_s = reorder_window_s
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._heartbeat_s = heartbeat_s
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._flush_interval_s = flush_interval_s
        self._flush_batch = flush_batch
        self._clock = clock
        self.spool = Spool(spool_path, spool_max)
        self._spooled = 0
        self._spool_lock = asyncio.Lock()
        self._redis_down = False
        self._down_since: float | None = None
        self._flush_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._scripts: dict[str, Any] = {}
        self._opened = False
        self._dropped_logged_at = 0.0
        self._dropped_since_log = 0
        self._unrecorded: list[list] = []  # record_attempt args waiting for Redis (bounded)
        self._max_unrecorded = 10_000

    # ---- plumbing ---------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.redis_url, self._timeout_s)
        return self._client

    @property
    def spooled(self) -> int:
        """Deliveries waiting in the local spool for Redis."""
        return self._spooled

    @property
    def redis_up(self) -> bool:
        return not self._redis_down

    async def _run(self, name: str, args: list) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(_SCRIPTS[name])
        return await script(keys=[], args=[self._p, *args])

    async def _call(self, name: str, args: list) -> Any:
        """A script for the Sender or the admin: Redis errors become OutboxError (the caller
        retries later; the lease, if any, simply runs out)."""
        if not self._opened:
            raise OutboxError("outbox is not open")
        try:
            return await self._run(name, args)
        except RedisError_ as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> OutboxError:
        return OutboxError(f"redis outbox {self.redis_url}: {type(exc).__name__}: {exc}")

    def _troubled(self) -> bool:
        return not self._healthy or self._redis_down  # spooling: accepted, but not shared yet

    def _went_down(self, exc: BaseException) -> None:
        if not self._redis_down:
            self._redis_down = True
            self._down_since = time.monotonic()
            log.error("outbox.redis_down_spooling", error=f"{type(exc).__name__}: {exc}",
                      spool=self.spool.path, spool_max=self.spool.max_items)
        self._last_error = f"Redis unreachable ({type(exc).__name__}: {exc}); spooling locally"
        self._last_error_at = time.time()

    # ---- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Never fails because Redis is down (the spool takes over); fails if the spool cannot
        be opened."""
        if self._opened:
            return
        try:
            self._spooled = await asyncio.to_thread(self.spool.open)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            raise OutboxError(f"redis outbox spool {self.spool.path}: {exc}") from exc
        metrics.SPOOL_SIZE.set(self._spooled)
        self._opened = True
        if self._spooled:
            log.warning("outbox.spool_left_by_previous_run", count=self._spooled, spool=self.spool.path)
            self._redis_down = True  # new puts queue behind the old ones until they are flushed
        try:
            await self._heartbeat_once()
        except RedisError_ as exc:
            self._went_down(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="redis-outbox-heartbeat"),
            loop.create_task(self._flush_loop(), name="redis-outbox-flush"),
        ]
        log.debug("outbox.opened", engine="redis", url=self.redis_url, replica=self.replica_id)

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._unrecorded:
            log.warning("outbox.closed_with_unrecorded_attempts", count=len(self._unrecorded),
                        hint="their leases run out and they are sent again (same webhook-id)")
        if self._spooled == 0:
            # A clean exit hands our leases over at once instead of waiting for the heartbeat.
            try:
                await self.client.zadd(self._p + "owners", {self.replica_id: 0})
                await self._run("reap", [repr(self._clock())])
            except RedisError_:
                pass
        elif self._spooled:
            log.warning("outbox.closed_with_spool", count=self._spooled, spool=self.spool.path,
                        hint="kept on disk and flushed at the next start" if self.spool.path != ":memory:"
                        else "in memory: LOST (set a spool path)")
        await asyncio.to_thread(self.spool.close)
        if self._client is not None:
            try:
                await self._client.aclose()
            except RedisError_:
                pass
            self._client = None
            self._scripts = {}

    async def _heartbeat_once(self) -> int:
        now = self._clock()
        await self.client.zadd(self._p + "owners", {self.replica_id: now + self._heartbeat_ttl_s})
        n = await self._run("reap", [repr(now)])
        if n:
            log.warning("outbox.took_over_dead_replica_leases", count=n)
        return n

    async def _heartbeat_loop(self) -> None:
        # `while self._opened`, not `while True`: on Python 3.11 asyncio.wait_for (and timeouts
        # inside redis-py) can swallow the cancel `close()` sends, which left close() waiting
        # for these loops forever; the flag ends them at the next turn whatever happens to it.
        while self._opened:
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._heartbeat_once()
            except RedisError_:
                pass  # the flusher and the Sender report Redis being down
            except Exception:  # a bug must not stop the heartbeat for good
                metrics.STAGE_ERRORS.labels(stage="outbox").inc()
                log.exception("outbox.heartbeat_failed")

    # ---- the pipeline's side ----------------------------------------------------------------

    async def _put_redis(self, deliveries: Sequence[model.Delivery]) -> int:
        now = self._clock()
        settled = repr(now + self._reorder_window_s)
        args: list = [repr(now), repr(ORDER_TOLERANCE_S)]
        for d in deliveries:
            args += [d.id, d.target, d.event_id, d.event_type, _arg(d.order_key), d.body,
                     repr(float(d.created_at)), _arg(d.ticket_id), _arg(d.flow_id), settled]
        return await self._run("put", args)

    async def put(self, deliveries: Sequence[model.Delivery]) -> None:
        if not deliveries:
            return
        if not self._opened:
            raise OutboxError("outbox is not open")
        if not self._redis_down and self._spooled == 0:
            try:
                await self._put_redis(deliveries)
            except RedisError_ as exc:
                self._went_down(exc)
            else:
                self._succeeded()
                return
        await self._spool_put(list(deliveries))

    async def _spool_put(self, deliveries: list[model.Delivery]) -> None:
        async with self._spool_lock:
            try:
                stored, refused = await asyncio.to_thread(self.spool.add, deliveries)
            except (sqlite3.Error, OSError) as exc:  # the disk failed too: nothing was kept
                stored, refused = 0, deliveries
                log.error("outbox.spool_write_failed", error=repr(exc), spool=self.spool.path)
            self._spooled += stored
            metrics.SPOOL_SIZE.set(self._spooled)
        if refused:
            self._dropped(refused)
        self._flush_wake.set()

    def _dropped(self, refused: list[model.Delivery]) -> None:
        """Loss is counted and logged, never silent (one line per drop burst, with samples)."""
        metrics.SPOOL_DROPPED.inc(len(refused))
        self._failed(RuntimeError(f"spool full ({self.spool.max_items}): {len(refused)} deliveries dropped"))
        self._dropped_since_log += len(refused)
        mono = time.monotonic()
        if mono - self._dropped_logged_at >= 5.0:
            log.error("outbox.spool_overflow_dropped", dropped=self._dropped_since_log,
                      spool_max=self.spool.max_items, sample_ids=[d.id for d in refused[:5]],
                      sample_events=[d.event_id for d in refused[:5]])
            self._dropped_logged_at = mono
            self._dropped_since_log = 0

    async def _flush_loop(self) -> None:
        backoff = self._flush_interval_s
        while self._opened:  # see _heartbeat_loop
            try:
                await asyncio.wait_for(self._flush_wake.wait(), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            self._flush_wake.clear()
            try:
                while self._unrecorded:
                    await self._run("record", self._unrecorded[0])
                    self._unrecorded.pop(0)
                if self._spooled or self._redis_down:
                    await self._flush()
                backoff = self._flush_interval_s
            except RedisError_ as exc:
                self._went_down(exc)
                backoff = min(max(backoff * 2, self._flush_interval_s), 5.0)
            except Exception:
                metrics.STAGE_ERRORS.labels(stage="outbox").inc()
                log.exception("outbox.flush_failed")
                backoff = 5.0

    async def _flush(self) -> None:
        """Write the spool to Redis, oldest first; back to direct writes once it is empty."""
        while True:
            async with self._spool_lock:
                batch = await asyncio.to_thread(self.spool.peek, self._flush_batch)
                if not batch:
                    await self.client.ping()  # nothing spooled: is Redis back?
                    self._spooled = 0
                    metrics.SPOOL_SIZE.set(0)
                    if self._redis_down:
                        self._redis_down = False
                        log.info("outbox.redis_back", down_s=round(time.monotonic() - (self._down_since or 0), 3))
                    self._succeeded()
                    return
                await self._put_redis([d for _, d in batch])
                self._spooled = await asyncio.to_thread(self.spool.remove_through, batch[-1][0])
                metrics.SPOOL_SIZE.set(self._spooled)
                log.debug("outbox.spool_flushed", count=len(batch), remaining=self._spooled)

    # ---- the Sender's side ------------------------------------------------------------------

    async def claim(self, now: float, limit: int, *, lease_s: float = 60.0,
                    targets: Mapping[str, int] | None = None, ordered: bool = True,
                    probe: bool = False) -> list[OutboxItem]:
        if limit <= 0:
            return []
        args: list = [repr(float(now)), limit, repr(float(now) + lease_s), self.replica_id, "1" if ordered else "0",
                      "1" if probe else "0"]
        if targets is not None:
            caps = [(name, cap) for name, cap in targets.items() if cap > 0]
            if not caps:
                return []
            for name, cap in caps:
                args += [name, cap]
        rows = await self._call("claim", args)
        return [_item_from_hash(_pairs(r)) for r in rows]

    async def record_attempt(self, item_id: str, attempt: Attempt, outcome: Outcome,
                             next_at: float | None, *, counted: bool = True) -> None:
        status = {"delivered": DELIVERED, "retry": PENDING, "dead": DEAD}[outcome]
        attempt = dataclasses.replace(attempt, error=mask_url(attempt.error)) if attempt.error else attempt
        last_error = attempt.error
        if last_error is None and outcome != "delivered" and attempt.status_code is not None:
            last_error = f"HTTP {attempt.status_code}"
        record = json.dumps({"at": attempt.at, "status_code": attempt.status_code,
                             "latency_ms": attempt.latency_ms, "error": attempt.error})
        args = [item_id, status, _arg(None if next_at is None else float(next_at)),
                _arg(last_error), _arg(attempt.status_code), repr(self._clock()), record,
                "1" if counted else "0"]
        if not self._opened:
            raise OutboxError("outbox is not open")
        try:
            await self._run("record", args)
        except RedisError_ as exc:
            # The webhook went out; keep its outcome and write it when Redis answers again, so
            # its ticket is not held back (nor the webhook sent twice) until the lease runs out.
            if len(self._unrecorded) >= self._max_unrecorded:
                raise self._error(exc) from exc
            self._unrecorded.append(args)
            self._went_down(exc)
            self._flush_wake.set()

    async def release(self, item_ids: Sequence[str], next_at: float | None = None) -> None:
        ids = list(item_ids)
        if ids:
            await self._call("release", [_arg(None if next_at is None else float(next_at)), *ids])

    async def wake_target(self, target: str, now: float) -> int:
        return int(await self._call("wake", [target, repr(float(now))]))

    async def recover(self) -> int:
        """Shared engine: our own leases cannot be told from a live twin's, so nothing of ours
        is released; leases of replicas whose heartbeat expired are (returns how many)."""
        try:
            return await self._call("reap", [repr(self._clock())])
        except OutboxError:
            return 0

    async def _target_names(self) -> list[str]:
        return sorted(t.decode() for t in await self.client.smembers(self._p + "targets"))

    async def pending_by_target(self) -> dict[str, int]:
        if not self._opened:
            raise OutboxError("outbox is not open")
        try:
            names = await self._target_names()
            pipe = self.client.pipeline(transaction=False)
            for t in names:
                pipe.zcard(self._p + "due:" + t)
                pipe.zcard(self._p + "held:" + t)
            counts = await pipe.execute()
        except RedisError_ as exc:
            raise self._error(exc) from exc
        out = {t: counts[2 * i] + counts[2 * i + 1] for i, t in enumerate(names)}
        return {t: n for t, n in out.items() if n}

    async def pending_count(self) -> int:
        return sum((await self.pending_by_target()).values())

    # ---- target pauses ----------------------------------------------------------------------

    async def _redis(self, coro_fn):
        if not self._opened:
            raise OutboxError("outbox is not open")
        try:
            return await coro_fn(self.client)
        except RedisError_ as exc:
            raise self._error(exc) from exc

    async def pause_target(self, pause: TargetPause) -> None:
        value = json.dumps({"url": mask_url(pause.url), "reason": mask_url(pause.reason), "at": pause.at})
        await self._redis(lambda r: r.hset(self._p + "paused", pause.target, value))

    async def resume_target(self, target: str) -> bool:
        return bool(await self._redis(lambda r: r.hdel(self._p + "paused", target)))

    async def paused_targets(self) -> dict[str, TargetPause]:
        raw = await self._redis(lambda r: r.hgetall(self._p + "paused"))
        out = {}
        for name, value in raw.items():
            v = json.loads(value)
            out[name.decode()] = TargetPause(target=name.decode(), url=v["url"], reason=v["reason"], at=v["at"])
        return out

    async def set_target_health(self, health: TargetHealth) -> None:
        value = json.dumps({k: getattr(health, k) for k in TargetHealth.__slots__ if k != "target"})
        await self._redis(lambda r: r.hset(self._p + "health", health.target, value))

    async def target_health(self) -> dict[str, TargetHealth]:
        raw = await self._redis(lambda r: r.hgetall(self._p + "health"))
        return {name.decode(): TargetHealth(target=name.decode(), **json.loads(value)) for name, value in raw.items()}

    # ---- admin ------------------------------------------------------------------------------

    async def _hashes(self, ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._p + "d:" + i)
        return [h for h in await pipe.execute() if h]

    async def _select(self, flt: OutboxFilter, limit: int | None) -> list[OutboxItem]:
        """Matching items, newest event first (created_at, then acceptance order)."""
        if flt.ids:
            found = await self._hashes(list(dict.fromkeys(flt.ids)))
        else:
            hi = "+inf" if flt.until is None else f"({flt.until!r}"
            lo = "-inf" if flt.since is None else repr(float(flt.since))
            found, offset, page = [], 0, 500
            while True:
                ids = await self.client.zrevrangebyscore(self._p + "all", hi, lo, start=offset, num=page)
                if not ids:
                    break
                offset += len(ids)
                found += await self._hashes([i.decode() for i in ids])
                if limit is not None and len(found) >= limit * 4 + page:
                    # enough candidates for most filters; keep paging only while short of matches
                    matched = sum(1 for h in found if flt.matches(_item_from_hash(h)))
                    if matched >= limit:
                        break
        found.sort(key=lambda h: (float(h[b"created_at"]), _seq(h)), reverse=True)
        items = [it for it in (_item_from_hash(h) for h in found) if flt.matches(it)]
        return items if limit is None else items[:limit]

    async def find(self, flt: OutboxFilter) -> list[OutboxItem]:
        return await self._redis(lambda r: self._select(flt, flt.limit))

    async def get(self, item_id: str) -> tuple[OutboxItem, list[Attempt]] | None:
        async def op(r):
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(self._p + "d:" + item_id)
            pipe.lrange(self._p + "a:" + item_id, 0, -1)
            h, raw_attempts = await pipe.execute()
            if not h:
                return None
            attempts = []
            for a in raw_attempts:
                v = json.loads(a)
                attempts.append(Attempt(at=v["at"], status_code=v["status_code"], latency_ms=v["latency_ms"],
                                        error=v["error"]))
            return _item_from_hash(h), attempts

        return await self._redis(op)

    async def retry(self, flt: OutboxFilter, now: float) -> int:
        items = await self._redis(lambda r: self._select(flt, None))
        # oldest first, so re-queued deliveries of one ticket keep their order
        ids = [i.id for i in sorted(items, key=lambda i: (i.created_at, i.accepted_at))]
        total = 0
        for start in range(0, len(ids), 200):
            total += await self._call("requeue", [repr(float(now)), *ids[start:start + 200]])
        return total

    async def purge(self, flt: OutboxFilter) -> int:
        if flt.status == PENDING:
            return 0
        items = await self._redis(lambda r: self._select(flt, None))
        ids = [i.id for i in items if i.status in (DELIVERED, DEAD)]
        total = 0
        for start in range(0, len(ids), 500):
            total += await self._call("purge", ids[start:start + 500])
        return total


def _load_scripts() -> dict[str, str]:
    """The Lua scripts shipped beside this module (`lua/*.lua`), each prefixed by `common.lua`."""
    folder = resources.files(__package__).joinpath("lua")
    common = folder.joinpath("common.lua").read_text()
    return {name: common + folder.joinpath(f"{name}.lua").read_text()
            for name in ("put", "claim", "record", "release", "reap", "requeue", "purge", "wake")}


_SCRIPTS = _load_scripts()
