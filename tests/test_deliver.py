"""The Sender against real aiohttp receivers on loopback, working from a real sqlite outbox."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import pytest
from standardwebhooks import Webhook

from whazing_gateway import __version__, model
from whazing_gateway.deliver import signing
from whazing_gateway.deliver.sender import Sender
from whazing_gateway.ops import metrics
from whazing_gateway.outbox.base import DEAD, DELIVERED, PENDING
from whazing_gateway.outbox.sqlite import SqliteOutbox

try:
    from tests.receivers import Hang, Receiver, Reply
except ImportError:  # pragma: no cover - run from inside tests/
    from receivers import Hang, Receiver, Reply

FAST = (0, 0.05, 0.05, 0.05, 0.05)


def delivery(i: int, target: str = "t", order_key: str | None = None, body: dict | None = None) -> model.Delivery:
    payload = body if body is not None else {"i": i, "messageBody": "Olá"}
    return model.Delivery(
        id=model.Delivery.make_id(f"evt_{order_key}_{i}", target), target=target, event_id=f"evt_{i}",
        event_type=model.MESSAGE_RECEIVED, order_key=order_key,
        body=json.dumps(payload, separators=(",", ":")).encode(), created_at=time.time(), ticket_id=i,
    )


class Rig:
    """An outbox + Sender whose targets can be changed by the test (as a rules reload would)."""

    def __init__(self, tmp_path, **sender_kw):
        self.outbox = SqliteOutbox(tmp_path / "outbox.db")
        self.targets: dict[str, model.Target] = {}
        self.sender = Sender(self.outbox, lambda: self.targets, poll_interval=0.05,
                             housekeeping_s=0.1, **sender_kw)
        self.outcomes: list[tuple[str, str, str, str]] = []
        self.sender.on_outcome = lambda *a: self.outcomes.append(a)

    def target(self, name: str = "t", **kw) -> model.Target:
        kw.setdefault("retry_schedule", FAST)
        self.targets[name] = model.Target(name=name, **kw)
        return self.targets[name]

    async def put(self, *deliveries: model.Delivery) -> None:
        await self.outbox.put(deliveries)
        self.sender.wake()

    async def wait_status(self, delivery_id: str, status: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            item, attempts = await self.outbox.get(delivery_id)
            if item.status == status:
                return item, attempts
            if time.monotonic() > deadline:
                raise AssertionError(f"{delivery_id} is {item.status} after {attempts}, expected {status}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    await r.outbox.open()
    await r.sender.start()
    yield r
    await r.sender.stop(timeout=1)
    await r.outbox.close()


async def test_headers_body_and_signature(rig):
    secret_old, secret_new = signing.new_secret(), signing.new_secret()
    async with Receiver() as rx:
        rig.target(url=rx.url("/webhook/whazing"), api_key="n8n-key", secrets=(secret_new, secret_old),
                   headers={"X-Tenant": "7", "content-type": "text/plain"})
        dl = delivery(1, body={"Type": "NewTicket", "ticket": {"id": 1}, "messageBody": "ação"})
        await rig.put(dl)
        (req,) = await rx.wait_for(1)
        await rig.wait_status(dl.id, DELIVERED)
    assert req.path == "/webhook/whazing"
    assert req.body == dl.body  # byte for byte
    h = req.headers
    assert h["Content-Type"] == "application/json"  # a target header cannot override it
    assert h["X-N8N-API-KEY"] == "n8n-key"
    assert h["X-Tenant"] == "7"
    assert h["User-Agent"] == f"whazing-gateway/{__version__}"
    assert h["webhook-id"] == dl.id
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 60
    assert len(h["webhook-signature"].split(" ")) == 2
    for secret in (secret_old, secret_new):  # the independent verifier, both rotation secrets
        assert Webhook(secret).verify(req.body, h)["ticket"]["id"] == 1
    assert rig.outcomes[-1][:3] == (dl.id, "t", "delivered")


async def test_no_key_no_secret_no_such_headers(rig):
    async with Receiver() as rx:
        rig.target(url=rx.url())
        await rig.put(delivery(1))
        (req,) = await rx.wait_for(1)
    assert "X-N8N-API-KEY" not in req.headers and "webhook-signature" not in req.headers
    assert req.headers["webhook-id"]


async def test_fails_n_times_then_delivered_with_the_same_webhook_id(rig):
    secret = signing.new_secret()
    async with Receiver(script=[500, 503, Reply(502)]) as rx:
        rig.target(url=rx.url(), secrets=(secret,))
        dl = delivery(1)
        await rig.put(dl)
        item, attempts = await rig.wait_status(dl.id, DELIVERED)
        reqs = rx.requests
    assert [r.webhook_id for r in reqs] == [dl.id] * 4
    for r in reqs:  # every retry is freshly signed and verifies
        Webhook(secret).verify(r.body, r.headers)
    assert [a.status_code for a in attempts] == [500, 503, 502, 200]
    assert [a.error for a in attempts] == ["HTTP 500", "HTTP 503", "HTTP 502", None]
    assert item.attempts == 4 and all(a.latency_ms >= 0 for a in attempts)


async def test_hanging_receiver_times_out_and_is_retried(rig):
    async with Receiver(script=[Hang(5)]) as rx:
        rig.target(url=rx.url(), timeout_ms=300)
        dl = delivery(1)
        await rig.put(dl)
        item, attempts = await rig.wait_status(dl.id, DELIVERED)
    assert attempts[0].status_code is None and "timeout" in attempts[0].error
    assert attempts[0].latency_ms >= 250
    assert attempts[1].status_code == 200


@pytest.mark.parametrize("as_date", [False, True])
async def test_429_honours_retry_after(rig, as_date):
    retry_after = email.utils.formatdate(time.time() + 3, usegmt=True) if as_date else "1"
    async with Receiver(script=[Reply(429, {"Retry-After": retry_after})]) as rx:
        # the schedule alone would wait an hour: Retry-After wins
        rig.target(url=rx.url(), retry_schedule=(0, 3600, 3600))
        dl = delivery(1)
        await rig.put(dl)
        await rig.wait_status(dl.id, DELIVERED, timeout=30)
        first, second = rx.requests
    assert second.at - first.at >= 0.9
    assert second.webhook_id == first.webhook_id == dl.id


async def test_500_forever_goes_to_dead_letters_after_the_schedule(rig):
    dead_before = metrics.REGISTRY.get_sample_value("whazing_gateway_dead_letters_total", {"target": "t"}) or 0
    async with Receiver(then=500) as rx:
        rig.target(url=rx.url(), retry_schedule=(0, 0.05, 0.05))
        dl = delivery(1)
        await rig.put(dl)
        item, attempts = await rig.wait_status(dl.id, DEAD)
    assert len(rx.requests) == 3 and len(attempts) == 3
    assert "schedule exhausted" in item.last_error
    assert metrics.REGISTRY.get_sample_value("whazing_gateway_dead_letters_total", {"target": "t"}) == dead_before + 1


@pytest.mark.parametrize("status", [400, 401, 422])
async def test_other_4xx_dead_letter_at_once(rig, status):
    async with Receiver(then=status) as rx:
        rig.target(url=rx.url())
        dl = delivery(1)
        await rig.put(dl)
        item, attempts = await rig.wait_status(dl.id, DEAD)
    assert len(rx.requests) == 1 and item.last_status == status


async def test_redirects_are_not_followed(rig):
    async with Receiver() as other, Receiver(then=Reply(302, {"Location": "/elsewhere"})) as rx:
        rig.target(url=rx.url())
        dl = delivery(1)
        await rig.put(dl)
        item, _ = await rig.wait_status(dl.id, DEAD)
    assert len(rx.requests) == 1 and other.requests == []
    assert "redirect" in item.last_error


async def test_404_is_retried_for_n8n_but_final_for_generic(rig):
    async with Receiver(script=[404, 404]) as n8n, Receiver(then=404) as generic:
        rig.target("n8n", url=n8n.url())  # kind defaults to n8n
        rig.target("gen", url=generic.url(), kind="generic")
        a, b = delivery(1, "n8n"), delivery(2, "gen")
        await rig.put(a, b)
        await rig.wait_status(a.id, DELIVERED)
        await rig.wait_status(b.id, DEAD)
    assert len(n8n.requests) == 3 and len(generic.requests) == 1


async def test_410_dead_letters_and_pauses_the_target_until_admin_retry(rig):
    async with Receiver(script=[410]) as rx:
        rig.target(url=rx.url())
        first, second = delivery(1), delivery(2)
        await rig.put(first)
        await rig.wait_status(first.id, DEAD)
        await rig.put(second)
        await asyncio.sleep(0.5)  # give a wrongly unpaused sender every chance to send
        assert len(rx.requests) == 1
        assert (await rig.outbox.get(second.id))[0].status == PENDING
        assert "t" in await rig.outbox.paused_targets()
        # the operator replays: `deliveries retry --target t` (see test_outbox_admin for the CLI)
        from whazing_gateway.outbox.admin import _run

        class Args:
            action, ids, target, event_type, status, since, until, limit, json = (
                "retry", [], "t", None, None, None, None, 100, True)

        class Out:
            text = ""

            def write(self, s):
                self.text += s

        out = Out()
        assert await _run(Args(), rig.outbox, out) == 0
        assert json.loads(out.text) == {"retried": 1, "resumed_targets": ["t"]}
        rig.sender.wake()
        await rig.wait_status(first.id, DELIVERED)
        await rig.wait_status(second.id, DELIVERED)


async def test_changing_the_url_of_a_paused_target_resumes_it(rig):
    async with Receiver(then=410) as gone, Receiver() as fresh:
        rig.target(url=gone.url())
        a, b = delivery(1), delivery(2)
        await rig.put(a)
        await rig.wait_status(a.id, DEAD)
        rig.target(url=fresh.url())  # a rules reload with a new URL
        await rig.put(b)
        await rig.wait_status(b.id, DELIVERED)


async def test_per_ticket_order_and_a_failing_ticket_holds_back_only_itself(rig):
    fails = {"n": 0}

    class Picky(Receiver):
        """Ticket A fails twice, everything else succeeds; records (body, status)."""

        async def _handle(self, request):
            from aiohttp import web

            body = await request.json()
            status = 200
            if body["ticket"] == "A" and fails["n"] < 2:
                fails["n"] += 1
                status = 500
            self.requests.append(_Rec(body, status))
            self._changed.set()
            return web.Response(status=status)

    async with Picky() as rx:
        rig.target(url=rx.url(), concurrency=8, retry_schedule=(0, 0.3, 0.3, 0.3))
        dls = []
        for i in range(5):
            for ticket in ("A", "B", "C"):
                dls.append(delivery(i, order_key=ticket, body={"ticket": ticket, "seq": i}))
        await rig.put(*dls)
        for dl in dls:
            await rig.wait_status(dl.id, DELIVERED)
    delivered = [r.body for r in rx.requests if r.status == 200]
    for ticket in ("A", "B", "C"):
        assert [b["seq"] for b in delivered if b["ticket"] == ticket] == [0, 1, 2, 3, 4]
    # B and C were not held back by A's failures: they finished before A's first success
    first_a_ok = next(i for i, b in enumerate(delivered) if b["ticket"] == "A")
    assert {b["ticket"] for b in delivered[:first_a_ok]} == {"B", "C"}
    assert len([b for b in delivered[:first_a_ok]]) == 10


class _Rec:
    def __init__(self, body, status):
        self.body, self.status = body, status


async def test_breaker_stops_hammering_a_failing_target(tmp_path):
    r = Rig(tmp_path, breaker_threshold=3, breaker_cooldown_s=60)
    await r.outbox.open()
    await r.sender.start()
    try:
        async with Receiver(then=500) as rx:
            r.target(url=rx.url(), concurrency=1, retry_schedule=(0, 0, 0, 0))
            await r.put(*[delivery(i) for i in range(10)])
            await rx.wait_for(3)
            deadline = time.monotonic() + 10
            while r.sender.breaker_state("t") != "open" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # nothing more while the breaker is open
                await asyncio.sleep(0.05)
            assert len(rx.requests) == 3
            assert r.sender.breaker_state("t") == "open"
            assert await r.outbox.pending_count() == 10
    finally:
        await r.sender.stop(timeout=1)
        await r.outbox.close()


async def test_breaker_half_open_probes_one_at_a_time_then_closes(tmp_path):
    r = Rig(tmp_path, breaker_threshold=2, breaker_cooldown_s=30)
    await r.outbox.open()
    await r.sender.start()
    try:
        async with Receiver(script=[500, 500]) as rx:
            r.target(url=rx.url(), concurrency=1, retry_schedule=(0, 0, 0, 0))
            dls = [delivery(i) for i in range(6)]
            await r.put(*dls)
            await rx.wait_for(2)
            deadline = time.monotonic() + 10
            while r.sender.breaker_state("t") != "open" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # while half-open only one may be in flight: the capacity says so
            r.target(url=rx.url(), concurrency=8, retry_schedule=(0, 0, 0, 0))
            caps, _ = r.sender._capacity(r.targets)
            assert caps["t"] == 0  # open
            breaker = r.sender._breakers["t"]
            breaker.open_until = 0  # cool-down over
            caps, _ = r.sender._capacity(r.targets)
            assert caps["t"] <= 1  # half-open: one probe
            for dl in dls:
                await r.wait_status(dl.id, DELIVERED)
            assert r.sender.breaker_state("t") == "closed"
            caps, _ = r.sender._capacity(r.targets)
            assert caps["t"] == 8
    finally:
        await r.sender.stop(timeout=1)
        await r.outbox.close()


async def test_vanished_target_keeps_its_deliveries_pending(rig):
    async with Receiver() as rx:
        dl = delivery(1, "later")
        await rig.put(dl)
        await asyncio.sleep(0.4)
        assert (await rig.outbox.get(dl.id))[0].status == PENDING
        rig.target("later", url=rx.url())  # the rules come back
        rig.sender.wake()
        await rig.wait_status(dl.id, DELIVERED)


async def test_rate_limit_spaces_requests(rig):
    async with Receiver() as rx:
        rig.target(url=rx.url(), rate_per_s=5, concurrency=10)
        await rig.put(*[delivery(i) for i in range(10)])
        reqs = await rx.wait_for(10)
    # a burst of 5, then 5 per second: the last can't come before ~1 s after the first
    assert reqs[-1].at - reqs[0].at >= 0.8


async def test_metrics_are_counted(rig):
    sample = metrics.REGISTRY.get_sample_value
    before_ok = sample("whazing_gateway_deliveries_total", {"target": "m", "outcome": "delivered"}) or 0
    before_e2d = sample("whazing_gateway_event_to_delivery_seconds_count", {"target": "m"}) or 0
    before_retry = sample("whazing_gateway_delivery_attempts_total", {"target": "m", "outcome": "retry"}) or 0
    async with Receiver(script=[500]) as rx:
        rig.target("m", url=rx.url())
        dl = delivery(1, "m")
        await rig.put(dl)
        await rig.wait_status(dl.id, DELIVERED)
    assert sample("whazing_gateway_deliveries_total", {"target": "m", "outcome": "delivered"}) == before_ok + 1
    assert sample("whazing_gateway_event_to_delivery_seconds_count", {"target": "m"}) == before_e2d + 1
    assert sample("whazing_gateway_delivery_attempts_total", {"target": "m", "outcome": "retry"}) == before_retry + 1
    deadline = time.monotonic() + 5
    while sample("whazing_gateway_outbox_pending") != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sample("whazing_gateway_outbox_pending") == 0


async def test_stop_leaves_inflight_leased_and_a_restart_sends_it_again(tmp_path):
    r = Rig(tmp_path)
    await r.outbox.open()
    await r.sender.start()
    async with Receiver(script=[Hang(30)]) as rx:
        r.target(url=rx.url(), timeout_ms=60_000)
        dl = delivery(1)
        await r.put(dl)
        await rx.wait_for(1)
        await r.sender.stop(timeout=0.2)  # in flight: cancelled, left leased
        item, attempts = await r.outbox.get(dl.id)
        assert item.status == PENDING and item.lease_until is not None and attempts == []
        again = Sender(r.outbox, lambda: r.targets, poll_interval=0.05)
        await again.start()  # recover(): the lease is released at once
        try:
            await r.wait_status(dl.id, DELIVERED)
        finally:
            await again.stop(timeout=1)
        assert [q.webhook_id for q in rx.requests] == [dl.id, dl.id]
    await r.outbox.close()
