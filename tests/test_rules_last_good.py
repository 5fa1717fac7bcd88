"""A gateway (re)started while a rules file is broken routes with the last rules that loaded.

A refused hot reload keeps the rules in force; a process that starts while a file is broken
had nothing to keep: a delivery worker restarted at that moment held every accepted delivery
back ("no such target in the rules") until the file was fixed. A CI run saw exactly that (0 of
31 webhooks in 90 s) when a test's broken 50 MB rules file was already there as the worker
started. Real gateway processes, a real receiver, frames through a real websocket."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.echo_upstream import build_app
from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Receiver
from tests.test_hostile_input import _created
from whazing_gateway.config import last_good


async def _send_created(gw: GatewayProcess, ticket_id: int) -> None:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(gw.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        frame = _created(ticket_id)
        await ws.send_str(frame)
        echoed = await asyncio.wait_for(ws.receive(), 30)
        assert echoed.data == frame
        await ws.close()


@pytest.mark.slow
async def test_a_start_with_broken_rules_routes_with_the_last_that_loaded(tmp_path):
    runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    receiver = await Receiver().start()
    try:
        first = await GatewayProcess(tmp_path, upstream, rules_yaml(receiver.url())).start()
        try:
            await wait_until(lambda: any(r.get("event") == "pipeline.started" for r in first.log_records()), 30,
                             what="the first gateway's pipeline")
            await _send_created(first, 1)
            await receiver.wait_for(1, timeout=30)
        finally:
            await first.stop()
        assert (tmp_path / "data" / last_good.SNAPSHOT).stat().st_mode & 0o777 == 0o600

        # the same gateway started again, its rules file now broken
        second = GatewayProcess(tmp_path, upstream, "targets: [unclosed\n")
        second.log_path = tmp_path / "second.log"
        await second.start()
        try:
            await wait_until(lambda: any(r.get("event") == "pipeline.started" for r in second.log_records()), 30,
                             what="the second gateway's pipeline")
            records = second.log_records()
            assert any(r.get("event") == "rules refused at start" for r in records)
            assert any(r.get("event", "").startswith("rules: routing with the last rules that loaded") for r in records)
            assert [r["targets"] for r in records if r.get("event") == "pipeline.started"] == [1]
            await _send_created(second, 2)
            await receiver.wait_for(2, timeout=30)  # delivered by a worker that started with broken files
            assert not [r for r in second.log_records() if r.get("event") == "deliver.target_missing"]
        finally:
            await second.stop()
    finally:
        await receiver.stop()
        await runner.cleanup()
