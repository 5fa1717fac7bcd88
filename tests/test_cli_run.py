"""`whazing-gateway run` as an operator lives with it: broken rules at start (keep running,
route nothing, say so once; the hot reload picks up the fix), /readyz showing the current
state, and the gateway's own words on shutdown. A real gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.echo_upstream import start_echo
from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Receiver, free_port
from whazing_gateway.outbox.sqlite import SqliteOutbox

pytestmark = pytest.mark.slow


async def readyz(gw: GatewayProcess) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.metrics_url + "/readyz") as r:
            return r.status, await r.json()


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    """A live upstream: /readyz counts an unreachable one as not ready."""
    runner, url = await start_echo()
    try:
        yield url
    finally:
        await runner.cleanup()


def events(gw: GatewayProcess, name: str) -> list[dict]:
    return [r for r in gw.log_records() if r.get("event") == name]


async def test_broken_rules_at_start_keep_running_routing_nothing_until_fixed(tmp_path):
    async with Receiver() as rx, upstream() as up:
        gw = GatewayProcess(tmp_path, up, "targets: [unclosed\n",
                            settings="rules_reload_s: 0.2\nobserver: {enabled: false}\n")
        await gw.start()
        try:
            await asyncio.sleep(2.0)  # mitmproxy's startup error check is long over
            assert gw.proc.poll() is None, gw.log()
            assert "Error logged during startup" not in gw.log()
            refused = events(gw, "rules refused at start")
            assert len(refused) == 1 and refused[0]["line"] >= 1, refused  # once: not by the delivery worker
            nothing = events(gw, "rules: no rules that loaded before: nothing is routed until the files are fixed")
            assert len(nothing) == 1, nothing
            assert len(events(gw, "gateway started")) == 1
            await wait_until(lambda: events(gw, "pipeline.started"), 20, what="the pipeline process")
            assert events(gw, "pipeline.started")[0]["targets"] == 0  # routing nothing
            (gw.workdir / "rules" / "test.yaml").write_text(rules_yaml(rx.url()))
            await wait_until(lambda: events(gw, "rules.reloaded"), 20, what="the fixed rules reloaded")
            assert gw.proc.poll() is None
        finally:
            code = await gw.stop()
        assert code == 0, gw.log()


async def test_run_logs_its_own_shutdown(tmp_path):
    async with Receiver() as rx, upstream() as up:
        gw = GatewayProcess(tmp_path, up, rules_yaml(rx.url()),
                            settings="observer: {enabled: false}\n")
        await gw.start()
        await wait_until(lambda: events(gw, "pipeline.started"), 20, what="the pipeline process")
        code = await gw.stop(signal.SIGTERM)
        assert code == 0, gw.log()
        # The pipeline process stopped once it had read the journal to the end, not when its
        # drain timeout (10 s, docker stop's whole grace period) ran out.
        assert [r["ended"] for r in events(gw, "pipeline.stopped")] == ["drained"]
        names = [r.get("event") for r in gw.log_records()]
        assert "gateway stopping" in names and "gateway stopped" in names
        assert names.index("gateway stopping") < names.index("gateway stopped")
        stopped = events(gw, "gateway stopped")[0]
        assert stopped["observations_drained"] == 0 and stopped["deliveries_pending"] == 0
        assert "took_s" in stopped


async def test_readyz_shows_the_current_outbox_state_not_an_old_error(tmp_path):
    """The outbox fails (its file is locked by another writer), then works again: /readyz says
    so while it fails and shows no old error text once it works."""
    import sqlite3

    from whazing_gateway.config import load_settings
    from whazing_gateway.pipeline.services import Services

    gw = GatewayProcess(tmp_path, f"http://127.0.0.1:{free_port()}", "targets: []\n",
                        settings="observer: {enabled: false}\ndelivery: {worker: inline}\n"
                                 "proxy: {pipeline: inline}\n")
    settings = load_settings(gw.config)
    services = Services(settings)
    await services.start()
    try:
        outbox = services.outbox
        assert isinstance(outbox, SqliteOutbox)
        blocker = sqlite3.connect(outbox.path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(Exception):
                await outbox.put([_delivery()])
            _, body = await readyz(gw)
            assert body["checks"]["outbox"]["ok"] is False and "locked" in body["checks"]["outbox"]["detail"]
        finally:
            blocker.rollback()
            blocker.close()
        await outbox.put([_delivery()])
        _, body = await readyz(gw)
        assert body["checks"]["outbox"] == {"ok": True, "detail": "ok"}
        assert "locked" not in (outbox.last_error or "") and "locked" in (outbox.previous_error or "")
    finally:
        await services.stop()


def _delivery():
    import time

    from whazing_gateway import model

    return model.Delivery(id=f"msg_{time.time_ns()}", target="t", event_id="e", event_type=model.TICKET_CREATED,
                          order_key=None, body=b"{}", created_at=time.time(), ticket_id=1)


async def test_ctrl_c_stops_the_children_in_order_without_a_died_line(tmp_path):
    """A terminal's Ctrl-C reaches the gateway and both children at once (one process group).
    The children leave stopping to the gateway: no 'died: restarting' on a clean Ctrl-C."""
    async with Receiver() as rx, upstream() as up:
        gw = GatewayProcess(tmp_path, up, rules_yaml(rx.url()),
                            settings="observer: {enabled: false}\n")
        await gw.start()
        try:
            await wait_until(lambda: events(gw, "pipeline.started") and events(gw, "deliver_worker.started"), 20,
                             what="both children")
            children = [events(gw, "pipeline.spawned")[0]["pid"], events(gw, "deliver_worker.spawned")[0]["pid"]]
            for pid in children:  # the children first: the order that raced the gateway's own stop
                os.kill(pid, signal.SIGINT)
            await asyncio.sleep(0.5)
            assert not [r for r in gw.log_records() if ".died" in str(r.get("event"))], gw.log()
        finally:
            code = await gw.stop(signal.SIGINT)
        assert code == 0, gw.log()
        names = [str(r.get("event")) for r in gw.log_records()]
        assert not [n for n in names if ".died" in n], gw.log()
        assert [r["ended"] for r in events(gw, "pipeline.stopped")] == ["drained"]
        assert "deliver_worker.stopped" in names and "gateway stopped" in names
        assert len(events(gw, "pipeline.spawned")) == len(events(gw, "deliver_worker.spawned")) == 1
