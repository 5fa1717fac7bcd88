"""What every child process of the gateway (pipeline process, delivery worker) does first.

Both are spawned by the proxy's process with `--parent-pid`: they must not outlive it (kill -9
included), and they must never take the CPU from the proxy when both want it.
"""

from __future__ import annotations

import os
import signal

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
