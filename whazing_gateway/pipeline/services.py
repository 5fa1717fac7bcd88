"""The gateway's services for the life of one proxy: state, pipeline, outbox, sender, side port.

Kept out of the mitmproxy addon so `replay`, the demo and tests assemble the same pieces.
Start order follows the data path backwards (outbox before the pipeline that writes to it);
stop order drains forwards (pipeline, then sender, then outbox).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Callable

import structlog

from whazing_gateway.config import Settings
from whazing_gateway.config.reload import initial_rules, register_rule_secrets
from whazing_gateway.deliver.kinds import DeliverySender
from whazing_gateway.deliver.sender import Sender
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.pipeline.core import Pipeline, Result
from whazing_gateway.route.router import Router
from whazing_gateway.state.memory import MemoryState

if TYPE_CHECKING:
    from whazing_gateway.config.reload import RulesWatcher
    from whazing_gateway.edge.observer import Observer
    from whazing_gateway.ops.server import OpsServer

log = structlog.get_logger(__name__)


def make_state(settings: Settings):
    if settings.storage_backend == "redis":
        from whazing_gateway.state.redis import RedisState, redis_client

        assert settings.redis_url, "storage.redis.url is required with the redis backend (checked by the config)"
        return RedisState(redis_client(settings.redis_url), settings.redis_prefix)
    return MemoryState()


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        on_result: Callable[[Result], None] | None = None,
        on_delivery: Callable[[str, str, str, str], None] | None = None,
    ) -> None:
        from whazing_gateway.outbox import open_outbox

        self.settings = settings
        self.state = make_state(settings)
        self.router = Router(initial_rules(settings), self.state)
        self.inferrer = Inferrer(self.state)
        self.outbox = open_outbox(settings)
        self.sender: DeliverySender
        if settings.delivery_worker == "process" and settings.config_path is not None:
            from whazing_gateway.deliver.worker import WorkerProcess

            self.sender = WorkerProcess(settings.config_path)
        else:
            self.sender = Sender(self.outbox, lambda: self.router.rules.targets,
                                 per_ticket_order=settings.per_ticket_order)
        self.sender.on_outcome = on_delivery
        self.pipeline = Pipeline(self.inferrer, self.router.route, self.outbox.put,
                                 json_limit=settings.inspect_max_bytes, on_result=on_result,
                                 wake=self.sender.wake)
        self.ops: OpsServer | None = None
        self.watcher: RulesWatcher | None = None
        self.observer: Observer | None = None
        self._start_task: asyncio.Task | None = None

    def start_soon(self) -> None:
        """From a sync hook (mitmproxy's `running`): the queue accepts records at once."""
        self._start_task = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        s = self.settings
        os.makedirs(s.data_dir, exist_ok=True)
        try:
            await self.outbox.open()
        except Exception as exc:  # the proxy keeps passing traffic; /readyz says why
            log.error("outbox could not be opened: events are inferred but not accepted", error=repr(exc))
        await self.sender.start()  # a worker process is spawned and supervised by a task
        self.pipeline.start()
        if s.metrics_port:
            from whazing_gateway.ops.server import OpsServer, directory_writable, tcp_listening

            self.ops = ops = OpsServer(s.metrics_host, s.metrics_port)
            ops.add_check("proxy", tcp_listening("127.0.0.1" if s.listen_host in ("0.0.0.0", "::", "") else s.listen_host, s.listen_port))
            ops.add_check("outbox", lambda: (self.outbox.healthy, self.outbox.last_error or "ok"))
            ops.add_check("data_dir", directory_writable(s.data_dir))
            try:
                await ops.start()
            except OSError as exc:
                log.error("metrics port unavailable", port=s.metrics_port, error=str(exc))
                self.ops = None
        if s.rules_reload_s:
            from whazing_gateway.config.reload import RulesWatcher

            self.watcher = watcher = RulesWatcher(self.router, s.rules_dir, settings=s, interval_s=s.rules_reload_s,
                                                  on_reload=register_rule_secrets)
            watcher.start()
        from whazing_gateway.edge.observer import Observer

        self.observer = Observer.from_settings(s)
        if self.observer is not None:
            self.observer.start()
        log.info("gateway started", upstream=s.upstream, listen=f"{s.listen_host}:{s.listen_port}",
                 storage=s.storage_backend, targets=len(self.router.rules.targets),
                 observer="on" if self.observer else "off (no credentials: browser traffic only)")

    async def stop(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            await self._start_task
        if self.observer is not None:
            await self.observer.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        await self.pipeline.stop()
        await self.sender.stop()
        if self.ops is not None:
            await self.ops.stop()
        await self.outbox.close()
