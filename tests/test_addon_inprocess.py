"""The mitmproxy addon in-process, with mitmproxy's own test tools (`mitmproxy.test.taddons`
for the addon context, `tflow` for flows): what the hooks hand to the pipeline and what they
leave alone, the memory bounds (websocket history, the flow viewer's `max_flows`, the pipeline
queue), hook failures that must not touch the traffic, and one push followed from the hook to a
delivered webhook. No process is started: the gateway's real services run in this event loop
(SQLite outbox in tmp_path, the in-process sender, a real aiohttp receiver).
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest
from mitmproxy import http, websocket
from mitmproxy.addons.save import Save
from mitmproxy.addons.view import View
from mitmproxy.test import taddons, tflow

from tests.harness import rules_yaml
from whazing_gateway.edge import addon as edge
from whazing_gateway.edge.addon import WS_KEEP_MESSAGES, Gateway
from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, WsFrame
from whazing_gateway.ops import metrics

PUSH = ('42["1:ticketList",{"type":"chat:create","payload":{"id":"m-1","body":"oi","fromMe":false,'
        '"ticketId":7,"ticket":{"id":7,"status":"pending","queueId":2,"whatsappId":1}}}]')


def write_config(tmp_path: Path, target_url: str = "http://127.0.0.1:9/hook", max_flows: int = 2000) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "test.yaml").write_text(rules_yaml(target_url))
    config = tmp_path / "gateway.yaml"
    config.write_text(textwrap.dedent(f"""\
        upstream: http://127.0.0.1:3000
        rules_dir: rules
        rules_reload_s: 0
        data_dir: data
        observer: {{enabled: false}}
        metrics: {{port: 0}}
        log: {{format: json, level: warning}}
        proxy: {{max_flows: {max_flows}, pipeline: inline}}
        delivery: {{worker: inline, retry_schedule: [0, 1]}}
        """))
    return config


def rest_flow(method: str, path: str, *, body: bytes = b"", status: int = 200, answer: object = None,
              headers: dict[str, str] | None = None) -> http.HTTPFlow:
    f = tflow.tflow(req=tflow.treq(method=method.encode(), path=path.encode(), content=body,
                                   headers=http.Headers(content_type="application/json", **(headers or {}))),
                    resp=tflow.tresp(status_code=status, content=json.dumps(answer or {}).encode(),
                                     headers=http.Headers(content_type="application/json")))
    return f


def ws_flow() -> http.HTTPFlow:
    """A websocket flow with no message yet (tflow's comes with three)."""
    f = tflow.twebsocketflow()
    assert f.websocket is not None
    f.websocket.messages.clear()
    return f


def frame(flow: http.HTTPFlow, text: str, from_client: bool = False) -> None:
    assert flow.websocket is not None
    flow.websocket.messages.append(websocket.WebSocketMessage(1, from_client, text.encode(), time.time()))


def handed_off(gw: Gateway) -> list:
    """What the hooks queued for the pipeline (taken off the queue, synchronously)."""
    assert gw.services is not None
    q = gw.services.pipeline.queue
    out = []
    while not q.empty():
        out.append(q.get_nowait())
        q.task_done()  # taken here, not by the pipeline: its drain at `done` must not wait for them
    return out


@pytest.fixture
async def running(tmp_path):
    """A Gateway addon past mitmproxy's `running` hook, in a taddons context; `done` after."""
    gateways: list[Gateway] = []

    async def start(*extra_addons, **config_kw) -> tuple[Gateway, taddons.context]:
        gw = Gateway()
        tctx = taddons.context(*extra_addons, gw)
        tctx.configure(gw, whazing_config=str(write_config(tmp_path, **config_kw)))
        gw.running()
        gateways.append(gw)
        return gw, tctx

    yield start
    for gw in gateways:
        await gw.done()


async def test_before_running_the_hooks_do_nothing():
    gw = Gateway()
    with taddons.context(gw):
        f = rest_flow("POST", "/tickets", body=b'{"contactId": 1}')
        gw.request(f)
        gw.response(f)
        assert gw.services is None and f.request.content == b'{"contactId": 1}'


async def test_requests_handed_off_are_only_creations(running):
    gw, _ = await running()
    create = rest_flow("POST", "/tickets", body=b'{"contactId": 5, "status": "open"}',
                       headers={"authorization": "Bearer x.y.z", "cookie": "secret=1"})
    gw.request(create)
    for method, path in [("GET", "/tickets/1"), ("PUT", "/tickets/1"), ("POST", "/auth/login"),
                         ("POST", "/messages/1"), ("GET", "/socket.io/?EIO=4&transport=polling"),
                         ("POST", "/somewhere/else")]:
        gw.request(rest_flow(method, path, body=b'{"a": 1}'))
    (rec,) = handed_off(gw)
    assert isinstance(rec, HttpRequestSeen) and (rec.method, rec.path) == ("POST", "/tickets")
    assert rec.body == b'{"contactId": 5, "status": "open"}' and rec.flow_id == create.id
    # Only the headers the decoder reads are copied: never cookies.
    assert rec.headers.get("authorization") == "Bearer x.y.z" and "cookie" not in rec.headers


async def test_responses_handed_off_are_those_that_carry_tickets(running):
    gw, _ = await running()
    wanted = [("GET", "/tickets/1"), ("PUT", "/tickets/1"), ("GET", "/tickets"), ("DELETE", "/tickets/1"),
              ("POST", "/tickets"), ("GET", "/socket.io/?EIO=4&transport=polling&sid=x")]
    for method, path in wanted:
        gw.response(rest_flow(method, path, answer={"id": 1, "status": "open"}))
    for method, path in [("POST", "/auth/login"), ("POST", "/messages/1"), ("GET", "/queue"),
                         ("POST", "/tickets/close-tickets"), ("GET", "/contacts/1")]:
        gw.response(rest_flow(method, path, answer={"id": 1, "status": "open"}))
    recs = handed_off(gw)
    assert all(isinstance(r, HttpExchange) for r in recs)
    assert [(r.method, r.path) for r in recs] == [(m, p.partition("?")[0]) for m, p in wanted]
    assert recs[0].resp_body == b'{"id": 1, "status": "open"}' and recs[0].status == 200


async def test_frames_handed_off_are_server_pushes_on_list_channels(running):
    gw, _ = await running()
    ws = ws_flow()
    sent = [(PUSH, False), (PUSH, True), ("2", False), ("3", True), ('42["1:notification",{}]', False),
            ('42["1:contactList",{"type":"contact:update","payload":{}}]', False), ('40{"sid":"x"}', False)]
    for text, from_client in sent:
        frame(ws, text, from_client)
        gw.websocket_message(ws)
    recs = handed_off(gw)
    assert all(isinstance(r, WsFrame) and not r.from_client and r.flow_id == ws.id for r in recs)
    # The hook's test is a prefix and a channel-name mark; the decoder sorts the channels out.
    assert [r.content.decode() for r in recs] == [PUSH, '42["1:contactList",{"type":"contact:update","payload":{}}]']


async def test_websocket_history_is_trimmed_to_the_bound(running):
    gw, _ = await running()
    ws = ws_flow()
    for i in range(WS_KEEP_MESSAGES + 150):
        frame(ws, f"2probe{i}")
        gw.websocket_message(ws)
        assert len(ws.websocket.messages) <= WS_KEEP_MESSAGES
    assert len(ws.websocket.messages) == WS_KEEP_MESSAGES
    assert ws.websocket.messages[-1].content == f"2probe{WS_KEEP_MESSAGES + 149}".encode()  # the newest stay


async def test_a_frame_too_big_to_read_leaves_the_history_once_passed_on(running):
    """200 kept messages of 1 MB each would be 200 MB per socket: one past inspect_max_bytes is
    dropped from the history at the next message (mitmproxy forwards its own reference first)."""
    gw, _ = await running()
    ws = ws_flow()
    big = "4" + "x" * gw.frame_limit
    frame(ws, "2probe-a")
    gw.websocket_message(ws)
    frame(ws, big)
    gw.websocket_message(ws)
    assert ws.websocket.messages[-1].content == big.encode()  # still there while its hook runs
    frame(ws, "2probe-b")
    gw.websocket_message(ws)
    assert [m.content for m in ws.websocket.messages] == [b"2probe-a", b"2probe-b"]


async def test_permessage_deflate_inflates_at_most_websocket_max_message(running):
    """mitmproxy builds each websocket's extension from wsproto's class: after `running` it is the
    bounded one, which refuses (1009) a message inflating past the limit and passes one below."""
    import zlib

    import wsproto.extensions
    from wsproto.frame_protocol import CloseReason

    from whazing_gateway.edge.ws_limits import BoundedDeflate

    gw, _ = await running()
    assert wsproto.extensions.PerMessageDeflate is BoundedDeflate
    assert gw.settings is not None and BoundedDeflate.max_message == gw.settings.websocket_max_message

    def inbound(ext, payload: bytes):
        class Proto:
            client = False
        ext.frame_inbound_header(Proto, wsproto.frame_protocol.Opcode.TEXT,
                                 wsproto.frame_protocol.RsvBits(True, False, False), len(payload))
        return ext.frame_inbound_payload_data(Proto, payload)

    def deflated(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

    limit = BoundedDeflate.max_message
    ok = BoundedDeflate()
    ok.finalize("permessage-deflate")
    assert inbound(ok, deflated(b"a" * 1000)) == b"a" * 1000
    bomb = BoundedDeflate()
    bomb.finalize("permessage-deflate")
    assert inbound(bomb, deflated(b"\0" * (limit + 1))) is CloseReason.MESSAGE_TOO_BIG


async def test_websocket_history_is_kept_whole_while_a_capture_is_saved(running, tmp_path):
    save = Save()
    gw, tctx = await running(save)
    tctx.configure(save, save_stream_file=str(tmp_path / "capture.flows"))
    gw.configure({"save_stream_file"})
    assert gw.recording
    ws = ws_flow()
    for i in range(WS_KEEP_MESSAGES + 50):
        frame(ws, f"2probe{i}")
        gw.websocket_message(ws)
    assert len(ws.websocket.messages) == WS_KEEP_MESSAGES + 50  # replay needs every frame
    save.done()


async def test_the_flow_viewer_keeps_at_most_max_flows(running):
    view = View()
    gw, _ = await running(view, max_flows=5)
    assert gw.limit is not None and gw.annotate  # a viewer: bounded and annotated

    def finish(f) -> None:
        f.live = False  # what mitmproxy does once the flow's exchange is over

    flows = [rest_flow("GET", f"/queue?n={i}") for i in range(12)]
    for f in flows:
        view.add([f])
        gw.response(f)
        finish(f)
        assert len(view) <= 5
    assert [f.id for f in view] == [f.id for f in flows[-5:]]  # the oldest went, the newest stay
    # An errored flow and a finished websocket take a place too.
    broken = tflow.tflow(err=True)
    view.add([broken])
    gw.error(broken)
    finish(broken)
    ended = ws_flow()
    view.add([ended])
    gw.websocket_end(ended)
    finish(ended)
    assert broken in view and ended in view and len(view) == 5
    # A flow still live when its turn comes keeps its place, and goes once it has finished.
    slow = rest_flow("GET", "/queue?slow")
    view.add([slow])
    gw.response(slow)
    for i in range(5):
        f = rest_flow("GET", f"/queue?after={i}")
        view.add([f])
        gw.response(f)
        finish(f)
    assert slow in view and len(view) <= 6
    finish(slow)
    for i in range(6):
        f = rest_flow("GET", f"/queue?later={i}")
        view.add([f])
        gw.response(f)
        finish(f)
    assert slow not in view and len(view) == 5


async def test_without_a_viewer_nothing_is_bounded_or_annotated(running):
    gw, _ = await running()
    assert gw.limit is None and not gw.annotate


async def test_a_failing_hook_leaves_the_flow_alone_and_is_counted(running):
    gw, _ = await running()
    ws = ws_flow()  # no message at all: the hook's read fails
    before = metrics.REGISTRY.get_sample_value("whazing_gateway_stage_errors_total", {"stage": "hook_websocket"}) or 0
    gw.websocket_message(ws)  # must not raise into mitmproxy
    after = metrics.REGISTRY.get_sample_value("whazing_gateway_stage_errors_total", {"stage": "hook_websocket"})
    assert after == before + 1 and ws.websocket.messages == [] and handed_off(gw) == []


async def test_a_full_queue_drops_the_observation_not_the_flow(running, monkeypatch):
    gw, _ = await running()
    assert gw.services is not None
    q: asyncio.Queue = asyncio.Queue(maxsize=2)
    monkeypatch.setattr(gw.services.pipeline, "queue", q)
    before = metrics.REGISTRY.get_sample_value("whazing_gateway_observations_dropped_total") or 0
    ws = ws_flow()
    for _ in range(5):
        frame(ws, PUSH)
        gw.websocket_message(ws)  # never blocks, never raises
    assert q.qsize() == 2
    assert metrics.REGISTRY.get_sample_value("whazing_gateway_observations_dropped_total") == before + 3


async def test_a_push_through_the_hook_becomes_a_delivered_webhook(running, receiver):
    gw, _ = await running(target_url=receiver.url())
    ws = ws_flow()
    frame(ws, PUSH)
    gw.websocket_message(ws)
    (got,) = await receiver.wait_for(1, timeout=20)
    body = got.json()
    assert body["type"] == "message.received" and body["data"]["ticket"]["id"] == 7
    assert got.webhook_id and got.headers.get("webhook-signature", "").startswith("v1,")


def test_the_module_names_the_thin_file_mitmdump_loads():
    """`addons/gateway.py` hands mitmproxy exactly one Gateway, from the installed package."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "addons" / "gateway.py").read_text()
    assert "from whazing_gateway.edge.addon import Gateway" in text and "addons = [Gateway()]" in text
    assert edge.Gateway is Gateway


async def test_websocket_messages_are_buffered_at_most_websocket_max_message(running):
    """mitmproxy makes each side of a websocket from its layer's WebsocketConnection and buffers
    a message until FIN: after `running` that class ends a message growing past the limit with a
    close 1009 (and nothing of it after), while whole messages below it pass as before."""
    import wsproto
    import wsproto.events
    from mitmproxy.proxy.layers import websocket as ws_layer
    from mitmproxy.test import tflow

    from whazing_gateway.edge import ws_limits

    gw, _ = await running()
    cls = ws_layer.WebsocketConnection
    assert gw.settings is not None and cls.max_message == gw.settings.websocket_max_message
    original = cls._unbounded
    try:
        ws_limits.install(10_000)  # again, as a reload would: the original is bounded, not the bounded one
        cls = ws_layer.WebsocketConnection
        assert cls._unbounded is original and cls.max_message == 10_000

        def masked(first: int, payload: bytes) -> bytes:
            key = b"\x01\x02\x03\x04"
            return bytes([first, 0x80 | 126]) + len(payload).to_bytes(2, "big") + key + \
                bytes(b ^ key[i % 4] for i, b in enumerate(payload))

        side = cls(wsproto.ConnectionType.SERVER, [], conn=tflow.tclient_conn())
        side.receive_data(masked(0x81, b"a" * 6000) + masked(0x81, b"b" * 6000))  # two whole messages
        got = list(side.events())
        assert [(type(e), len(e.data), e.message_finished) for e in got] == [
            (wsproto.events.TextMessage, 6000, True), (wsproto.events.TextMessage, 6000, True)]
        side.receive_data(masked(0x01, b"c" * 6000) + masked(0x00, b"c" * 6000) + masked(0x80, b"c" * 10))
        got = list(side.events())  # 12,000 buffered without FIN: refused before the second part
        assert [type(e) for e in got] == [wsproto.events.TextMessage, wsproto.events.CloseConnection]
        assert got[1].code == 1009
        side.receive_data(masked(0x81, b"d" * 10))
        assert list(side.events()) == []  # the layer is closing this socket
    finally:
        ws_limits.install(gw.settings.websocket_max_message)


def test_kept_headers_read_in_one_pass_say_what_headers_get_says():
    """The hooks copy three headers in one pass over the raw fields: the same values mitmproxy's
    `Headers.get` gives (any case, repeats joined with ", ", bytes that are not UTF-8 kept)."""
    from mitmproxy.http import Headers

    from whazing_gateway.edge.records import _KEPT_HEADERS, _headers

    cases = [
        Headers(),
        Headers([(b"Host", b"x"), (b"Content-Type", b"application/json"), (b"X-A", b"1")]),
        Headers([(b"AUTHORIZATION", b"Bearer a.b.c"), (b"content-encoding", b"gzip"),
                 (b"Content-Encoding", b"br"), (b"content-type", b"text/plain; charset=\xff\xfe")]),
    ]
    for h in cases:
        assert _headers(h) == {n: h.get(n) for n in _KEPT_HEADERS if h.get(n) is not None}
    assert _headers(cases[2])["content-encoding"] == "gzip, br"
    assert _headers({"authorization": "Bearer x", "cookie": "c=1"}) == {"authorization": "Bearer x"}


def test_an_outcome_read_before_its_result_still_reaches_the_flow():
    """Results (pipeline process) and outcomes (delivery worker) come over two pipes: an outcome
    read first waits for its result, then lands after the "queued" line; waiting ones are bounded."""
    from whazing_gateway.edge.addon import FlowNotes

    notes = FlowNotes()
    flow = rest_flow("GET", "/tickets/1")
    notes.track(flow)
    summary = {"flow_id": flow.id, "accepted": True,
               "events": [{"id": "evt_1", "type": "ticket.closed", "ticket": 1, "changes": {}}],
               "deliveries": [{"id": "msg_1", "target": "recv", "event": "ticket.closed"},
                              {"id": "msg_2", "target": "dead-end", "event": "ticket.closed"}]}
    notes.on_delivery("msg_1", "recv", "delivered", "200")  # the worker was quicker
    notes.on_delivery("msg_2", "dead-end", "dead", "410")
    notes.on_result(summary)
    lines = flow.comment.splitlines()
    assert lines[1:] == ["  -> recv: queued [msg_1]", "  -> dead-end: queued [msg_2]",
                         "  <- recv: delivered 200 [msg_1]", "  <- dead-end: dead 410 [msg_2]"]
    assert flow.metadata["whazing"]["deliveries"]["msg_1"]["status"] == "delivered"
    assert flow.marked == ":warning:" and not notes.early and not notes.by_delivery
    for i in range(FlowNotes.MAX_EARLY + 5):  # outcomes of flows never tracked
        notes.on_delivery(f"x{i}", "recv", "delivered", "200")
    assert len(notes.early) == FlowNotes.MAX_EARLY
