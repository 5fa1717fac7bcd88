"""The side port: /metrics scraped over real HTTP, /healthz, /readyz with real checks."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from whazing_gateway.ops import metrics
from whazing_gateway.ops.server import OpsServer, directory_writable, run_check, tcp_listening


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
async def ops():
    server = OpsServer("127.0.0.1", 0)
    await server.start()
    yield server
    await server.stop()


async def scrape(http, server) -> dict[tuple[str, tuple], float]:
    async with http.get(server.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_metrics_scrape_reflects_increments(http, ops):
    before = await scrape(http, ops)
    metrics.EVENTS.labels(type="ticket.created").inc()
    metrics.EVENTS.labels(type="ticket.created").inc()
    metrics.EVENTS.labels(type="message.received").inc(3)
    metrics.DELIVERY_ATTEMPTS.labels(target="ops-test", outcome="retry").inc()
    metrics.DELIVERY_ATTEMPTS.labels(target="ops-test", outcome="success").inc()
    metrics.DELIVERIES_DONE.labels(target="ops-test", outcome="dead").inc()
    metrics.DEAD_LETTERS.labels(target="ops-test").inc()
    metrics.DECODE_ERRORS.labels(kind="socket").inc()
    metrics.DELIVERY_LATENCY.labels(target="ops-test").observe(0.03)
    metrics.DELIVERY_LATENCY.labels(target="ops-test").observe(2.0)
    metrics.OUTBOX_PENDING.set(17)
    after = await scrape(http, ops)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("whazing_gateway_events_total", type="ticket.created") == 2
    assert delta("whazing_gateway_events_total", type="message.received") == 3
    assert delta("whazing_gateway_delivery_attempts_total", target="ops-test", outcome="retry") == 1
    assert delta("whazing_gateway_deliveries_total", target="ops-test", outcome="dead") == 1
    assert delta("whazing_gateway_dead_letters_total", target="ops-test") == 1
    assert delta("whazing_gateway_decode_errors_total", kind="socket") == 1
    assert delta("whazing_gateway_delivery_latency_seconds_count", target="ops-test") == 2
    assert delta("whazing_gateway_delivery_latency_seconds_bucket", target="ops-test", le="0.05") == 1
    assert delta("whazing_gateway_delivery_latency_seconds_bucket", target="ops-test", le="+Inf") == 2
    assert after[("whazing_gateway_outbox_pending", ())] == 17
    assert delta("whazing_gateway_delivery_latency_seconds_sum", target="ops-test") == pytest.approx(2.03)


def _child_rows(observed: list[float], target: str) -> list[list]:
    """What a delivery worker reports of its latency histogram after `observed` (cumulative)."""
    child = Histogram("whazing_gateway_delivery_latency_seconds", "child", ["target"], registry=None,
                      buckets=metrics.LATENCY_BUCKETS)
    for v in observed:
        child.labels(target=target).observe(v)
    rows = []
    for family in child.collect():
        rows += [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created") and s.value]
    rows.append(["whazing_gateway_deliveries", {"target": target, "outcome": "delivered"}, float(len(observed))])
    return rows


async def test_a_childs_histograms_and_counters_add_to_this_process_scrape(http, ops):
    """The delivery worker times deliveries; /metrics here shows its observations added to this
    process's own, applied once each, and still rising after the worker restarts from zero."""
    before = await scrape(http, ops)
    metrics.DELIVERY_LATENCY.labels(target="mirror-test").observe(0.02)  # this process's own
    mirror = metrics.Mirror()
    mirror.apply(_child_rows([0.003, 0.2], "mirror-test"))
    mirror.apply(_child_rows([0.003, 0.2, 4.0], "mirror-test"))  # cumulative: only 4.0 is new
    mirror.apply(_child_rows([0.003, 0.2, 4.0], "mirror-test"))  # nothing new
    mirror.reset()  # a new worker counts from zero
    mirror.apply(_child_rows([0.04], "mirror-test"))
    mirror.apply(_child_rows([0.001], "mirror-new"))  # a target only a child has seen
    after = await scrape(http, ops)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    name = "whazing_gateway_delivery_latency_seconds"
    assert delta(name + "_count", target="mirror-test") == 5
    assert delta(name + "_sum", target="mirror-test") == pytest.approx(0.02 + 0.003 + 0.2 + 4.0 + 0.04)
    assert delta(name + "_bucket", target="mirror-test", le="0.005") == 1
    assert delta(name + "_bucket", target="mirror-test", le="0.05") == 3
    assert delta(name + "_bucket", target="mirror-test", le="0.25") == 4
    assert delta(name + "_bucket", target="mirror-test", le="+Inf") == 5
    assert delta("whazing_gateway_deliveries_total", target="mirror-test", outcome="delivered") == 4
    assert delta(name + "_count", target="mirror-new") == 1
    assert delta(name + "_bucket", target="mirror-new", le="0.005") == 1


async def test_metrics_openmetrics_negotiation(http, ops):
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(ops.url + "/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).rstrip().endswith("# EOF")


async def test_healthz_and_index(http, ops):
    async with http.get(ops.url + "/healthz") as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "ok" and body["uptime_s"] >= 0
    async with http.get(ops.url + "/") as r:
        assert "/readyz" in await r.text()
    async with http.get(ops.url + "/nope") as r:
        assert r.status == 404


async def test_port_zero_picks_a_real_port_and_busy_port_fails():
    a = OpsServer("127.0.0.1", 0)
    await a.start()
    try:
        assert a.port > 0
        with socket.create_connection(("127.0.0.1", a.port), timeout=10):
            pass
        b = OpsServer("127.0.0.1", a.port)
        with pytest.raises(OSError):
            await b.start()
    finally:
        await a.stop()
    await a.stop()  # idempotent


async def _listening_app():
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_readyz_proxy_and_outbox_checks(http, tmp_path):
    runner, proxy_port = await _listening_app()
    outbox_dir = tmp_path / "data"
    server = OpsServer("127.0.0.1", 0, readiness={
        "proxy": tcp_listening("0.0.0.0", proxy_port),
        "outbox": directory_writable(outbox_dir),
    })
    await server.start()
    try:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
            body = await r.json()
        assert body["status"] == "ready"
        assert body["checks"]["proxy"]["ok"] and body["checks"]["outbox"]["ok"]
        assert outbox_dir.is_dir() and list(outbox_dir.iterdir()) == []  # probe file cleaned up

        await runner.cleanup()  # the proxy stops listening
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503
            body = await r.json()
        assert body["status"] == "not ready"
        assert body["failing"] == ["proxy"]
        assert "refused" in body["checks"]["proxy"]["detail"]

        # An outbox directory that cannot exist (its parent is a file): both fail.
        (tmp_path / "afile").write_text("x")
        server.add_check("outbox", directory_writable(tmp_path / "afile" / "data"))
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503
            body = await r.json()
        assert sorted(body["failing"]) == ["outbox", "proxy"]
        assert "afile" in body["checks"]["outbox"]["detail"]

        server.remove_check("proxy")
        server.remove_check("outbox")
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
    finally:
        await server.stop()


async def test_readyz_check_forms(http):
    async def slow():
        await asyncio.sleep(30)
        return True

    def boom():
        raise RuntimeError("outbox closed")

    server = OpsServer("127.0.0.1", 0, check_timeout=0.3, readiness={
        "plain_true": lambda: True,
        "tuple_ok": lambda: (True, "fine"),
        "plain_false": lambda: False,
        "tuple_bad": lambda: (False, "redis down"),
        "raises": boom,
        "slow": slow,
    })
    await server.start()
    try:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503
            body = await r.json()
    finally:
        await server.stop()
    assert sorted(body["failing"]) == ["plain_false", "raises", "slow", "tuple_bad"]
    assert body["checks"]["tuple_ok"] == {"ok": True, "detail": "fine"}
    assert body["checks"]["tuple_bad"]["detail"] == "redis down"
    assert body["checks"]["raises"]["detail"] == "RuntimeError: outbox closed"
    assert "timed out" in body["checks"]["slow"]["detail"]


async def test_tcp_listening_with_port_not_known_yet():
    port = {"value": None}
    check = tcp_listening("127.0.0.1", lambda: port["value"])
    assert await run_check(check) == (False, "not bound yet")
    runner, p = await _listening_app()
    try:
        port["value"] = p
        ok, detail = await run_check(check)
        assert ok and detail.endswith(f":{p}")
    finally:
        await runner.cleanup()
