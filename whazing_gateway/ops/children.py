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

NICE = 10  # the proxy's traffic first: a saturated machine slows the children, not the agents


def become_child(parent_pid: int) -> None:
    """SIGTERM when the parent dies (Linux), and a lower CPU priority than the proxy.

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
    try:
        os.nice(NICE)
    except OSError:
        pass


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
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    configure_logging(settings.log_format, settings.log_level, stream=sys.stderr)
    return args, settings
