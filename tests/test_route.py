"""The Router against Whazing's native rule behaviours (README section 4), table-driven.

Rules are written as YAML and loaded by the real loader; state is the real MemoryState.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whazing_gateway import model
from whazing_gateway.config import load_rules
from whazing_gateway.ops import metrics
from whazing_gateway.route.router import Router
from whazing_gateway.state.memory import MemoryState

TARGETS = """
targets:
  - {name: n8n, url: "http://127.0.0.1:5678/webhook/whazing"}
  - {name: other, url: "http://127.0.0.1:5678/webhook/other"}
  - {name: env, url: "http://127.0.0.1:5678/webhook/env", format: envelope}
"""


def make_rules(tmp_path: Path, text: str):
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "00-targets.yaml").write_text(TARGETS)
    (d / "rules.yaml").write_text(text)
    return load_rules(d, env={})


def ticket(**kw):
    t = {"id": 10, "status": "open", "queueId": None, "userId": 7, "whatsappId": 1, "protocol": "2025-10",
         "whatsapp": {"id": 1, "name": "WhatsApp"}, "isGroup": False, "contactId": 45,
         "contact": {"id": 45, "name": "João", "number": "5511999999999", "isGroup": False,
                     "tags": [{"id": 2, "tag": "VIP"}]}}
    t.update(kw)
    return t


_seq = iter(range(1, 10**6))


def message_event(kind=model.MESSAGE_RECEIVED, *, body="Quero falar com um atendente", msg_status=None,
                  tenant=1, **tkw):
    t = ticket(**tkw)
    n = next(_seq)
    msg = {"id": f"m{n}", "messageId": f"3EB0{n}", "body": body, "fromMe": kind == model.MESSAGE_SENT,
           "timestamp": 1735689600 + n, "status": "received", "mediaType": "chat", "ticketId": t["id"],
           "ticket": {"id": t["id"], "status": msg_status or t["status"], "queueId": t["queueId"],
                      "whatsappId": t["whatsappId"], "isGroup": t["isGroup"]}}
    return model.Event(id=f"e{n}", type=kind, tenant_id=tenant, ticket_id=t["id"], ts=1735689600.0 + n,
                       ticket=t, message=msg)


def ticket_event(kind, *, changes=None, origin=None, last_body="última", tenant=1, **tkw):
    t = ticket(**tkw)
    n = next(_seq)
    msg = None if last_body is None else {"id": f"m{n}", "messageId": f"3EB0{n}", "body": last_body,
                                          "fromMe": False, "timestamp": 1735689000, "status": "received",
                                          "ticket": {"id": t["id"], "status": "pending"}}
    return model.Event(id=f"e{n}", type=kind, tenant_id=tenant, ticket_id=t["id"], ts=1735689600.0 + n,
                       ticket=t, message=msg, changes=changes or {}, origin=origin)


def channel_rule(**kw):
    base = {"channel": 1, "targets": "n8n",
            "events": ["message.received", "message.sent", "ticket.created", "ticket.transferred", "ticket.closed"]}
    base.update(kw)
    return "channels:\n  - " + json.dumps(base) + "\n"


async def routed(rules, *events):
    router = Router(rules, MemoryState())
    out = []
    for ev in events:
        out.append(await router.route(ev))
    return out


# ------------------------------------------------------------------------------ channel rules

CHANNEL_CASES = [
    # (id, rule overrides, event factory, delivered?)
    ("received ticked", {}, lambda: message_event(), True),
    ("sent ticked", {}, lambda: message_event(model.MESSAGE_SENT), True),
    ("received unticked", {"events": ["message.sent"]}, lambda: message_event(), False),
    ("sent unticked", {"events": ["message.received"]}, lambda: message_event(model.MESSAGE_SENT), False),
    ("new ticket ticked", {}, lambda: ticket_event(model.TICKET_CREATED, origin="NewTicket"), True),
    ("new ticket unticked", {"events": ["message.received"]},
     lambda: ticket_event(model.TICKET_CREATED, origin="NewTicket"), False),
    ("transfer ticked", {}, lambda: ticket_event(model.TICKET_TRANSFERRED, changes={"queueId": (None, 3)}), True),
    ("transfer unticked", {"events": ["ticket.closed"]},
     lambda: ticket_event(model.TICKET_TRANSFERRED, changes={"queueId": (None, 3)}), False),
    ("closed ticked", {}, lambda: ticket_event(model.TICKET_CLOSED, status="closed"), True),
    ("closed unticked", {"events": ["ticket.created"]}, lambda: ticket_event(model.TICKET_CLOSED), False),
    ("no event listed: message", {"events": []}, lambda: message_event(), False),
    ("no event listed: ticket", {"events": []}, lambda: ticket_event(model.TICKET_CREATED), False),
    ("reopened not native by default", {}, lambda: ticket_event(model.TICKET_REOPENED), False),
    ("reopened listed", {"events": ["ticket.reopened"]}, lambda: ticket_event(model.TICKET_REOPENED), True),
    ("accepted listed (alias)", {"events": ["AcceptTicket"]}, lambda: ticket_event(model.TICKET_ACCEPTED), True),
    ("switched off", {"enabled": False}, lambda: message_event(), False),
    ("open filter on, open ticket", {"open": True, "pending": False}, lambda: message_event(status="open"), True),
    ("open filter off, open ticket", {"open": False, "pending": True}, lambda: message_event(status="open"), False),
    ("pending filter on, pending ticket", {"open": False, "pending": True},
     lambda: message_event(status="pending"), True),
    ("pending filter off, pending ticket", {"open": True, "pending": False},
     lambda: message_event(status="pending"), False),
    ("both filters off: no messages", {"open": False, "pending": False}, lambda: message_event(), False),
    ("both filters off: sent too", {"open": False, "pending": False},
     lambda: message_event(model.MESSAGE_SENT, status="pending"), False),
    ("both filters off: ticket events still go", {"open": False, "pending": False},
     lambda: ticket_event(model.TICKET_CLOSED, status="closed"), True),
    ("filters read the status at message time", {"open": True, "pending": False},
     lambda: message_event(status="open", msg_status="pending"), False),
    ("groups off: group message", {"groups": False}, lambda: message_event(isGroup=True), False),
    ("groups off: group ticket event", {"groups": False},
     lambda: ticket_event(model.TICKET_CREATED, isGroup=True), False),
    ("groups on: group message", {"groups": True}, lambda: message_event(isGroup=True), True),
    ("groups off: group seen on contact only", {},
     lambda: message_event(contact={"id": 9, "number": "1203630", "isGroup": True}), False),
    ("channel by name", {"channel": "whatsapp"}, lambda: message_event(), True),
    ("other channel id", {"channel": 2}, lambda: message_event(), False),
    ("other channel name", {"channel": "Vendas"}, lambda: message_event(), False),
    ("channel list", {"channel": [5, 1]}, lambda: message_event(), True),
    ("every channel", {"channel": "*"}, lambda: message_event(whatsappId=8, whatsapp={"id": 8, "name": "X"}), True),
    # beyond native: match conditions
    ("match tenant", {"match": {"tenant": [1]}}, lambda: message_event(), True),
    ("match tenant other", {"match": {"tenant": 2}}, lambda: message_event(), False),
    ("match contact number", {"match": {"contact_number": "^5511"}}, lambda: message_event(), True),
    ("match contact number other", {"match": {"contact_number": "^5521"}}, lambda: message_event(), False),
    ("match text", {"match": {"text": "(?i)atendente"}}, lambda: message_event(), True),
    ("match text other", {"match": {"text": "boleto"}}, lambda: message_event(), False),
    ("match text on ticket event without message", {"match": {"text": "x"}},
     lambda: ticket_event(model.TICKET_CLOSED, last_body=None), False),
    ("match tag by name", {"match": {"tags": ["vip"]}}, lambda: message_event(), True),
    ("match tag by id", {"match": {"tags": [2]}}, lambda: message_event(), True),
    ("match tag absent", {"match": {"tags": ["churn"]}}, lambda: message_event(), False),
]


@pytest.mark.parametrize("case, overrides, make, delivered", CHANNEL_CASES, ids=[c[0] for c in CHANNEL_CASES])
async def test_channel_rule_behaviour(tmp_path, case, overrides, make, delivered):
    rules = make_rules(tmp_path, channel_rule(**overrides))
    event = make()
    [out] = await routed(rules, event)
    assert [d.target for d in out] == (["n8n"] if delivered else [])
    for d in out:
        assert d.id == model.Delivery.make_id(event.id, "n8n")
        assert d.event_id == event.id and d.event_type == event.type
        assert d.order_key == "1:10" and d.created_at == event.ts and d.ticket_id == 10
        assert isinstance(json.loads(d.body), dict)


async def test_ticket_created_body_carries_origin(tmp_path):
    rules = make_rules(tmp_path, channel_rule())
    [a], [b] = await routed(rules, ticket_event(model.TICKET_CREATED, origin="NewTicketUserCreate"),
                            ticket_event(model.TICKET_CREATED, origin="NewTicket"))
    assert json.loads(a.body)["Type"] == "NewTicketUserCreate"
    assert json.loads(b.body)["Type"] == "NewTicket"


# ------------------------------------------------------------------------------ queue integrations


def queue_rule(**kw):
    base = {"queue": 3, "targets": "n8n"}
    base.update(kw)
    return "queues:\n  - " + json.dumps(base) + "\n"


def into(q, old=None, **kw):
    return ticket_event(model.TICKET_TRANSFERRED, changes={"queueId": (old, q)}, queueId=q,
                        status=kw.pop("status", "pending"), **kw)


def msg(q, kind=model.MESSAGE_RECEIVED, **kw):
    return message_event(kind, queueId=q, **kw)


SOT = model.MESSAGE_RECEIVED  # the start_on_transfer webhook is message-shaped

QUEUE_CASES = [
    # (id, rule overrides, events in order, expected event type per step (None: nothing))
    ("start_on_transfer on: fires at once, then every message, stops on leaving",
     {"start_on_transfer": True},
     lambda: [into(3), msg(3), msg(3, model.MESSAGE_SENT), into(5, old=3), msg(5), msg(5, model.MESSAGE_SENT)],
     [SOT, model.MESSAGE_RECEIVED, model.MESSAGE_SENT, None, None, None]),
    ("start_on_transfer off: nothing on transfer, first on next received",
     {"start_on_transfer": False},
     lambda: [into(3), msg(3), msg(3, model.MESSAGE_SENT), into(5, old=3), msg(5)],
     [None, model.MESSAGE_RECEIVED, model.MESSAGE_SENT, None, None]),
    ("start_on_transfer off: first on next sent",
     {}, lambda: [into(3), msg(3, model.MESSAGE_SENT), msg(3)],
     [None, model.MESSAGE_SENT, model.MESSAGE_RECEIVED]),
    ("start_on_transfer with no last received message: skipped",
     {"start_on_transfer": True}, lambda: [into(3, last_body=None), msg(3)], [None, model.MESSAGE_RECEIVED]),
    ("transfer into another queue does not fire",
     {"start_on_transfer": True}, lambda: [into(4), msg(4)], [None, None]),
    ("leaving the queue by message (queueId changed without a seen transfer)",
     {}, lambda: [msg(3), msg(None), msg(3)], [model.MESSAGE_RECEIVED, None, model.MESSAGE_RECEIVED]),
    ("received toggle off", {"events": ["message.sent"]},
     lambda: [msg(3), msg(3, model.MESSAGE_SENT)], [None, model.MESSAGE_SENT]),
    ("sent toggle off", {"events": ["message.received"]},
     lambda: [msg(3), msg(3, model.MESSAGE_SENT)], [model.MESSAGE_RECEIVED, None]),
    ("open filter off", {"open": False},
     lambda: [msg(3, status="open"), msg(3, status="pending")], [None, model.MESSAGE_RECEIVED]),
    ("pending filter off", {"pending": False},
     lambda: [msg(3, status="open"), msg(3, status="pending")], [model.MESSAGE_RECEIVED, None]),
    ("both filters off: nothing, not even on transfer", {"open": False, "pending": False, "start_on_transfer": True},
     lambda: [into(3), msg(3, status="open"), msg(3, status="pending")], [None, None, None]),
    ("start_on_transfer respects pending filter", {"pending": False, "start_on_transfer": True},
     lambda: [into(3, status="pending"), msg(3, status="open")], [None, model.MESSAGE_RECEIVED]),
    ("groups off", {"groups": False, "start_on_transfer": True},
     lambda: [into(3, isGroup=True), msg(3, isGroup=True)], [None, None]),
    ("groups on", {"groups": True, "start_on_transfer": True},
     lambda: [into(3, isGroup=True), msg(3, isGroup=True)], [SOT, model.MESSAGE_RECEIVED]),
    ("ticket events never go to queue integrations", {"start_on_transfer": True},
     lambda: [ticket_event(model.TICKET_CLOSED, queueId=3, status="closed"),
              ticket_event(model.TICKET_CREATED, queueId=3), ticket_event(model.TICKET_ACCEPTED, queueId=3)],
     [None, None, None]),
    ("switched off", {"enabled": False, "start_on_transfer": True}, lambda: [into(3), msg(3)], [None, None]),
    ("queue by name", {"queue": "suporte", "start_on_transfer": True},
     lambda: [into(3, queue={"id": 3, "queue": "Suporte"}), msg(3, queue={"id": 3, "queue": "Suporte"})],
     [SOT, model.MESSAGE_RECEIVED]),
    ("user-only transfer keeps the integration", {},
     lambda: [msg(3), ticket_event(model.TICKET_TRANSFERRED, changes={"userId": (7, 8)}, queueId=3), msg(3)],
     [model.MESSAGE_RECEIVED, None, model.MESSAGE_RECEIVED]),
    ("partial ticket without queueId: last known queue", {},
     lambda: [into(3), _no_queue_msg()],
     [None, model.MESSAGE_RECEIVED]),
]


def _no_queue_msg():
    ev = message_event()
    t = dict(ev.ticket)
    del t["queueId"]
    m = dict(ev.message)
    m["ticket"] = {k: v for k, v in m["ticket"].items() if k != "queueId"}
    return model.Event(id=ev.id, type=ev.type, tenant_id=ev.tenant_id, ticket_id=ev.ticket_id, ts=ev.ts,
                       ticket=t, message=m)


@pytest.mark.parametrize("case, overrides, make, expected", QUEUE_CASES, ids=[c[0] for c in QUEUE_CASES])
async def test_queue_integration_behaviour(tmp_path, case, overrides, make, expected):
    rules = make_rules(tmp_path, queue_rule(**overrides))
    events = make()
    outs = await routed(rules, *events)
    got = [[d.event_type for d in out] for out in outs]
    assert got == [[] if e is None else [e] for e in expected]


async def test_start_on_transfer_body_is_the_last_received_message_in_the_new_queue(tmp_path):
    rules = make_rules(tmp_path, queue_rule(start_on_transfer=True))
    ev = into(3, old=1, last_body="preciso de ajuda")
    [[d]] = await routed(rules, ev)
    body = json.loads(d.body)
    assert "Type" not in body
    assert body["messageBody"] == "preciso de ajuda"
    assert body["fromMe"] is False
    assert body["ticket"]["queueId"] == 3 and body["ticket"]["status"] == "pending"
    assert d.event_id == ev.id and d.event_type == model.MESSAGE_RECEIVED
    assert d.id != model.Delivery.make_id(ev.id, "n8n")  # leaves room for the channel's TransferTicket
    # stable: the same transfer routed again (another replica, a restart) gives the same id
    [[d2]] = await routed(rules, ev)
    assert d2.id == d.id and d2.body == d.body


async def test_queue_state_is_kept_under_qi_keys(tmp_path):
    rules = make_rules(tmp_path, queue_rule(start_on_transfer=True))
    state = MemoryState()
    router = Router(rules, state)
    await router.route(into(3, tenant=4))
    assert await state.get("qi:4:10") == {"queue": 3, "active": True}
    await router.route(msg(5, tenant=4))
    assert await state.get("qi:4:10") == {"queue": 5, "active": False}


# ------------------------------------------------------------------------------ several rules and targets


async def test_same_target_via_several_rules_gives_one_delivery(tmp_path):
    text = channel_rule() + "  - " + json.dumps({"channel": "*", "targets": ["n8n", "other"],
                                                  "events": ["message.received"]}) + "\n" + \
        "queues:\n  - " + json.dumps({"queue": 3, "targets": ["n8n", "env"]}) + "\n"
    rules = make_rules(tmp_path, text)
    ev = msg(3)
    [out] = await routed(rules, ev)
    assert sorted(d.target for d in out) == ["env", "n8n", "other"]
    assert len({d.id for d in out}) == 3
    by = {d.target: d for d in out}
    assert json.loads(by["env"].body)["type"] == "message.received"
    assert json.loads(by["n8n"].body)["messageId"] == ev.message["messageId"]
    assert by["n8n"].body == by["other"].body


async def test_transfer_to_same_target_by_channel_and_queue_gives_both_webhooks(tmp_path):
    rules = make_rules(tmp_path, channel_rule() + queue_rule(start_on_transfer=True))
    [out] = await routed(rules, into(3))
    kinds = sorted(("Type" in json.loads(d.body), d.event_type) for d in out)
    assert kinds == [(False, model.MESSAGE_RECEIVED), (True, model.TICKET_TRANSFERRED)]
    assert {d.target for d in out} == {"n8n"}


async def test_routed_deliveries_are_counted(tmp_path):
    rules = make_rules(tmp_path, channel_rule(targets=["other"]))

    def value():
        return metrics.REGISTRY.get_sample_value("whazing_gateway_deliveries_routed_total",
                                                 {"target": "other", "type": "message.sent"}) or 0

    before = value()
    await routed(rules, message_event(model.MESSAGE_SENT), message_event(model.MESSAGE_SENT))
    assert value() == before + 2


async def test_rules_swap_takes_effect_on_next_event(tmp_path):
    router = Router(make_rules(tmp_path, channel_rule(events=[])), MemoryState())
    assert await router.route(message_event()) == []
    router.rules = make_rules(tmp_path, channel_rule())
    assert [d.target for d in await router.route(message_event())] == ["n8n"]


async def test_event_without_ticket_goes_nowhere_by_queue(tmp_path):
    rules = make_rules(tmp_path, queue_rule(queue="*"))
    ev = model.Event(id="x", type=model.MESSAGE_RECEIVED, tenant_id=1, ticket_id=None, ts=1.0, message={"body": "a"})
    assert await routed(rules, ev) == [[]]
