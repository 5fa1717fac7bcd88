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
