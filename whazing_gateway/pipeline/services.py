"""The gateway's services for the life of one proxy: journal, pipeline process, sender, side port.

Kept out of the mitmproxy addon so `replay`, the demo and tests assemble the same pieces.
Start order follows the data path backwards (outbox before the pipeline that writes to it);
stop order drains forwards (pipeline, then sender, then outbox).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import structlog

from whazing_gateway.config import Settings
from whazing_gateway.config.reload import initial_rules, register_rule_secrets
from whazing_gateway.deliver.kinds import DeliverySender
from whazing_gateway.deliver.sender import Sender
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.ops.files import private_dir
from whazing_gateway.pipeline.core import Pipeline, Result
from whazing_gateway.pipeline.journal import JournalWriter
from whazing_gateway.upstream.media import MediaFetcher
from whazing_gateway.route.router import Router
from whazing_gateway.state import open_state

if TYPE_CHECKING:
    from whazing_gateway.config.reload import RulesWatcher
    from whazing_gateway.edge.observer import CatchUp, Observer
    from whazing_gateway.ops.server import OpsServer

log = structlog.get_logger(__name__)


class Services:
    """What runs beside the proxy. With a config file (`whazing-gateway run`, `mitmdump -s`):
    the hooks feed the journal (`feed`), the pipeline runs in its own process and the sender in
    the delivery worker. Without one (embedded, tests): the same stages run in this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_result: Callable[[dict], None] | None = None,
        on_delivery: Callable[[str, str, str, str], None] | None = None,
    ) -> None:
        from whazing_gateway.outbox import open_outbox

        self.settings = settings
        # The child reads the same gateway.yaml: without a file (tests, replay) the pipeline runs here.
        self.child_mode = settings.config_path is not None and settings.pipeline == "process"
        worker = settings.delivery_worker == "process" and settings.config_path is not None
        self.router: Router | None = None
        self.outbox = None
        self.pipeline: Pipeline | None = None
        self.pipeline_process = None
        # The inference's state. With a pipeline process, this process still reads it (and keeps the
        # catch-up watermark in it): what was known before a restart tells the catch-up what changed.
        self.state = open_state(settings)
        # With the pipeline here, the router's own state (queue integrations) goes through the
        # inference's batch, so a record that fails or is refused undoes it too. Otherwise this
        # process's router only names the targets for the sender.
        self.inferrer = None if self.child_mode else Inferrer(self.state)
        if not self.child_mode or not worker:  # this process routes or sends: it needs the rules
            router_state = self.inferrer.uncommitted if self.inferrer is not None else self.state
            self.router = Router(initial_rules(settings), router_state, MediaFetcher.from_settings(settings))
            local = settings
            if self.child_mode and settings.storage_backend == "redis":  # the child has data_dir's spool
                local = dataclasses.replace(settings, data_dir=Path(settings.data_dir) / "sender")
            self.outbox = open_outbox(local)
        from whazing_gateway.deliver.worker import WorkerProcess

        self.sender: DeliverySender
        if worker:
            self.sender = WorkerProcess(settings.config_path)
        else:
            router = self.router
            assert router is not None and self.outbox is not None
            self.sender = Sender(self.outbox, lambda: router.rules.targets, per_ticket_order=settings.per_ticket_order)
        self.sender.on_outcome = on_delivery
        self.feed: JournalWriter | Pipeline
        if self.child_mode:
            from whazing_gateway.pipeline.child import PipelineProcess, journal_dir

            self.feed = JournalWriter(journal_dir(settings), max_bytes=settings.journal_max_bytes)
            self.pipeline_process = PipelineProcess(settings.config_path, annotate=on_result is not None,
                                                    on_result=on_result, wake=self.sender.wake)
        else:
            assert self.router is not None and self.outbox is not None and self.inferrer is not None
            notes = on_result

            def summarized(result: Result) -> None:
                if notes is not None:
                    notes(result.summary())

            self.pipeline = Pipeline(self.inferrer, self.router.route, self.outbox.put,
                                     json_limit=settings.inspect_max_bytes,
                                     on_result=summarized if on_result is not None else None,
                                     wake=self.sender.wake)
            self.feed = self.pipeline
        self.ops: OpsServer | None = None
        self.watcher: RulesWatcher | None = None
        self.observer: Observer | None = None
        self.catchup: CatchUp | None = None
        self._start_task: asyncio.Task | None = None

    def start_soon(self) -> None:
        """From a sync hook (mitmproxy's `running`): the feed accepts records at once."""
        if isinstance(self.feed, JournalWriter) and not self.feed.started:
            self.feed.start()
        self._start_task = asyncio.get_running_loop().create_task(self.start())

    def queued(self) -> int:
        """Records handed off by the hooks and not yet where they are safe (the journal's file,
        or, with an inline pipeline, the outbox)."""
        if isinstance(self.feed, JournalWriter):
            return self.feed.buffered
        return self.feed.queue.qsize()

    def outbox_health(self) -> tuple[bool, str]:
        if self.pipeline_process is not None:
            return self.pipeline_process.health()
        assert self.outbox is not None
        return self.outbox.healthy, self.outbox.last_error or "ok"

    async def start(self) -> None:
        s = self.settings
        private_dir(s.data_dir)  # 0700 before anything is written in it
        if self.outbox is not None:
            try:
                await self.outbox.open()
            except Exception as exc:  # the proxy keeps passing traffic; /readyz says why
                log.error("outbox could not be opened: events are inferred but not accepted", error=repr(exc))
        await self.sender.start()  # a worker process is spawned and supervised by a task
        from whazing_gateway.infer.catchup import WATERMARK_KEY

        try:  # load the persisted state before the pipeline process writes anything new to it
            await self.state.get(WATERMARK_KEY)
        except Exception as exc:  # Redis down: the catch-up retries on its own
            log.warning("state not readable at start", error=repr(exc))
        if self.pipeline_process is not None:
            if isinstance(self.feed, JournalWriter) and not self.feed.started:
                self.feed.start()
            self.pipeline_process.start()
        elif self.pipeline is not None:
            self.pipeline.start()
        if s.metrics_port:
            from whazing_gateway.ops.server import OpsServer, directory_writable, tcp_listening, upstream_reachable

            self.ops = ops = OpsServer(s.metrics_host, s.metrics_port)
            ops.add_check("proxy", tcp_listening("127.0.0.1" if s.listen_host in ("0.0.0.0", "::", "") else s.listen_host, s.listen_port))
            ops.add_check("upstream", upstream_reachable(s.upstream))
            ops.add_check("outbox", self.outbox_health)
            ops.add_check("data_dir", directory_writable(s.data_dir))
            try:
                await ops.start()
            except OSError as exc:
                log.error("metrics port unavailable", port=s.metrics_port, error=str(exc))
                self.ops = None
        if s.rules_reload_s and self.router is not None:
            from whazing_gateway.config.reload import RulesWatcher

            self.watcher = watcher = RulesWatcher(self.router, s.rules_dir, settings=s, interval_s=s.rules_reload_s,
                                                  on_reload=register_rule_secrets)
            watcher.start()
        from whazing_gateway.edge.observer import CatchUp, Observer

        self.observer = Observer.from_settings(s)
        if self.observer is not None:
            self.observer.start()
        # what changed while we were away, fed to the pipeline like any pushed frame
        pipeline_process = self.pipeline_process
        ready = (lambda: pipeline_process.reported) if pipeline_process is not None else (lambda: True)
        self.catchup = CatchUp.from_settings(s, self.state, self.feed.submit, self.observer, ready=ready)
        if self.catchup is not None:
            self.catchup.start()
        log.info("gateway started", upstream=s.upstream, listen=f"{s.listen_host}:{s.listen_port}",
                 storage=s.storage_backend,
                 pipeline="own process" if self.pipeline_process is not None else "in the proxy",
                 observer="on" if self.observer else "off (no credentials: browser traffic only)")

    async def stop(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            await self._start_task
        if self.catchup is not None:
            await self.catchup.stop()
        if self.observer is not None:
            await self.observer.stop()
        if self.watcher is not None:
            await self.watcher.stop()
        if isinstance(self.feed, JournalWriter):
            await asyncio.to_thread(self.feed.stop)  # every buffered record to the journal...
        if self.pipeline_process is not None:
            await self.pipeline_process.stop()  # ...which the pipeline process reads, then stops
        if self.pipeline is not None:
            await self.pipeline.stop()
        await self.sender.stop()
        if self.ops is not None:
            await self.ops.stop()
        if self.outbox is not None:
            await self.outbox.close()
        close_state = getattr(self.state, "close", None)
        if close_state is not None:  # the persisted state's last writes
            await close_state()
