"""Bad input through a real gateway: malformed frames and bodies never raise out of the addon
and never alter the traffic (hypothesis generates them; a real mitmdump carries them)."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from pathlib import Path

import aiohttp
import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.echo_upstream import start_echo
from tests.harness import GatewayProcess, rules_yaml
from whazing_gateway.decode import decode
from whazing_gateway.decode.bodies import BodyError
from whazing_gateway.decode.socketio import DecodeError
from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, WsFrame
from whazing_gateway.infer.inferrer import Inferrer
from whazing_gateway.pipeline.core import Pipeline
from whazing_gateway.route.router import Router
from whazing_gateway.route.rules import RuleSet
from whazing_gateway.state.memory import MemoryState

# -- generators of hostile input ---------------------------------------------------------------
known_fields = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans(), st.floats()),
    "status": st.one_of(st.sampled_from(["open", "pending", "closed", "???"]), st.integers(), st.none()),
    "queueId": st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    "userId": st.one_of(st.integers(), st.none(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),
    "updatedAt": st.one_of(st.text(max_size=30), st.integers(), st.just("2026-13-45T99:99:99Z")),
    "createdAt": st.one_of(st.text(max_size=30), st.none()),
    "isCreated": st.one_of(st.booleans(), st.text(max_size=3)),
    "fromMe": st.one_of(st.booleans(), st.integers()),
    "ticket": st.one_of(st.none(), st.text(max_size=4), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3)),
    "contact": st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
})
event_types = st.sampled_from(["ticket:update", "chat:create", "notification:new", "chat:ack", None, 5])
channels = st.sampled_from(["1:ticketList", "x:ticketList", "1:contactList", ":ticketList", "1:whatsapp"])


# -- hostile values (issue 13): deep nesting, digits int() refuses, huge numbers, ids past int64 --
BOMB = (Path(__file__).parent / "fixtures" / "brotli-bomb-1gib.br").read_bytes()
hostile_ids = st.one_of(st.just("²"), st.just("\u0663"), st.just(1 << 63), st.just(-(1 << 63) - 1),
                        st.integers(min_value=1 << 63, max_value=1 << 200), st.just("9" * 30),
                        st.just("1" * 5000), st.just({"id": [1]}), st.just(0))


def _nest(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def hostile_json(draw) -> str:
    how = draw(st.sampled_from(["deep", "deep-open", "deep-obj", "digits", "id", "nan"]))
    if how == "deep":
        return _nest(draw(st.sampled_from([65, 1000, 100_000])))
    if how == "deep-open":
        return "[" * draw(st.sampled_from([100, 100_000]))
    if how == "deep-obj":
        n = draw(st.sampled_from([65, 5000]))
        return '{"a":' * n + "1" + "}" * n
    if how == "digits":
        return '{"id": ' + "9" * draw(st.sampled_from([41, 4301, 10_000])) + ', "status": "open"}'
    if how == "nan":
        return '{"id": 1, "status": "open", "queueId": NaN, "userId": -Infinity}'
    value = draw(hostile_ids)
    return json.dumps({"id": value, "status": "open", "isCreated": True, "tenantId": value, "contactId": value})


@st.composite
def hostile_frames(draw) -> str:
    how = draw(st.sampled_from(["payload", "ack", "type", "attachments"]))
    if how == "ack":
        return "42" + draw(st.sampled_from(["²", "1" * 5000, "\u0663"])) + '["1:ticketList",{}]'
    if how == "type":
        return "4" + draw(st.sampled_from(["²", "\u0663", "\u00b9"])) + '["x"]'
    if how == "attachments":
        return "45" + draw(st.sampled_from(["²", "9" * 5000])) + '-["x"]'
    return '42["1:ticketList",{"type":"ticket:update","payload":' + draw(hostile_json()) + "}]"


@st.composite
def hostile_bodies(draw) -> tuple[bytes, str | None]:
    how = draw(st.sampled_from(["json", "bomb", "gzip-bomb", "stacked"]))
    if how == "bomb":
        return BOMB, "br"
    if how == "gzip-bomb":
        return gzip.compress(b"[" * (4 << 20)), "gzip"
    raw = draw(hostile_json()).encode()
    if how == "stacked":
        return brotli.compress(gzip.compress(raw)), "gzip, br"
    return raw, None


@st.composite
def socket_frames(draw) -> str:
    """Frames that look like Whazing's pushes, then get broken in one of many ways."""
    payload = draw(st.one_of(known_fields, st.none(), st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3)))
    envelope = draw(st.one_of(st.fixed_dictionaries({"type": event_types, "payload": st.just(payload)}),
                              st.text(max_size=6), st.none(), st.integers()))
    frame = "42" + json.dumps([draw(channels), envelope])
    how = draw(st.sampled_from(["whole", "truncate", "junk", "prefix", "unicode", "hostile"]))
    if how == "hostile":
        frame = draw(hostile_frames())
    elif how == "truncate":
        frame = frame[: draw(st.integers(2, max(2, len(frame) - 1)))]
    elif how == "junk":
        frame = frame + draw(st.text(min_size=1, max_size=8))
    elif how == "prefix":
        frame = draw(st.sampled_from(["4", "42", "421-", "42/", "45x-", "42999999999999999999"])) + frame[2:]
    elif how == "unicode":
        frame = frame.replace('"', "\u201d", 1)
    return frame


@st.composite
def http_bodies(draw) -> tuple[bytes, str | None, str]:
    doc = draw(st.one_of(known_fields, st.fixed_dictionaries({"tickets": st.lists(known_fields, max_size=3)})))
    raw = json.dumps(doc).encode()
    how = draw(st.sampled_from(["json", "truncated", "gzip", "fake-gzip", "not-json", "latin1", "binary", "hostile"]))
    encoding = None
    if how == "hostile":
        raw, encoding = draw(hostile_bodies())
    elif how == "truncated":
        raw = raw[: max(1, len(raw) // 2)]
    elif how == "gzip":
        raw, encoding = gzip.compress(raw), "gzip"
    elif how == "fake-gzip":
        encoding = draw(st.sampled_from(["gzip", "br", "deflate", "zstd", "weird"]))
    elif how == "not-json":
        raw = draw(st.binary(min_size=1, max_size=64))
    elif how == "latin1":
        raw = "{\"status\": \"fechado é\"}".encode("latin-1")
    elif how == "binary":
        raw = bytes(range(256))
    return raw, encoding, draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))


# -- the core never raises anything but its own decode errors; the pipeline never raises ---------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=socket_frames(), body=http_bodies())
def test_core_contains_every_malformed_input(frame, body):
    raw, enc, ctype = body
    records = [
        WsFrame("f", 1.0, False, frame.encode()),
        HttpExchange("h", 1.0, "PUT", "/tickets/1", "", 200, {"content-type": ctype}, raw,
                     {"content-type": ctype, **({"content-encoding": enc} if enc else {})}, raw),
        HttpRequestSeen("r", 1.0, "POST", "/tickets", "", {"content-type": ctype}, raw),
        HttpExchange("p", 1.0, "GET", "/socket.io/", "EIO=4&transport=polling", 200, {}, None, {}, frame.encode()),
    ]
    for rec in records:
        try:
            decode(rec)
        except (DecodeError, BodyError):
            pass  # anything else fails the test: decoders raise only their own errors

    async def run():
        # infer and route (real rules, both body formats) directly: any exception fails the test
        state = MemoryState()
        inferrer, router = Inferrer(state), Router(_RULES, state)
        for rec in records:
            try:
                observations = decode(rec)
            except (DecodeError, BodyError):
                continue
            for obs in observations:
                events = await inferrer.infer(obs)
                for event in events:
                    assert event.ticket_id is None or 0 < event.ticket_id < (1 << 63)
                    for d in await router.route(event):
                        json.loads(d.body)  # a body a receiver can parse
                await inferrer.commit(events)

        routed = []

        async def route(event):
            routed.append(event)
            return []

        pipe = Pipeline(Inferrer(MemoryState()), route, None)
        for rec in records:
            await pipe.process(rec)  # must not raise
    asyncio.run(run())


def _rules() -> RuleSet:
    from whazing_gateway import model
    from whazing_gateway.route.patterns import compile_pattern
    from whazing_gateway.route.rules import ChannelRule, Match, QueueRule

    targets = {n: model.Target(n, "http://127.0.0.1:9/", format=f) for n, f in (("w", "whazing"), ("e", "envelope"))}
    events = frozenset(model.EVENT_TYPES)
    return RuleSet(targets=targets, channel_rules=(
        ChannelRule("all", "t:1", ("*",), ("w", "e"), events, groups=True),
        ChannelRule("match", "t:2", ("*", 1, "x"), ("w",), events, groups=True, match=Match(
            tenants=frozenset({"1"}), contact_number=compile_pattern("^55"), text=compile_pattern("(a+)+$"),
            tags=frozenset({"vip"}))),
    ), queue_rules=(QueueRule("q", "t:3", ("*", 1), ("e",), start_on_transfer=True),))


_RULES = _rules()


# -- through a real mitmdump: bytes in == bytes out -----------------------------------------------
class Loop:
    """An event loop in a thread, so hypothesis' sync tests can drive async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    loop = Loop()
    runner, upstream = loop.run(start_echo())
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), upstream, rules_yaml("http://127.0.0.1:9/never"))
    loop.run(gw.start())
    session = loop.run(_session())
    ws = loop.run(session.ws_connect(gw.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                     max_msg_size=0))
    yield loop, gw, session, ws
    loop.run(ws.close())
    loop.run(session.close())
    loop.run(gw.stop())
    loop.run(runner.cleanup())
    loop.close()


async def _session():
    return aiohttp.ClientSession(auto_decompress=False)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frames=st.lists(socket_frames(), min_size=1, max_size=5), body=http_bodies())
def test_gateway_passes_malformed_traffic_untouched(gateway, frames, body):
    loop, gw, session, ws = gateway
    raw, enc, ctype = body

    async def exchange():
        for frame in frames:
            await ws.send_str(frame)
            echoed = await asyncio.wait_for(ws.receive(), 20)
            assert echoed.data == frame
        headers = {"X-Echo-Content-Type": ctype, "Content-Type": ctype}
        if enc:
            headers["X-Echo-Content-Encoding"] = enc
        for method, path in (("PUT", "/tickets/7"), ("POST", "/tickets"), ("GET", "/socket.io/?EIO=4&transport=polling&t=x")):
            data = raw if method != "GET" else None
            async with session.request(method, gw.url + path, data=data, headers=headers) as r:
                got = await r.read()
                assert r.status == 200
                assert r.headers.get("Content-Encoding") == enc
                assert r.headers["X-Echo-Path"] == path
                if method != "GET":
                    assert got == raw
    loop.run(exchange())


@pytest.mark.slow
def test_gateway_survived_and_counted(gateway):
    """After all of the above: no hook ever failed, decode errors were counted and logged sparingly."""
    loop, gw, session, ws = gateway

    async def poke():
        await ws.send_str('42["1:ticketList",{"type":"ticket:update","payload":{"id":1')
        await ws.receive()
        async with session.put(gw.url + "/tickets/1", data=b"{not json",
                               headers={"X-Echo-Content-Type": "application/json", "Content-Type": "application/json"}) as r:
            await r.read()
        await asyncio.sleep(1.0)
        return await gw.metrics()
    text = loop.run(poke())
    assert gw.proc.poll() is None
    decode_errors = sum(float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("whazing_gateway_decode_errors_total{"))
    assert decode_errors >= 2
    assert 'stage="hook_' not in text and 'stage="pipeline"' not in text
    logged = [r for r in gw.log_records() if r.get("event") == "undecodable traffic passed through untouched"]
    assert 1 <= len(logged) <= 4  # once per kind (frame, body) per minute, not once per input
    assert "Traceback" not in gw.log()


# -- one bad record costs only itself: hostile records beside real ones, a real SQLite outbox ----
def _created(ticket_id: int) -> WsFrame:
    ticket = {"id": ticket_id, "status": "pending", "isCreated": True, "queueId": 1, "userId": None,
              "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
    frame = "42" + json.dumps(["1:ticketList", {"type": "ticket:update", "payload": ticket}])
    return WsFrame(f"real-{ticket_id}", 1.0, False, frame.encode())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=st.lists(hostile_frames(), min_size=1, max_size=6), body=hostile_bodies())
def test_hostile_records_cost_only_themselves(tmp_path, frames, body):
    """Every real event of a batch that also holds hostile records reaches a real SQLite outbox;
    no id past int64 is ever written (it used to fail the whole batch with OverflowError)."""
    from whazing_gateway.model import Delivery
    from whazing_gateway.outbox.sqlite import SqliteOutbox

    raw, enc = body
    hostile = [WsFrame(f"bad-{i}", 1.0, False, f.encode()) for i, f in enumerate(frames)]
    hostile.append(HttpExchange("b", 1.0, "PUT", "/tickets/1", "", 200, {}, None,
                                {"content-type": "application/json", **({"content-encoding": enc} if enc else {})}, raw))
    real = [_created(i) for i in range(1, 4)]
    records = [r for pair in zip(hostile, real) for r in pair] + hostile[len(real):] + real[len(hostile):]

    async def run():
        outbox = SqliteOutbox(tmp_path / f"outbox-{len(raw)}-{len(frames)}.db")
        await outbox.open()

        async def route(event):
            return [Delivery(Delivery.make_id(event.id, "t"), "t", event.id, event.type, event.order_key,
                             json.dumps(dict(event.ticket)).encode(), event.ts, event.ticket_id)]
        try:
            pipe = Pipeline(Inferrer(MemoryState()), route, outbox.put)
            results = await pipe.process_batch(records)
            assert all(r.accepted for r in results)
            return await outbox.pending_count(), [e.ticket_id for r in results for e in r.events]
        finally:
            await outbox.close()
    pending, ticket_ids = asyncio.run(run())
    assert sorted(i for i in ticket_ids if i in (1, 2, 3)) == [1, 2, 3]
    assert all(i is None or 0 < i < (1 << 63) for i in ticket_ids)
    assert pending == len(ticket_ids)
