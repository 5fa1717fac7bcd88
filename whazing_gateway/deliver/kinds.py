"""The one interface of the two sender kinds: `Sender` in the proxy's process and
`WorkerProcess`, which runs a Sender in a child process. The pipeline and the services use
only this, so `delivery.worker: process | inline` changes nothing else."""

from __future__ import annotations

from typing import Callable, Protocol

# (delivery_id, target, outcome, detail); outcome in delivered | retry | dead.
OutcomeHook = Callable[[str, str, str, str], None]


class DeliverySender(Protocol):
    """Sends what the outbox holds, from `start()` until `stop()`."""

    on_outcome: OutcomeHook | None

    async def start(self) -> None: ...

    def wake(self) -> None:
        """A hint that new work was put; never blocks, never raises."""
        ...

    async def stop(self) -> None:
        """Let in-flight work finish (bounded), then stop; what is left stays in the outbox."""
        ...
