"""The pipeline process: decode -> infer -> route -> outbox writes, out of the proxy's process.

The proxy's hooks only append raw records to the journal (`pipeline/journal.py`); this child
of the gateway tails it in order, runs the same `Pipeline` as `replay`, and checkpoints its
journal position after its outbox commits (at most every CHECKPOINT_EVERY_S). A pathological
record (a huge body, a slow rule) costs this process's time, never the proxy's event loop; a
crash of this process loses nothing (the journal is read again from the checkpoint; event ids
derive from the change).

It is separate from the delivery worker (`deliver/worker.py`): a stalled or crashing pipeline
never delays webhooks already accepted, a slow receiver never delays acceptance, and on a
2-core machine the two use both cores.

Pipes, as for the delivery worker:
- parent -> child (stdin): EOF means "stop once the journal is read" (the parent is stopping);
  the child also gets SIGTERM if the parent dies (then it stops at once).
- child -> parent (stdout): JSON lines: `{"w":1}` deliveries accepted (wake the sender),
  `{"r":{...}}` a result for the flow viewer (with --annotate), `{"m":[...],"o":[ok,error]}`
  its metrics and the outbox's health, every half second while busy.
Logs (the `event` lines included) go to stderr, the parent's stream.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import structlog

from whazing_gateway.ops import metrics
from whazing_gateway.ops.children import ChildProcess, child_start, on_interrupt

log = structlog.get_logger(__name__)

STATUS_INTERVAL_S = 0.5
WAKE_EVERY_S = 0.02
# The pipeline process yields the CPU to the proxy when both want it (ops/children.py): under
# saturation records wait in the journal (lag grows) instead of the traffic slowing down; they
# are read once the load eases.
DRAIN_TIMEOUT_S = 10.0
# Records per outbox transaction and checkpoint when the journal has a backlog: each batch costs
# one commit (an fsync), one checkpoint file and one state write, so a saturated proxy's
# backlog is caught up with fewer of them. A quiet journal gives batches of one or two.
BATCH_RECORDS = 256
SHARED_BATCH_RECORDS = 64  # with a Redis state shared by replicas (see serve)
# While records trickle in, the consumer waits this long between partial batches, and writes its
# journal checkpoint at most this often (and whenever it catches up or stops).
GATHER_S = 0.02
CHECKPOINT_EVERY_S = 0.25


def journal_dir(settings) -> Path:
    return Path(settings.data_dir) / "journal"


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _lock(directory: Path, stopping: asyncio.Event):
    """One consumer per journal: a previous child (its parent killed) may still be exiting."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    waited = False
    while not stopping.is_set():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not waited:
                log.info("pipeline.waiting_for_journal_lock")
                waited = True
            await asyncio.sleep(0.1)
    os.close(fd)
    return None


async def _open_outbox(outbox, stopping: asyncio.Event) -> None:
    delay = 0.5
    while not stopping.is_set():
        try:
            await outbox.open()
            return
        except Exception as exc:
            log.error("outbox could not be opened: records wait in the journal", error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class Consumer:
    """Reads the journal, runs batches through the pipeline, checkpoints after their commits."""

    def __init__(self, reader, pipeline, report, *, gather_s: float = 0.0, deferral=None) -> None:
        self.reader = reader
        self.gather_s = gather_s
        self.deferral = deferral
        self.pipeline = pipeline
        self.report = report
        self.busy_at = 0.0
        self.caught_up = asyncio.Event()
        self.wake_pending = False
        self._flush_handle: asyncio.TimerHandle | None = None
        pipeline.wake = self.request_wake

    def request_wake(self) -> None:
        self.wake_pending = True

    def _after_commit(self) -> None:
        """Counts first, then the wake: by the time a webhook is out, /metrics counts its event.
        At most one such pair per WAKE_EVERY_S: under load the parent's loop reads few lines."""
        self.busy_at = time.monotonic()
        if not self.wake_pending or self._flush_handle is not None:
            return
        wait = self.report.sent_at + WAKE_EVERY_S - self.busy_at
        if wait > 0:
            self._flush_handle = asyncio.get_running_loop().call_later(wait, self._flush)
        else:
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        if self.wake_pending:
            self.wake_pending = False
            self.report()
            _emit({"w": 1})

    async def run(self) -> None:
        from whazing_gateway.pipeline.core import GaveUp

        idle = 0
        pending = None  # read and accepted, not yet checkpointed
        checkpointed_at = 0.0

        def checkpoint() -> None:
            nonlocal pending, checkpointed_at
            if pending is not None:
                self.reader.commit(pending)
                pending, checkpointed_at = None, time.monotonic()

        try:
            while True:
                items = self.reader.read(self.pipeline.max_batch)
                if not items:
                    checkpoint()
                    self.caught_up.set()
                    idle += 1
                    # caught up: poll every 10 ms for a second after traffic, then every 50 ms
                    # (the proxy's writer thread appends every 50 ms: polls in between find nothing)
                    await asyncio.sleep(0.01 if idle < 100 else 0.05)
                    continue
                self.caught_up.clear()
                idle = 0
                records = [record for record, _ in items]
                if self.deferral is not None and await self.deferral.hold(records[0].ts):
                    checkpoint()  # a quiet moment: what was accepted before the wait is marked read
                self.busy_at = time.monotonic()
                try:
                    await self.pipeline.process_batch(records)
                except GaveUp:  # stopping while the outbox fails: read again at the next start
                    checkpoint()  # the batches before this one were accepted
                    self.reader.rewind()
                    return
                except Exception as exc:  # a bug: skip the batch rather than loop on it forever
                    metrics.STAGE_ERRORS.labels("pipeline").inc()
                    log.error("unexpected error in the pipeline: batch skipped", error=repr(exc),
                              records=len(records), flow_id=records[0].flow_id)
                pending = items[-1][1]
                # A record read again after a crash makes the same event ids (the outbox ignores
                # them) and finds its state committed: the checkpoint may lag a little behind.
                if time.monotonic() - checkpointed_at >= CHECKPOINT_EVERY_S:
                    checkpoint()
                metrics.PIPELINE_LAG.set(max(0.0, time.time() - records[-1].ts))
                self._after_commit()
                if self.gather_s and len(items) < self.pipeline.max_batch:
                    # records trickle in: let a few ms of them gather into the next batch
                    # (one commit, one wakeup) rather than waking per record
                    await asyncio.sleep(self.gather_s)
        finally:
            try:
                checkpoint()
            except OSError as exc:
                log.warning("pipeline: last checkpoint not written (records are read again)", error=repr(exc))


class Reporter:
    """The child's metrics and outbox health, to the parent: after each batch that accepted
    deliveries, and every half second while busy (every 5 s when idle)."""

    def __init__(self, outbox) -> None:
        self.outbox = outbox
        self.sent_at = 0.0
        self.changes = metrics.Changes()

    def __call__(self) -> None:
        """Only the values that changed since the last report (the parent keeps the rest)."""
        self.sent_at = time.monotonic()
        _emit({"m": self.changes(), "o": [self.outbox.healthy, self.outbox.last_error]})

    async def run(self, reader, consumer: Consumer) -> None:
        periodic_at = 0.0
        health = None
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            now_health = (self.outbox.healthy, self.outbox.last_error)
            if (consumer.busy_at < periodic_at and now_health == health
                    and time.monotonic() - periodic_at < 5.0):
                continue  # nothing new since the last full report
            health = now_health
            periodic_at = time.monotonic()
            try:
                metrics.JOURNAL_BYTES.set(await asyncio.to_thread(reader.backlog_bytes))
            except OSError:
                pass
            self()


async def _read_stdin(on_eof) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass
    on_eof()


async def serve(settings, annotate: bool, parent_pid: int | None = None) -> int:
    from whazing_gateway.config.reload import RulesWatcher, initial_rules, register_rule_secrets
    from whazing_gateway.upstream.media import MediaFetcher
    from whazing_gateway.infer.inferrer import Inferrer
    from whazing_gateway.outbox import open_outbox
    from whazing_gateway.pipeline.core import Pipeline
    from whazing_gateway.pipeline.deferral import Deferral, ProxyLoad
    from whazing_gateway.pipeline.journal import JournalReader, open_dir
    from whazing_gateway.state import open_state
    from whazing_gateway.route.router import Router

    loop = asyncio.get_running_loop()
    stop_now = asyncio.Event()  # SIGTERM (the parent died): stop at once, the journal keeps the rest
    drain = asyncio.Event()  # stdin closed / SIGINT: read what the journal holds, then stop
    loop.add_signal_handler(signal.SIGTERM, stop_now.set)
    on_interrupt(loop, drain.set)
    stdin_task = asyncio.create_task(_read_stdin(drain.set))

    directory = open_dir(journal_dir(settings))
    lock = await _lock(directory, stop_now)
    if lock is None:
        return 0
    state = open_state(settings)
    from whazing_gateway.infer.catchup import WATERMARK_KEY

    # Loaded now, before the first report: the inference reads the catch-up watermark as it was
    # when this process started (the parent moves it only after that report).
    try:
        watermark = await state.get(WATERMARK_KEY)
    except Exception as exc:  # Redis down: the state falls back on its own; no watermark then
        log.warning("pipeline: catch-up watermark unreadable at start", error=repr(exc))
        watermark = None
    away_since = float(watermark) if isinstance(watermark, (int, float)) else None
    inferrer = Inferrer(state, away_since=away_since)
    router = Router(initial_rules(settings), inferrer.uncommitted, MediaFetcher.from_settings(settings))
    register_rule_secrets(router.rules)
    outbox = open_outbox(settings)
    await _open_outbox(outbox, stop_now)
    reader = JournalReader(directory)
    # Replicas sharing a Redis state each infer against what the others committed: they process
    # promptly, in small batches, so none infers long against a state the others have moved on.
    shared = settings.storage_backend == "redis"
    pipeline = Pipeline(inferrer, router.route, outbox.put, json_limit=settings.inspect_max_bytes,
                        max_batch=SHARED_BATCH_RECORDS if shared else BATCH_RECORDS,
                        on_result=(lambda r: _emit({"r": r.summary()})) if annotate else None)
    reporter = Reporter(outbox)
    deferral = None  # replicas infer promptly (above): none holds what the others would order after
    if parent_pid is not None and settings.defer_max_s > 0 and not shared:
        deferral = Deferral(ProxyLoad(parent_pid), max_s=settings.defer_max_s)
    consumer = Consumer(reader, pipeline, reporter, gather_s=0.0 if shared else GATHER_S, deferral=deferral)
    watcher = None
    if settings.rules_reload_s:
        watcher = RulesWatcher(router, settings.rules_dir, settings=settings, interval_s=settings.rules_reload_s,
                               on_reload=register_rule_secrets)
        watcher.start()
    tasks = [asyncio.create_task(consumer.run(), name="pipeline-consumer"),
             asyncio.create_task(reporter.run(reader, consumer), name="pipeline-status")]
    reporter()  # the parent's /readyz waits for this first report
    log.info("pipeline.started", pid=os.getpid(), storage=settings.storage_backend,
             targets=len(router.rules.targets), journal_from=f"{reader.position.seq}:{reader.position.offset}")
    stop_task = asyncio.create_task(stop_now.wait())
    drain_task = asyncio.create_task(drain.wait())
    await asyncio.wait([stop_task, drain_task, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
    ended = "stop signal" if stop_now.is_set() else "consumer ended" if tasks[0].done() else "drained"
    if ended == "drained":
        # the parent wrote its last records before closing the pipe: read them, then stop
        await asyncio.sleep(0.05)
        caught = asyncio.create_task(consumer.caught_up.wait())
        consumer.caught_up.clear()
        await asyncio.wait([caught, stop_task], timeout=DRAIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if not caught.done():
            ended = "stop signal" if stop_now.is_set() else f"drain timed out after {DRAIN_TIMEOUT_S:g} s"
        caught.cancel()
    pipeline.stopping = True
    for t in (*tasks, stdin_task, stop_task, drain_task):
        t.cancel()
    await asyncio.gather(*tasks, stdin_task, stop_task, drain_task, return_exceptions=True)
    if watcher is not None:
        await watcher.stop()
    reader.close()
    try:
        reporter()
    except (OSError, ValueError):
        pass
    await outbox.close()
    os.close(lock)
    log.info("pipeline.stopped", pid=os.getpid(), ended=ended)
    return 0


# ---- the parent's side -------------------------------------------------------------------------


class PipelineProcess(ChildProcess):
    """Starts the pipeline process, restarts it with backoff, mirrors what it reports."""

    module = "whazing_gateway.pipeline.child"
    name = "pipeline"
    died_hint = "records wait in the journal"
    stdout_limit = 16 << 20  # a report line carries a record's annotations
    stop_timeout_s = DRAIN_TIMEOUT_S + 5.0  # it reads what the journal holds first
    reports_s = 2.0  # its last reports carry the final metrics

    def __init__(self, config_path, *, annotate: bool = False, on_result=None, wake=None) -> None:
        super().__init__(config_path, ("--annotate",) if annotate else ())
        self.on_result = on_result
        self.wake = wake
        # not ready until the process has started and opened the outbox (its first report)
        self.outbox_ok: tuple[bool, str] = (False, "pipeline process starting")
        self.reported = False  # the current process has loaded its state and reported once
        self.mirror = metrics.Mirror()

    def health(self) -> tuple[bool, str]:
        if not self.alive:
            return False, f"pipeline process not running (restarts: {self.restarts})"
        return self.outbox_ok

    def start(self) -> None:
        self.start_supervising()

    def spawned(self) -> None:
        self.mirror.reset()  # a new process counts from zero
        self.outbox_ok = (False, "pipeline process starting")
        self.reported = False

    def died(self) -> None:
        metrics.PIPELINE_RESTARTS.inc()

    def report(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            if "w" in rec:
                if self.wake is not None:
                    self.wake()
            elif "r" in rec:
                if self.on_result is not None:
                    self.on_result(rec["r"])
            elif "m" in rec:
                self.mirror.apply(rec["m"])
                self.reported = True
                ok, error = rec["o"]
                self.outbox_ok = (bool(ok), "ok" if ok else str(error))
        except Exception as exc:  # a garbled line must not stop the mirror
            log.warning("pipeline.bad_report", error=repr(exc), line=line[:200])


def main(argv: list[str] | None = None) -> int:
    started = child_start("python -m whazing_gateway.pipeline.child", (__doc__ or "").splitlines()[0], argv,
                          flags=(("--annotate", "report results for the flow viewer"),))
    if isinstance(started, int):
        return started
    args, settings = started
    return asyncio.run(serve(settings, args.annotate, args.parent_pid))


if __name__ == "__main__":
    sys.exit(main())
