"""A realistic helpdesk day played against a Whazing base URL (the stand-in, or a gateway in front).

Everything goes through HTTP only: the UI's REST calls with agents' tokens, the external API
with the API token, and `/__sim/` for what WhatsApp and the bot do. Each step awaits its
response, then pauses `step_delay`, so the pushes of distinct steps do not interleave. After a
`/__sim/reset` the ids (tickets, contacts, messages) and the order of pushes are the same
every run; only timestamps vary.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from whazing_standin import seed

log = structlog.get_logger(__name__)

# The day's cast: (number, name).
MARIA = ("5511988880001", "Maria Souza")
JOAO = ("5511988880002", "João Lima")
CARLA = ("5511988880003", "Carla Dias")
PAULO = ("5511988880004", "Paulo Reis")
ANA = ("5511988880005", "Ana Prado")
GROUP = ("120363000000000001", "Equipe Compras")

CATALOG = b"%PDF-1.4\n% stand-in catalogue\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


class ScenarioError(RuntimeError):
    """A step got an answer the scenario did not expect (the day cannot go on)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happened: `name`, the ticket it touched, and what a test may need."""

    index: int
    name: str
    ticket_id: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioLog:
    """The steps in order, plus the ticket ids by label ("A", "B", "C", "D")."""

    steps: list[Step] = field(default_factory=list)
    tickets: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, ticket_id: int | None = None, **detail: Any) -> Step:
        step = Step(len(self.steps) + 1, name, ticket_id, detail)
        self.steps.append(step)
        log.info("scenario.step", index=step.index, step=name, ticket_id=ticket_id)
        return step

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


class _Day:
    """The HTTP side of the day: one session, the agents' tokens, strict status checks."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, step_delay: float) -> None:
        self.s = session
        self.base = base_url.rstrip("/")
        self.delay = step_delay
        self.tokens: dict[str, str] = {}
        self.user_ids: dict[str, int] = {}

    async def call(self, method: str, path: str, *, who: str | None = None, api: bool = False,
                   json: Any = None, data: Any = None, expect: int = 200) -> Any:
        headers = {}
        if who:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        if api:
            headers["Authorization"] = f"Bearer {seed.API_TOKEN}"
        async with self.s.request(method, self.base + path, json=json, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != expect:
                raise ScenarioError(f"{method} {path}: {resp.status} {raw[:300]!r}")
            result = await resp.json() if raw and resp.content_type == "application/json" else None
        await asyncio.sleep(self.delay)
        return result

    async def login(self, who: str, email: str) -> None:
        body = await self.call("POST", "/auth/login/", json={"email": email, "password": seed.PASSWORD})
        self.tokens[who] = body["token"]
        self.user_ids[who] = int(body["userId"])

    async def inbound(self, channel: int, person: tuple[str, str], body: str) -> dict[str, Any]:
        return await self.call("POST", "/__sim/inbound",
                               json={"whatsappId": channel, "number": person[0], "name": person[1], "body": body})

    async def put_ticket(self, who: str, ticket_id: int, data: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PUT", f"/tickets/{ticket_id}", who=who, json=data)

    async def reply(self, who: str, ticket_id: int, body: str) -> None:
        await self.call("POST", f"/messages/{ticket_id}", who=who,
                        json={"body": body, "fromMe": True, "read": 1, "quotedMsg": None})

    async def last_sent_message(self, who: str, ticket_id: int) -> str:
        body = await self.call("GET", f"/messages/{ticket_id}", who=who)
        return [m for m in body["messages"] if m["fromMe"]][-1]["id"]


async def play_day(base_url: str, *, session: aiohttp.ClientSession | None = None,
                   step_delay: float = 0.05) -> ScenarioLog:
    """Play the day against `base_url`; call `/__sim/reset` first for the same ids every run."""
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        return await _play(_Day(s, base_url, step_delay))
    finally:
        if own:
            await s.close()


async def _play(d: _Day) -> ScenarioLog:
    L = ScenarioLog()
    await d.call("POST", "/__sim/settings", json={"reopenTicket": True})
    L.add("settings_reopen_on")
    for who, email in (("agent1", seed.AGENT1_EMAIL), ("agent2", seed.AGENT2_EMAIL), ("admin", seed.ADMIN_EMAIL)):
        await d.login(who, email)
        L.add(f"login_{who}", user_id=d.user_ids[who])
    a1, a2 = d.user_ids["agent1"], d.user_ids["agent2"]

    # Morning: two customers write on two channels; the bot routes them to queues.
    r = await d.inbound(seed.CHANNEL_VENDAS, MARIA, "Olá, quero comprar um plano")
    A = L.tickets["A"] = r["ticketId"]
    L.add("inbound_new_ticket", A, channel=seed.CHANNEL_VENDAS, message_id=r["messageId"], created=r["isCreated"])
    await d.call("POST", "/__sim/bot-transfer",
                 json={"ticketId": A, "queueId": seed.QUEUE_VENDAS, "body": "Você será atendido pelo setor de Vendas."})
    L.add("bot_transfer", A, queue_id=seed.QUEUE_VENDAS)
    r = await d.inbound(seed.CHANNEL_SUPORTE, JOAO, "Meu pedido não chegou")
    B = L.tickets["B"] = r["ticketId"]
    L.add("inbound_new_ticket", B, channel=seed.CHANNEL_SUPORTE, message_id=r["messageId"], created=r["isCreated"])
    await d.call("POST", "/__sim/bot-transfer", json={"ticketId": B, "queueId": seed.QUEUE_SUPORTE})
    L.add("bot_transfer", B, queue_id=seed.QUEUE_SUPORTE)

    # Agent 1 takes Maria, answers with text and a file.
    await d.put_ticket("agent1", A, {"status": "open", "userId": a1})
    L.add("accept", A, user_id=a1)
    await d.reply("agent1", A, "Olá Maria! Como posso ajudar?")
    L.add("reply_text", A, user_id=a1)
    r = await d.inbound(seed.CHANNEL_VENDAS, MARIA, "Quero o plano anual")
    L.add("inbound_message", A, message_id=r["messageId"])
    mid = await d.last_sent_message("agent1", A)
    await d.call("POST", "/__sim/ack", json={"messageId": mid, "ack": 3})
    L.add("ack_read", A, message_id=mid)
    form = aiohttp.FormData()
    form.add_field("medias", CATALOG, filename="catalogo.pdf", content_type="application/pdf")
    form.add_field("body", "catalogo.pdf")
    form.add_field("fromMe", "true")
    await d.call("POST", f"/messages/{A}", who="agent1", data=form)
    L.add("reply_file", A, user_id=a1, filename="catalogo.pdf")

    # Transfer from the UI to another queue and user; agent 2 accepts.
    await d.put_ticket("agent1", A, {"userId": a2, "queueId": seed.QUEUE_FINANCEIRO, "status": "pending",
                                     "isTransference": 1})
    L.add("transfer_ui", A, from_user=a1, to_user=a2, queue_id=seed.QUEUE_FINANCEIRO)
    await d.put_ticket("agent2", A, {"status": "open", "userId": a2})
    L.add("accept", A, user_id=a2)

    # n8n moves João to Vendas through the external API; agent 1 takes him.
    await d.call("POST", f"/v1/api/external/{seed.API_ID}/updatequeue", api=True,
                 json={"ticketId": B, "queueId": seed.QUEUE_VENDAS, "externalKey": "n8n-1"})
    L.add("transfer_external", B, queue_id=seed.QUEUE_VENDAS)
    await d.put_ticket("agent1", B, {"status": "open", "userId": a1})
    L.add("accept", B, user_id=a1)
    await d.reply("agent1", B, "Oi João, vou verificar o seu pedido.")
    L.add("reply_text", B, user_id=a1)
    await d.put_ticket("agent1", B, {"status": "closed", "userId": a1})
    L.add("close", B, user_id=a1)
    await d.put_ticket("agent1", B, {"status": "open", "userId": a1})
    L.add("reopen_ui", B, user_id=a1)

    # Agent 2 starts a conversation with a new contact.
    c = await d.call("POST", "/contacts", who="agent2", json={"name": CARLA[1], "number": CARLA[0], "email": ""})
    L.add("contact_create", None, contact_id=c["id"])
    t = await d.call("POST", "/tickets", who="agent2",
                     json={"contactId": c["id"], "isActiveDemand": True, "userId": a2, "status": "open",
                           "whatsappId": seed.CHANNEL_SUPORTE})
    C = L.tickets["C"] = t["id"]
    L.add("agent_create", C, user_id=a2, contact_id=c["id"])
    await d.reply("agent2", C, "Bom dia Carla, sua fatura está disponível.")
    L.add("reply_text", C, user_id=a2)

    # Agent 2 closes Maria; she writes again and (ReopenTicket) the same ticket comes back.
    await d.put_ticket("agent2", A, {"status": "closed", "userId": a2})
    L.add("close", A, user_id=a2)
    r = await d.inbound(seed.CHANNEL_VENDAS, MARIA, "Esqueci de perguntar sobre o boleto")
    L.add("inbound_reopen", r["ticketId"], message_id=r["messageId"], reopened=r["reopened"])

    # A group conversation.
    r = await d.call("POST", "/__sim/group", json={"whatsappId": seed.CHANNEL_VENDAS, "groupNumber": GROUP[0],
                                                   "groupName": GROUP[1], "number": PAULO[0], "name": PAULO[1],
                                                   "body": "Bom dia, precisamos de 10 licenças"})
    D = L.tickets["D"] = r["ticketId"]
    L.add("group_inbound", D, message_id=r["messageId"], sender_contact_id=r["senderContactId"])
    r = await d.call("POST", "/__sim/group", json={"whatsappId": seed.CHANNEL_VENDAS, "groupNumber": GROUP[0],
                                                   "groupName": GROUP[1], "number": ANA[0], "name": ANA[1],
                                                   "body": "E suporte incluso, por favor"})
    L.add("group_inbound", D, message_id=r["messageId"], sender_contact_id=r["senderContactId"])
    await d.put_ticket("agent1", D, {"status": "open", "userId": a1})
    L.add("accept", D, user_id=a1)
    await d.reply("agent1", D, "Bom dia! Envio a proposta ainda hoje.")
    L.add("reply_text", D, user_id=a1)

    # End of day: the inactivity job closes Carla; the admin closes the rest in bulk.
    await d.call("POST", "/__sim/auto-close", json={"ticketId": C})
    L.add("auto_close", C)
    ids = [A, B, D]
    await d.call("POST", "/tickets/close-tickets", who="admin", json={"ticketIds": ids})
    L.add("bulk_close", None, ticket_ids=ids)
    await d.call("POST", "/auth/logout/", who="agent1", json={"id": a1})
    L.add("logout_agent1", user_id=a1)
    return L
