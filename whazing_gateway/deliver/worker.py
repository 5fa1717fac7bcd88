"""The delivery worker: the Sender in a child process of the gateway, off the proxy's CPU.

mitmproxy runs every connection on one event loop, in one thread. Sending webhooks (HTTP
client, signing, outbox bookkeeping) in that loop takes CPU from the traffic, so by default
the gateway starts this worker beside it. They share only the outbox (SQLite in WAL mode
allows one writer process and one claimer process; Redis is shared anyway) and two pipes:

- parent -> worker (stdin): a line per "new work" hint, so deliveries go out at once; EOF
  means the parent is gone, and the worker stops (it also gets SIGTERM if the parent dies).
- worker -> parent (stdout): soon after attempts (at most every REPORT_DELAY_S) and every few
  seconds, one JSON line with the backlog and the metrics that changed (`{"pending": n, "m":
  [...]}`), which the parent mirrors into its own /metrics; target health changes and probes
  as they happen; and, only when the parent shows outcomes in the flow viewer (`--outcomes`),
  one line per attempt. Under load the proxy's event loop reads a few lines a second, not one
  per webhook (that was about 20 us of the proxy's time per delivery).

Logs go to stderr, the same stream as the parent's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys

import structlog

from whazing_gateway.deliver.kinds import OutcomeHook
from whazing_gateway.ops import metrics
from whazing_gateway.ops.children import ChildProcess, child_start, on_interrupt

log = structlog.get_logger(__name__)

STATS_INTERVAL_S = 2.0
REPORT_DELAY_S = 0.1  # after an attempt: a burst of attempts makes one report
# Counted by the parent itself (from the probe lines) or by the pipeline process (which reloads
# the same rules): mirrored from there, not from here.
NOT_MIRRORED = frozenset({"whazing_gateway_target_probes", "whazing_gateway_rules_reloads"})


class _Rules:
    """What RulesWatcher swaps: the worker needs only the targets of the current rules."""

    def __init__(self, rules) -> None:
        self.rules = rules


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _read_hints(sender, stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:  # the parent closed the pipe, or died
            stopping.set()
            return
        sender.wake()


class _Reports:
    """Reports the outbox backlog and the metrics: every few seconds, and soon after attempts
    (debounced); per attempt only what the flow viewer shows, and only if it is asked for."""

    def __init__(self, outbox, outcomes: bool) -> None:
        self.outbox = outbox
        self.outcomes = outcomes
        self.changes = metrics.Changes(skip=NOT_MIRRORED, gauges=False)
        self.soon = asyncio.Event()
        # A flag besides the cancel: on Python 3.11 asyncio.wait_for can swallow a cancel, and a
        # loop that never ends keeps the worker process from exiting.
        self.running = True

    def attempted(self, record: dict) -> None:
        if "outcome" not in record or self.outcomes:  # health and probes: always, they are rare
            _emit(record)
        self.soon.set()

    async def report(self) -> None:
        try:
            pending: int | None = await self.outbox.pending_count()
        except Exception as exc:  # the outbox says why in its own health; keep reporting
            log.warning("deliver_worker.stats_failed", error=repr(exc))
            pending = None
        _emit({"pending": pending, "m": self.changes()})

    async def run(self) -> None:
        while self.running:
            try:
                await asyncio.wait_for(self.soon.wait(), STATS_INTERVAL_S)
                await asyncio.sleep(REPORT_DELAY_S)  # let a burst of attempts finish first
            except asyncio.TimeoutError:
                pass
            self.soon.clear()
            await self.report()


async def serve(settings, outcomes: bool = False) -> int:
    from whazing_gateway.config.reload import RulesWatcher, initial_rules, register_rule_secrets
    from whazing_gateway.deliver.sender import Sender
    from whazing_gateway.outbox import open_outbox

    if settings.storage_backend == "redis":
        # its own local spool: only the parent puts, but two processes must never share one file
        settings = dataclasses.replace(settings, data_dir=settings.data_dir / "worker")
        from whazing_gateway.ops.files import private_dir

        private_dir(settings.data_dir)
    holder = _Rules(initial_rules(settings, quiet=True))
    outbox = open_outbox(settings)
    await outbox.open()
    sender = Sender(outbox, lambda: holder.rules.targets, per_ticket_order=settings.per_ticket_order,
                    poll_interval=0.25)
    backlog = _Reports(outbox, outcomes)
    sender.on_attempt = backlog.attempted
    await sender.start()
    watcher = None
    if settings.rules_reload_s:
        watcher = RulesWatcher(holder, settings.rules_dir, settings=settings, interval_s=settings.rules_reload_s,
                               on_reload=register_rule_secrets)
        watcher.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    on_interrupt(loop, stopping.set)
    tasks = [asyncio.create_task(_read_hints(sender, stopping)), asyncio.create_task(backlog.run())]
    log.info("deliver_worker.started", storage=settings.storage_backend)
    await stopping.wait()
    backlog.running = False
    for t in tasks:
        t.cancel()
    if watcher is not None:
        await watcher.stop()
    await sender.stop()
    try:
        await backlog.report()  # the last counts, for the parent's /metrics
    except (OSError, ValueError):
        pass
    await outbox.close()
    log.info("deliver_worker.stopped")
    return 0


# ---- the parent's side -------------------------------------------------------------------------


class WorkerProcess(ChildProcess):
    """Starts the worker, keeps it running (restarts it with backoff), mirrors what it reports.

    `wake()` is called from the pipeline for every accepted event: it coalesces hints into at
    most one pipe write per loop iteration, and never blocks or raises.
    """

    module = "whazing_gateway.deliver.worker"
    name = "deliver_worker"
    died_hint = "accepted deliveries wait in the outbox"
    reports_s = 2.0  # its last report carries the final counts

    def __init__(self, config_path, *, on_delivery: OutcomeHook | None = None) -> None:
        super().__init__(config_path)
        self.on_outcome = on_delivery
        self._hint_pending = False
        self.mirror = metrics.Mirror()

    async def start(self) -> None:
        """Returns at once: the worker is spawned and supervised by a task."""
        # a line per attempt only for the flow viewer: otherwise its counts come in batches
        self.args = ("--outcomes",) if self.on_outcome is not None else ()
        self.start_supervising()

    def spawned(self) -> None:
        self.mirror.reset()  # a new process counts from zero
        self.wake()  # whatever was accepted while no worker ran

    def report(self, line: bytes) -> None:
        from whazing_gateway.deliver.sender import publish_target_health

        try:
            rec = json.loads(line)
            if "pending" in rec:
                if rec["pending"] is not None:
                    metrics.OUTBOX_PENDING.set(rec["pending"])
                self.mirror.apply(rec.get("m", ()))
                return
            if publish_target_health(rec):
                return
            if self.on_outcome is not None:
                self.on_outcome(rec["id"], rec["target"], rec["outcome"], rec["detail"])
        except Exception as exc:  # a garbled line must not stop the mirror
            log.warning("deliver_worker.bad_report", error=repr(exc), line=line[:200])

    def wake(self) -> None:
        if self._hint_pending or not self.alive:
            return
        self._hint_pending = True
        asyncio.get_running_loop().call_soon(self._send_hint)

    def _send_hint(self) -> None:
        self._hint_pending = False
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None and proc.stdin is not None \
                    and not proc.stdin.is_closing():
                proc.stdin.write(b"w\n")
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the supervisor restarts it; the outbox keeps the work


def main(argv: list[str] | None = None) -> int:
    started = child_start("python -m whazing_gateway.deliver.worker", (__doc__ or "").splitlines()[0], argv,
                          flags=(("--outcomes", "a line per attempt, for the flow viewer"),))
    if isinstance(started, int):
        return started
    args, settings = started
    return asyncio.run(serve(settings, args.outcomes))


if __name__ == "__main__":
    sys.exit(main())
