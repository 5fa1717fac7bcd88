"""Native parity over the scripted day: a real gateway in front of the stand-in, a real receiver,
native (`whazing`) bodies. Each ticket event's `messageBody` is Whazing's value (notes, section 4)
and group messages name their real sender in `contactmessage`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from tests.harness import GatewayProcess, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_standin import scenario, seed
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin

pytestmark = pytest.mark.slow

TRANSFER_NOTICE_START = "*Mensagem Automática*:\nO seu atendimento está sendo transferido"


def _ticket_bodies(bodies: list[dict]) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for b in bodies:
        if "Type" in b:
            out[b["ticket"]["id"]].append((b["Type"], b["messageBody"]))
    return dict(out)


async def test_scripted_day_ticket_messagebody_and_group_sender(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url(), fmt="whazing"),
                              env={"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL,
                                   "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}).start()
    try:
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        day = await play_day(gw.url)
        A, B, C, D = (day.tickets[k] for k in "ABCD")
        await receiver.wait_for(33, timeout=60)  # the day's 33 events (test_gateway_e2e)
        await asyncio.sleep(1.5)  # a late duplicate would show by now
        bodies = [r.json() for r in receiver.requests]
        assert len(bodies) == 33
        got = _ticket_bodies(bodies)

        notice = next(b["messageBody"] for b in bodies
                      if "Type" not in b and b["ticket"]["id"] == A and b["messageBody"].startswith(TRANSFER_NOTICE_START))
        maria_1, maria_3 = "Olá, quero comprar um plano", "Esqueci de perguntar sobre o boleto"
        joao_1, joao_reply = "Meu pedido não chegou", "Oi João, vou verificar o seu pedido."
        carla_reply = "Bom dia Carla, sua fatura está disponível."
        group_1, group_reply = "Bom dia, precisamos de 10 licenças", "Bom dia! Envio a proposta ainda hoje."
        assert got[A] == [
            ("NewTicket", maria_1),  # the inbound text that opened it
            ("TransferTicket", "Você será atendido pelo setor de Vendas."),  # bot transfer: the bot's message
            ("AcceptTicket", "Você será atendido pelo setor de Vendas."),
            ("TransferTicket", "catalogo.pdf"),  # UI transfer: the agent's file was the last message
            ("AcceptTicket", notice),
            ("ClosedTicket", notice),  # a system notice is a message like any other
            ("ReopenTicket", maria_3),  # the message that reopened it
            ("ClosedTicket", maria_3),  # bulk close
        ]
        assert got[B] == [
            ("NewTicket", joao_1),
            ("TransferTicket", joao_1),  # bot transfer with no message of its own
            ("TransferTicket", joao_1),  # external API updatequeue
            ("AcceptTicket", joao_1),
            ("ClosedTicket", joao_reply),  # the agent's message, not the last received one
            ("ReopenTicket", joao_reply),
            ("ClosedTicket", joao_reply),
        ]
        assert got[C] == [("NewTicketUserCreate", ""), ("ClosedTicket", carla_reply)]  # auto close
        assert got[D] == [("NewTicket", group_1), ("AcceptTicket", "E suporte incluso, por favor"),
                          ("ClosedTicket", group_reply)]

        group_msgs = [b for b in bodies if "Type" not in b and b["ticket"]["id"] == D]
        received = [b for b in group_msgs if not b["fromMe"]]
        assert [(b["contact"]["phoneNumber"], b["contact"]["isGroup"]) for b in received] == \
            [(scenario.GROUP[0], True)] * 2  # the ticket's contact: the group
        assert [b["contactmessage"]["phoneNumber"] for b in received] == [scenario.PAULO[0], scenario.ANA[0]]
        assert [b["contactmessage"]["name"] for b in received] == [scenario.PAULO[1], scenario.ANA[1]]
        assert all(set(b["contactmessage"]) == set(b["contact"]) and len(b["contact"]) == 10 for b in received)
        sent = [b for b in group_msgs if b["fromMe"]]
        assert sent and all(b["contactmessage"] is None for b in sent)  # the agent writes as the group ticket
        assert all(b["contactmessage"] is None for b in bodies if "Type" not in b and b["ticket"]["id"] != D)
    finally:
        await gw.stop()
        await receiver.stop()
        await standin.stop()
