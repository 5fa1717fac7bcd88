"""Decode stage: Engine.IO/Socket.IO packets, polling bodies, REST routes, body encodings."""

import base64
import gzip
import json
import zlib

import brotli
import pytest

from whazing_gateway.decode import RestCall, SocketEvent, decode, jwt_claims, routes
from whazing_gateway.decode.bodies import BodyError, parse_json
from whazing_gateway.decode.socketio import (
    SIO_BINARY_EVENT,
    SIO_CONNECT,
    SIO_CONNECT_ERROR,
    SIO_EVENT,
    DecodeError,
    decode_engine,
    decode_message,
    decode_polling_body,
    decode_socket,
)
from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, WsFrame


def _jwt(claims):
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'HS256'})}.{enc(claims)}.sig"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2", None),  # ping
        ("3", None),  # pong
        ('0{"sid":"x","upgrades":[],"pingInterval":5000}', None),  # open
        ('40{"sid":"abc"}', (SIO_CONNECT, "/", {"sid": "abc"}, None)),
        ('40{"token":"t"}', (SIO_CONNECT, "/", {"token": "t"}, None)),
        ('44{"message":"authentication error"}', (SIO_CONNECT_ERROR, "/", {"message": "authentication error"}, None)),
        ('42["1:ticketList",{"type":"chat:create"}]', (SIO_EVENT, "/", ["1:ticketList", {"type": "chat:create"}], None)),
        ('42/admin,7["x",1]', (SIO_EVENT, "/admin", ["x", 1], 7)),
        ('4212["joinChatBox","5"]', (SIO_EVENT, "/", ["joinChatBox", "5"], 12)),
        ('451-["up",{"_placeholder":true,"num":0}]', (SIO_BINARY_EVENT, "/", ["up", {"_placeholder": True, "num": 0}], None)),
    ],
)
def test_socket_packets(text, expected):
    pkt = decode_message(text)
    if expected is None:
        assert pkt is None
    else:
        assert (pkt.type, pkt.namespace, pkt.data, pkt.ack_id) == expected


def test_binary_attachment_count():
    pkt = decode_socket('52-/ns,3["ev",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert pkt.attachments == 2 and pkt.namespace == "/ns" and pkt.ack_id == 3 and pkt.event_name == "ev"


@pytest.mark.parametrize("bad", ["", "9", "4x", "42[", "42{}", "42[]", "45[", "4"])
def test_malformed_packets_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        decode_message(bad)


def test_polling_body_with_several_packets():
    body = '\x1e'.join(['40{"sid":"a"}', '42["1:ticketList",{"type":"ticket:update","payload":{"id":1}}]', "2"])
    packets = decode_polling_body(body)
    assert [p.type for p in packets] == ["4", "4", "2"]
    binary = decode_engine("b" + base64.b64encode(b"\x00\x01").decode())
    assert binary.data == b"\x00\x01"


def test_frame_decodes_only_server_events_on_read_channels():
    f = lambda c, fc=False: WsFrame("f1", 10.0, fc, c.encode())
    ev = decode(f('42["3:ticketList",{"type":"ticket:update","payload":{"id":9,"status":"open"}}]'))
    assert ev == [SocketEvent(3, "ticketList", "ticket:update", {"id": 9, "status": "open"}, 10.0, "f1")]
    assert decode(f('42["3:whatsappSession",{"type":"x"}]')) == []
    assert decode(f('42["3:ticketList",{"type":"x"}]', fc=True)) == []
    assert decode(f('42["joinChatBox","5"]')) == []
    with pytest.raises(DecodeError):
        decode(f('42["3:ticketList","not an object"]'))
    with pytest.raises(DecodeError):
        decode(WsFrame("f", 0, False, b"\xff\xfe42"))


def test_polling_exchange_yields_each_event():
    body = '\x1e'.join([
        '42["1:ticketList",{"type":"chat:create","payload":{"id":"A"}}]',
        '42["1:contactList",{"type":"contact:update","payload":{"id":4}}]',
    ]).encode()
    rec = HttpExchange("p", 5.0, "GET", "/socket.io/", "EIO=4&transport=polling", 200,
                       {}, None, {"content-type": "text/plain; charset=UTF-8"}, body)
    obs = decode(rec)
    assert [(o.channel, o.type) for o in obs] == [("ticketList", "chat:create"), ("contactList", "contact:update")]


@pytest.mark.parametrize(
    "method, path, kind, params",
    [
        ("POST", "/auth/login/", routes.LOGIN, {}),
        ("GET", "/tickets", routes.TICKET_LIST, {}),
        ("PUT", "/tickets/123", routes.TICKET_UPDATE, {"ticketId": "123"}),
        ("POST", "/tickets", routes.TICKET_CREATE, {}),
        ("POST", "/tickets/close-tickets", routes.TICKETS_CLOSE, {}),
        ("POST", "/messages/55", routes.MESSAGE_SEND, {"ticketId": "55"}),
        ("POST", "/v1/api/external/abc-1", routes.EXT_SEND, {"apiId": "abc-1"}),
        ("POST", "/v1/api/external/abc-1/updatequeue", routes.EXT_UPDATE_QUEUE, {"apiId": "abc-1"}),
        ("POST", "/v1/api/external/abc-1/createticket", routes.EXT_CREATE_TICKET, {"apiId": "abc-1"}),
        ("GET", "/v1/api/external/abc-1/ticket/7", routes.EXT_GET_TICKET, {"apiId": "abc-1", "ticketId": "7"}),
        ("GET", "/socket.io/", routes.SOCKET_POLLING, {}),
    ],
)
def test_routes(method, path, kind, params):
    r = routes.match(method, path)
    assert r is not None and r.kind == kind and r.params == params


@pytest.mark.parametrize("method, path", [("GET", "/queue"), ("PATCH", "/tickets/1"), ("GET", "/whatsapp/1"), ("GET", "/ticketsx")])
def test_unread_routes(method, path):
    assert routes.match(method, path) is None


@pytest.mark.parametrize("encoding, compress", [
    (None, lambda b: b), ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]), ("br", brotli.compress),
])
def test_json_bodies_in_every_encoding(encoding, compress):
    doc = {"id": 5, "status": "open", "nome": "João"}
    assert parse_json(compress(json.dumps(doc).encode()), encoding) == doc


def test_body_errors():
    with pytest.raises(BodyError):
        parse_json(b"not json", None)
    with pytest.raises(BodyError):
        parse_json(b"\x1f\x8b broken", "gzip")
    with pytest.raises(BodyError):  # a zip bomb is refused, not inflated
        parse_json(gzip.compress(b"[" + b"0," * 600_000 + b"0]"), "gzip", limit=1000)
    with pytest.raises(BodyError):
        parse_json(b"{}", "compress")
    assert parse_json(b"", None) is None


def test_rest_request_and_response_observations():
    auth = {"authorization": "Bearer " + _jwt({"id": 7, "tenantId": 2})}
    req = HttpRequestSeen("f", 1.0, "POST", "/tickets", "", {**auth, "content-type": "application/json"},
                          b'{"contactId": 4, "status": "open"}')
    [call] = decode(req)
    assert call == RestCall(routes.TICKET_CREATE, {}, "POST", "/tickets", None, {"contactId": 4, "status": "open"},
                            None, 2, 7, 1.0, "f")
    ex = HttpExchange("f", 2.0, "PUT", "/tickets/9", "", 200, {**auth, "content-type": "application/json"},
                      b'{"queueId": 3}', {"content-type": "application/json; charset=utf-8", "content-encoding": "gzip"},
                      gzip.compress(b'{"id": 9, "status": "open"}'))
    [call] = decode(ex)
    assert call.response_json == {"id": 9, "status": "open"} and call.request_json == {"queueId": 3}
    assert call.status == 200 and call.params == {"ticketId": "9"} and call.tenant_id == 2


def test_jwt_claims_are_read_without_trusting_them():
    assert jwt_claims("Bearer " + _jwt({"id": 1, "tenantId": 3})) == {"id": 1, "tenantId": 3}
    assert jwt_claims("Bearer garbage") == {} and jwt_claims(None) == {} and jwt_claims("Basic x") == {}
    assert jwt_claims("Bearer a.!!!.c") == {}


def test_gzipped_polling_body():
    """Engine.IO gzips long-poll answers above 1 KB when the client accepts it."""
    packets = ['42["1:ticketList",{"type":"chat:create","payload":{"id":"M%d","pad":"%s"}}]' % (i, "x" * 300)
               for i in range(5)]
    rec = HttpExchange("p", 5.0, "GET", "/socket.io/", "EIO=4&transport=polling", 200, {}, None,
                       {"content-type": "text/plain; charset=UTF-8", "content-encoding": "gzip"},
                       gzip.compress("\x1e".join(packets).encode()))
    assert [o.payload["id"] for o in decode(rec)] == ["M0", "M1", "M2", "M3", "M4"]


def test_hot_path_copies_only_what_inference_reads():
    from types import SimpleNamespace as NS

    from whazing_gateway.edge.addon import wants_request, wants_response

    flow = lambda m, p: NS(request=NS(method=m, path=p))
    assert wants_request(flow("POST", "/tickets")) and wants_request(flow("POST", "/v1/api/external/x/createticket"))
    assert not wants_request(flow("PUT", "/tickets/3"))  # its effect arrives on the socket and in the response
    assert not wants_request(flow("POST", "/auth/login/")) and not wants_request(flow("POST", "/messages/3"))
    assert wants_response(flow("PUT", "/tickets/3")) and wants_response(flow("GET", "/tickets?status[]=open"))
    assert wants_response(flow("GET", "/socket.io/?EIO=4&transport=polling"))
    assert not wants_response(flow("POST", "/auth/login/")) and not wants_response(flow("POST", "/messages/3"))


# -- bounds: every decoder stops early and raises only its own error ----------------------------
BOMB = (__import__("pathlib").Path(__file__).parent / "fixtures" / "brotli-bomb-1gib.br").read_bytes()


def _peak_rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_brotli_bomb_stops_at_the_cap_while_inflating():
    """809 bytes that inflate to 1 GiB: refused at the 1 MiB cap without inflating it all."""
    assert len(BOMB) < 2000
    before = _peak_rss_kib()
    with pytest.raises(BodyError) as err:
        parse_json(BOMB, "br", limit=1 << 20)
    assert err.value.kind == "bomb"
    assert _peak_rss_kib() - before < 200 * 1024  # far below the 1 GiB it holds


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, br", "br, gzip", "deflate, gzip, br"])
def test_every_encoding_is_capped(encoding):
    big = json.dumps({"pad": "0" * (3 << 20)}).encode()
    raw = big
    for enc in (e.strip() for e in encoding.split(",")):
        raw = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[enc](raw)
    with pytest.raises(BodyError) as err:
        parse_json(raw, encoding, limit=1 << 20)
    assert err.value.kind == "bomb"
    assert parse_json(raw, encoding, limit=4 << 20) == {"pad": "0" * (3 << 20)}


def test_stacked_encodings_decode_in_reverse_order():
    raw = brotli.compress(gzip.compress(b'{"id": 7}'))
    assert parse_json(raw, "gzip, br") == {"id": 7}
    with pytest.raises(BodyError):
        parse_json(raw, "br, gzip")
    with pytest.raises(BodyError) as err:
        parse_json(b"x", "gzip, gzip, gzip, gzip, gzip")
    assert err.value.kind == "encoding"


def test_truncated_brotli_is_a_body_error():
    raw = brotli.compress(json.dumps({"a": "b" * 5000}).encode())
    with pytest.raises(BodyError):
        parse_json(raw[: len(raw) // 2], "br")


@pytest.mark.parametrize("doc, kind", [
    ("[" * 100_000 + "]" * 100_000, "too_deep"),
    ("[" * 100_000, "too_deep"),
    ('{"a":' * 70 + "1" + "}" * 70, "too_deep"),
    ("1" * 5000, "number"),
    ('{"id": ' + "9" * 41 + "}", "number"),
    ('{"id": 1e' + "9" * 100 + "}", "number"),
    ('{"id": NaN}', "number"),
    ('{"t": 1e400}', "number"),
    ('{"t": -1.5e999}', "number"),
    ('{"id": Infinity}', "number"),
    ('{"id": "²"', "json"),
])
def test_json_bounds(doc, kind):
    with pytest.raises(BodyError) as err:
        parse_json(doc.encode())
    assert err.value.kind == kind


def test_json_within_bounds_still_parses():
    doc = {"tickets": [{"id": i, "contact": {"tags": [{"id": 1}]}} for i in range(200)]}
    assert parse_json(json.dumps(doc).encode()) == doc
    deep = {"a": 1}
    for _ in range(60):
        deep = {"a": deep}
    assert parse_json(json.dumps(deep).encode()) == deep
    brackets_in_strings = {"body": "[" * 10_000 + "{" * 10_000}
    assert parse_json(json.dumps(brackets_in_strings).encode()) == brackets_in_strings


@pytest.mark.parametrize("value, expected", [
    (5, 5), ("5", 5), ("²", None), ("\u0663", None), ("1" * 5000, None), (1 << 63, None), ((1 << 63) - 1, (1 << 63) - 1),
    (str(1 << 63), None), (0, None), (-3, None), ("-3", None), (True, None), (1.0, None), ([1], None), (None, None),
])
def test_as_int_takes_only_int64_ids(value, expected):
    from whazing_gateway.decode import as_int

    assert as_int(value) == expected


@pytest.mark.parametrize("payload", [
    "4²", "42\u0663[\"a\"]", "45²-[\"a\"]", "451" + "1" * 5000 + "-[\"a\"]", "42" + "1" * 5000 + '["a"]',
    "42" + "[" * 100_000, '42["1:ticketList",' + "[" * 50_000 + "]" * 50_000 + "]",
    '42["1:ticketList",{"type":"ticket:update","payload":{"id":' + "9" * 5000 + "}}]",
])
def test_socket_frames_raise_only_decode_error(payload):
    with pytest.raises(DecodeError):
        decode(WsFrame("f", 1.0, False, payload.encode()))


def test_frames_above_the_inspection_limit_are_not_read():
    frame = '42["1:ticketList",{"type":"ticket:update","payload":{"id":1,"status":"open","pad":"' + "x" * 5000 + '"}}]'
    assert decode(WsFrame("f", 1.0, False, frame.encode()), json_limit=1 << 20)
    with pytest.raises(DecodeError) as err:
        decode(WsFrame("f", 1.0, False, frame.encode()), json_limit=1000)
    assert err.value.kind == "too_large"


@pytest.mark.parametrize("claims", [
    "[" * 100_000, "9" * 5000, '{"tenantId": ' + "9" * 30 + "}", '{"tenantId": {"a": [1]}, "id": "²"}', '"just a string"', "[1, 2]",
])
def test_hostile_jwt_payloads_give_no_claims_or_no_ids(claims):
    from whazing_gateway.decode import as_int

    enc = base64.urlsafe_b64encode(claims.encode()).rstrip(b"=").decode()
    got = jwt_claims(f"Bearer e30.{enc}.sig")
    assert isinstance(got, dict)
    assert as_int(got.get("tenantId")) is None and as_int(got.get("id")) is None
    rec = HttpRequestSeen("r", 1.0, "POST", "/tickets", "", {"authorization": f"Bearer e30.{enc}.sig"}, None)
    [call] = decode(rec)
    assert call.tenant_id is None and call.user_id is None


def test_oversized_jwt_is_not_decoded():
    enc = base64.urlsafe_b64encode(json.dumps({"tenantId": 1, "pad": "x" * 20_000}).encode()).rstrip(b"=").decode()
    assert jwt_claims(f"Bearer e30.{enc}.sig") == {}


def test_huge_bearer_tokens_are_never_kept_by_the_claims_cache():
    from whazing_gateway.decode import _claims

    before = _claims.cache_info().currsize
    for i in range(20):
        assert jwt_claims(f"Bearer e30.{'A' * (1 << 20)}{i}.sig") == {}
    assert _claims.cache_info().currsize == before
