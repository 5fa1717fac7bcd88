"""What every child process of the gateway (pipeline process, delivery worker) does first.

Both are spawned by the proxy's process with `--parent-pid`: they must not outlive it (kill -9
included), and they must never take the CPU from the proxy when both want it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

NICE = 10  # where SCHED_IDLE is refused: still below the proxy


def lower_cpu_priority() -> str:
    """The proxy's traffic first: the children take CPU the proxy leaves idle.

    SCHED_IDLE (Linux) rather than nice 10: an idle-class task gives way as soon as the proxy
    wakes for a frame (ws-worst on 2 cores, back to back: 0.70x of plain mitmdump at nice 10,
    0.80x idle). It still gets a small share, so a machine that stays busy slows the children
    without stopping them (records wait in the journal). Threads started afterwards inherit it.
    Returns what was set, for the log."""
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


def become_child(parent_pid: int) -> str:
    """SIGTERM when the parent dies (Linux), and a lower CPU priority than the proxy's.

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
    return lower_cpu_priority()


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
    priority = become_child(args.parent_pid) if args.parent_pid is not None else None
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    configure_logging(settings.log_format, settings.log_level, stream=sys.stderr)
    if priority is not None:
        import structlog

        structlog.get_logger(prog).debug("child process", pid=os.getpid(), cpu_priority=priority)
    return args, settings
