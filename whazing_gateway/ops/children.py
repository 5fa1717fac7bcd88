"""The gateway's child processes (pipeline process, delivery worker): what each does first, and
how the proxy's process keeps them running.

Both are spawned by the proxy's process with `--parent-pid`: they must not outlive it (kill -9
included), and they must never take the CPU from the proxy when both want it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

import structlog

NICE = 10  # where SCHED_IDLE is refused: still below the proxy


def lower_cpu_priority(cpu: str = "idle") -> str:
    """The proxy's traffic first: the children take CPU the proxy leaves idle.

    `idle` (the default): SCHED_IDLE (Linux) rather than nice 10: an idle-class task gives way
    as soon as the proxy wakes for a frame (ws-worst on 2 cores, back to back: 0.73x of plain
    mitmdump at nice 10, 0.81x idle). The price: it gives way to every other program too, so a
    machine kept busy by something else (Whazing's own backend, a database) holds the children
    back until it calms down; records wait in the journal, deliveries in the outbox.
    `low`: nice 10, a share beside busy programs (`proxy.children_cpu`). Threads started
    afterwards inherit it. Returns what was set, for the log."""
    if cpu == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
            return "idle"
        except (AttributeError, OSError):  # not Linux, or a seccomp profile that refuses it
            pass
    try:
        os.nice(NICE)
        return f"nice {NICE}"
    except OSError:
        return "unchanged"


def become_child(parent_pid: int) -> None:
    """SIGTERM when the parent dies (Linux).

    Done after exec rather than in a preexec_fn: the parent has threads (the outbox's, the
    journal's), and running Python between fork and exec in a threaded process can deadlock."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the closed stdin still stops the child
        pass
    else:
        if os.getppid() != parent_pid:  # the parent died before we asked
            os.kill(os.getpid(), signal.SIGTERM)


def on_interrupt(loop: asyncio.AbstractEventLoop, callback) -> None:
    """Ctrl-C stops a child run by hand; a child of the gateway ignores it (`child_start`).

    A terminal's Ctrl-C reaches the whole process group at once: children that stopped on it by
    themselves were seen exiting by the gateway before it knew it was stopping ("died:
    restarting", at error level, on every clean Ctrl-C). The gateway stops them in order itself
    (stdin closed: the pipeline reads its journal to the end first)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        loop.add_signal_handler(signal.SIGINT, callback)


def child_start(prog: str, description: str, argv: list[str] | None,
                flags: tuple[tuple[str, str], ...] = ()) -> tuple[argparse.Namespace, Any] | int:
    """What both children's `main` do before serving: read `--config` and `--parent-pid` (and
    the boolean `flags`, (name, help) each), become a child, load the settings, set up the log
    on stderr (the parent's stream). An int is the exit status of a config that cannot be read."""
    from whazing_gateway.config import ConfigError, load_settings
    from whazing_gateway.ops.logs import configure_logging

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process dies")
    for name, text in flags:
        parser.add_argument(name, action="store_true", help=text)
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        become_child(args.parent_pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us (on_interrupt)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    # Below the proxy (a child of it); a settings file that cannot be read stops it above anyway.
    priority = lower_cpu_priority(settings.children_cpu) if args.parent_pid is not None else None
    configure_logging(settings.log_format, settings.log_level, stream=sys.stderr)
    if priority is not None:
        structlog.get_logger(prog).debug("child process", pid=os.getpid(), cpu_priority=priority)
    return args, settings


class ChildProcess:
    """The proxy's side of one child: spawn it, read its report lines, restart it with backoff
    when it dies, stop it by closing its stdin (it finishes and exits) or kill it if stuck.

    Subclasses say which module runs, what a report line means and what to do on each spawn
    and death; this class holds the life cycle both children share."""

    module = ""  # run as `python -m <module>`
    name = ""  # in the log lines: <name>.spawned, <name>.died
    died_hint = ""  # what waits while it is down, for the died line
    stdout_limit = 64 << 10  # asyncio's default line limit
    stop_timeout_s = 15.0  # after its stdin closes, until it is killed
    reports_s = 0.0  # after it exits, how long its last report lines are read

    def __init__(self, config_path, args: tuple[str, ...] = ()) -> None:
        self.config_path = str(config_path)
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def start_supervising(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=self.name)

    async def _supervise(self) -> None:
        log = structlog.get_logger(self.module)
        backoff = 1.0
        while not self._stopping:
            self.proc = proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, "--config", self.config_path, "--parent-pid", str(os.getpid()),
                *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=self.stdout_limit)
            log.info(f"{self.name}.spawned", pid=proc.pid)
            self.spawned()
            assert proc.stdout is not None  # spawned with stdout=PIPE
            async for line in proc.stdout:
                self.report(line)
                backoff = 1.0
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            self.died()
            log.error(f"{self.name}.died: restarting; {self.died_hint}", returncode=code, retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def spawned(self) -> None:
        """A new process runs (its counters start from zero)."""

    def report(self, line: bytes) -> None:
        """One line the child wrote on its stdout."""

    def died(self) -> None:
        """The process exited while it should run."""

    async def stop(self) -> None:
        """Close its stdin (it finishes what it holds and exits); kill it if stuck past
        `stop_timeout_s`. Then read its last reports for up to `reports_s`."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        task = self._task
        if task is None:
            return
        if self.reports_s > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.reports_s)
                return
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
