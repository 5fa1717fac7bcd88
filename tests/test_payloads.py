"""Webhook bodies: Whazing's native shapes field for field, the envelope, and the sample n8n flow."""

from __future__ import annotations

import json
import re

from whazing_gateway import model
from whazing_gateway.route.payloads import render, test_body

CONTACT = {"id": 45, "name": "João", "number": "5511999999999", "profilePicUrl": None, "email": "",
           "isGroup": False, "pushname": "João", "lid": None, "kanbanId": None, "followupId": None,
           "createdAt": "2025-01-01T00:00:00.000Z"}
TICKET = {"id": 123, "status": "open", "protocol": "20250101-1", "queueId": 3, "userId": 7, "apiConfig": None,
          "closingReasonId": None, "whatsappId": 1, "contactId": 45, "isGroup": False, "tenantId": 1,
          "contact": CONTACT, "whatsapp": {"id": 1, "name": "WhatsApp", "status": "CONNECTED"},
          "queue": {"id": 3, "queue": "Suporte"}, "lastMessage": "ok"}
MESSAGE = {"id": "b5c1", "messageId": "3EB0A1B2C3D4", "body": "Quero falar com um atendente",
           "timestamp": 1735689600, "status": "received", "fromMe": False, "mediaType": "chat", "mediaUrl": None,
           "isDeleted": False, "sendType": None, "edited": False, "reactions": [], "dataJson": None,
           "ticketId": 123, "contactId": 45, "ack": 0,
           "ticket": {"id": 123, "status": "pending", "queueId": 3, "userId": None, "whatsappId": 1,
                      "isGroup": False, "contact": CONTACT},
           "contact": CONTACT}

NATIVE_CONTACT = {"id": 45, "name": "João", "phoneNumber": "5511999999999", "profilePicUrl": None, "email": "",
                  "isGroup": False, "pushname": "João", "lid": None, "kanbanId": None, "followupId": None}


def ev(kind, **kw):
    base = dict(id="evt_1", type=kind, tenant_id=1, ticket_id=123, ts=1735689600.5, ticket=TICKET, message=MESSAGE)
    base.update(kw)
    return model.Event(**base)


def test_transfer_ticket_body_matches_native_shape_exactly():
    body = json.loads(render(ev(model.TICKET_TRANSFERRED, changes={"queueId": (None, 3)})))
    assert body == {
        "Type": "TransferTicket",
        "messageBody": "ok",  # the ticket's lastMessage, not the last received message
        "ticket": {"id": 123, "status": "open", "protocol": "20250101-1", "queueId": 3, "userId": 7,
                   "apiConfig": None, "closingReasonId": None},
        "contact": NATIVE_CONTACT,
        "whatsapp": {"id": 1, "name": "WhatsApp"},
    }
    assert list(body) == ["Type", "messageBody", "ticket", "contact", "whatsapp"]


def test_ticket_type_names():
    names = {}
    for kind, origin in [(model.TICKET_CREATED, "NewTicket"), (model.TICKET_CREATED, "NewTicketUserCreate"),
                         (model.TICKET_CREATED, None), (model.TICKET_TRANSFERRED, None),
                         (model.TICKET_CLOSED, None), (model.TICKET_REOPENED, None), (model.TICKET_ACCEPTED, None)]:
        names[(kind, origin)] = json.loads(render(ev(kind, origin=origin)))["Type"]
    assert names == {
        (model.TICKET_CREATED, "NewTicket"): "NewTicket",
        (model.TICKET_CREATED, "NewTicketUserCreate"): "NewTicketUserCreate",
        (model.TICKET_CREATED, None): "NewTicket",
        (model.TICKET_TRANSFERRED, None): "TransferTicket",
        (model.TICKET_CLOSED, None): "ClosedTicket",
        (model.TICKET_REOPENED, None): "ReopenTicket",
        (model.TICKET_ACCEPTED, None): "AcceptTicket",
    }


def test_ticket_body_messagebody_is_the_tickets_last_message_whoever_sent_it():
    bot_said = dict(TICKET, lastMessage="Você será atendido pelo setor de Vendas.")
    for kind in (model.TICKET_TRANSFERRED, model.TICKET_CLOSED, model.TICKET_REOPENED, model.TICKET_ACCEPTED):
        assert json.loads(render(ev(kind, ticket=bot_said)))["messageBody"] == bot_said["lastMessage"], kind
    inbound = dict(TICKET, lastMessage="Olá, quero comprar")
    assert json.loads(render(ev(model.TICKET_CREATED, origin="NewTicket", ticket=inbound)))["messageBody"] == "Olá, quero comprar"


def test_agent_created_ticket_has_empty_messagebody():
    body = json.loads(render(ev(model.TICKET_CREATED, origin="NewTicketUserCreate")))
    assert body["Type"] == "NewTicketUserCreate" and body["messageBody"] == ""


def test_ticket_body_messagebody_without_lastmessage_falls_back_to_last_received_then_empty():
    bare = {k: v for k, v in TICKET.items() if k != "lastMessage"}
    assert json.loads(render(ev(model.TICKET_CLOSED, ticket=bare)))["messageBody"] == MESSAGE["body"]
    assert json.loads(render(ev(model.TICKET_CLOSED, message=None, ticket=bare)))["messageBody"] == ""
    assert json.loads(render(ev(model.TICKET_CLOSED, ticket=dict(TICKET, lastMessage=None), message=None)))["messageBody"] == ""


def test_message_body_matches_native_shape_exactly():
    raw = render(ev(model.MESSAGE_RECEIVED))
    body = json.loads(raw)
    assert body == {
        "messageId": "3EB0A1B2C3D4", "messageBody": "Quero falar com um atendente", "timestamp": 1735689600,
        "status": "received", "fromMe": False, "mediaType": "chat", "mediaUrl": None, "mediaBase64": None,
        "isDeleted": False, "sendType": None, "edited": False, "reactions": [], "dataJson": None,
        "ticket": {"id": 123, "status": "pending", "protocol": "20250101-1", "queueId": 3, "apiConfig": None,
                   "isGroup": False},
        "contact": NATIVE_CONTACT, "contactmessage": None, "user": None,
        "whatsapp": {"id": 1, "name": "WhatsApp"},
    }
    assert "Type" not in body
    assert list(body)[:3] == ["messageId", "messageBody", "timestamp"]
    assert b" " not in raw.replace(b"Quero falar com um atendente", b"")  # compact
    assert "João".encode() in raw  # UTF-8, not \u escapes


def test_fields_the_traffic_did_not_show_are_null_and_integers_stay_integers():
    msg = {"id": "m1", "body": "oi", "fromMe": True, "userId": 7}
    ticket = {"id": 9, "queueId": 4, "whatsappId": 2, "contact": {"id": 5, "number": 5521988887777}}
    body = json.loads(render(model.Event(id="e", type=model.MESSAGE_SENT, tenant_id=1, ticket_id=9, ts=0.0,
                                         ticket=ticket, message=msg)))
    assert body["messageId"] == "m1"  # no WhatsApp id in the traffic: the message's id
    assert body["timestamp"] is None and body["status"] is None and body["reactions"] is None
    assert body["mediaType"] is None and body["edited"] is None and body["isDeleted"] is None
    assert body["ticket"] == {"id": 9, "status": None, "protocol": None, "queueId": 4, "apiConfig": None,
                              "isGroup": None}
    assert body["contact"]["id"] == 5 and body["contact"]["phoneNumber"] == "5521988887777"
    assert body["contact"]["name"] is None and body["contact"]["email"] is None
    assert body["whatsapp"] == {"id": 2, "name": None}
    assert body["user"] == {"id": 7, "name": None, "email": None}
    assert isinstance(body["ticket"]["id"], int) and isinstance(body["ticket"]["queueId"], int)


def test_group_message_names_the_real_sender_in_contactmessage():
    group = {"id": 80, "name": "Equipe", "number": "120363000000", "isGroup": True}
    sender = {"id": 81, "name": "Ana", "number": "5511911112222", "isGroup": False}
    msg = dict(MESSAGE, contact=sender, ticket={"id": 123, "status": "open", "isGroup": True, "contact": group})
    body = json.loads(render(ev(model.MESSAGE_RECEIVED, message=msg, ticket=dict(TICKET, isGroup=True, contact=group))))
    assert body["contact"]["id"] == 80 and body["contact"]["isGroup"] is True
    assert body["contactmessage"]["id"] == 81 and body["contactmessage"]["phoneNumber"] == "5511911112222"
    assert body["ticket"]["isGroup"] is True


def test_envelope():
    body = json.loads(render(ev(model.TICKET_TRANSFERRED, changes={"queueId": (None, 3), "userId": (7, 8)},
                                origin=None), "envelope"))
    assert body["type"] == "ticket.transferred"
    assert body["id"] == "evt_1"
    assert body["timestamp"] == "2025-01-01T00:00:00.500Z"
    assert body["data"]["changes"] == {"queueId": {"from": None, "to": 3}, "userId": {"from": 7, "to": 8}}
    assert body["data"]["ticket"]["id"] == 123 and body["data"]["message"]["messageId"] == "3EB0A1B2C3D4"
    assert body["data"]["origin"] is None and body["data"]["tenantId"] == 1


def test_unknown_format_is_an_error():
    try:
        render(ev(model.MESSAGE_SENT), "xml")
    except ValueError as exc:
        assert "xml" in str(exc)
    else:
        raise AssertionError("no error")


def test_test_button_body():
    assert json.loads(test_body(1735689600.0)) == {"event": "test", "origin": "webhook-config",
                                                   "timestamp": "2025-01-01T00:00:00.000Z"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(test_body())["timestamp"])


# The "Dados_Atendimento" Set node of the official sample flow (flows/Modelo_Whazing_n8n.json):
# n8n hands the flow {headers, params, query, body}; these must resolve, with these types.
SAMPLE_FLOW_ASSIGNMENTS = [
    ("={{ $json.body.ticket.id }}", "number"),
    ("={{ $json.body.ticket.status }}", "string"),
    ("={{ $json.body.ticket.queueId }}", "number"),
    ("={{ $json.body.contact.id }}", "number"),
    ("={{ $json.body.contact.name }}", "string"),
    ("={{ $json.body.contact.phoneNumber }}", "string"),
    ("={{ $json.body.messageBody }}", "string"),
]


def _resolve(expression: str, item: dict):
    path = re.fullmatch(r"=\{\{ \$json\.(\S+) \}\}", expression).group(1)
    value = item
    for part in path.split("."):
        value = value[part]
    return value


def test_sample_n8n_flow_expressions_resolve_on_our_bodies():
    for event in (ev(model.MESSAGE_RECEIVED), ev(model.MESSAGE_SENT),
                  ev(model.TICKET_TRANSFERRED, changes={"queueId": (None, 3)}),
                  ev(model.TICKET_CREATED, origin="NewTicket")):
        item = {"headers": {}, "params": {}, "query": {}, "body": json.loads(render(event))}
        for expression, kind in SAMPLE_FLOW_ASSIGNMENTS:
            value = _resolve(expression, item)
            if kind == "number":
                assert isinstance(value, int) and not isinstance(value, bool), (event.type, expression, value)
            else:
                assert isinstance(value, str), (event.type, expression, value)


def test_media_in_base64_fills_the_field_or_appends_a_note():
    from whazing_gateway.upstream.media import Media

    doc = dict(MESSAGE, mediaType="document", mediaUrl="http://w/public/0001-a.pdf")
    plain = json.loads(render(ev(model.MESSAGE_RECEIVED, message=doc)))
    got = json.loads(render(ev(model.MESSAGE_RECEIVED, message=doc), media=Media("JVBERg==", None, 4)))
    assert got["mediaBase64"] == "JVBERg==" and list(got) == list(plain)  # the native keys, in order
    skipped = json.loads(render(ev(model.MESSAGE_RECEIVED, message=doc), media=Media(None, "too big")))
    assert skipped["mediaBase64"] is None and list(skipped) == list(plain) + ["mediaBase64Note"]
    assert skipped["mediaBase64Note"] == "too big"
    env = json.loads(render(ev(model.MESSAGE_RECEIVED, message=doc), "envelope", Media("JVBERg==", None, 4)))
    assert env["data"]["mediaBase64"] == "JVBERg==" and "mediaBase64" not in json.loads(
        render(ev(model.MESSAGE_RECEIVED, message=doc), "envelope"))["data"]
