"""The stand-in's seed data: one tenant, three users, three queues, two channels, one API config.

Exported as constants so tests and the scenario can name things without asking the server.
"""

from __future__ import annotations

import jwt

TENANT_ID = 1
PASSWORD = "123456"

ADMIN_ID, AGENT1_ID, AGENT2_ID = 1, 2, 3
ADMIN_EMAIL = "admin@whazing.test"
AGENT1_EMAIL = "agent1@whazing.test"
AGENT2_EMAIL = "agent2@whazing.test"

QUEUE_VENDAS, QUEUE_SUPORTE, QUEUE_FINANCEIRO = 1, 2, 3
QUEUES = {QUEUE_VENDAS: "Vendas", QUEUE_SUPORTE: "Suporte", QUEUE_FINANCEIRO: "Financeiro"}

CHANNEL_VENDAS, CHANNEL_SUPORTE = 1, 2
CHANNELS = {CHANNEL_VENDAS: "WhatsApp Vendas", CHANNEL_SUPORTE: "WhatsApp Suporte"}
CHANNEL_NUMBERS = {CHANNEL_VENDAS: "5511900000001", CHANNEL_SUPORTE: "5511900000002"}

# (id, name, email, profile, queues)
USERS = (
    (ADMIN_ID, "Admin", ADMIN_EMAIL, "admin", (QUEUE_VENDAS, QUEUE_SUPORTE, QUEUE_FINANCEIRO)),
    (AGENT1_ID, "Agente Um", AGENT1_EMAIL, "user", (QUEUE_VENDAS, QUEUE_SUPORTE)),
    (AGENT2_ID, "Agente Dois", AGENT2_EMAIL, "user", (QUEUE_SUPORTE, QUEUE_FINANCEIRO)),
)

# Secrets: fixed, because the stand-in is a test double and determinism beats secrecy here.
JWT_SECRET = "standin-jwt-secret-0123456789abcdef"
JWT_REFRESH_SECRET = "standin-jwt-refresh-secret-0123456789abcdef"
API_SECRET = "standin-api-secret-0123456789abcdef"

API_ID = "6f1c2a0e-3b7d-4c55-9a1e-0d5b8e2f7a10"
API_NAME = "n8n"
API_CHANNEL = CHANNEL_VENDAS
# The external API's bearer token: a JWT without iat/exp, so the same string every run.
API_TOKEN = jwt.encode(
    {"tenantId": TENANT_ID, "profile": "admin", "sessionId": API_CHANNEL}, API_SECRET, algorithm="HS256"
)

# The tenant settings the real backend seeds (`GET /settings/`); the SPA reads `.value` of each,
# so every key must be there. `ReopenTicket` follows the world's `reopen_ticket` flag.
SETTINGS = (
    ("userCreation", "disabled"), ("NotViewTicketsQueueUndefined", "disabled"),
    ("NotViewTicketsChatBot", "disabled"), ("NotViewAssignedTickets", "disabled"),
    ("DirectTicketsToWallets", "disabled"), ("ignoreGroupMsg", "disabled"), ("rejectCalls", "disabled"),
    ("callRejectMessage", "As chamadas de voz e vídeo estão desabilitadas para esse WhatsApp."),
    ("botTicketActive", "disabled"), ("CheckMsgIsGroup", "enabled"), ("autoClose", "disabled"),
    ("autoCloseTime", "0"), ("autoPending", "disabled"), ("autoPendingTime", "0"),
    ("TicketsLimitOpen", "0"), ("TicketsLimitPending", "0"), ("TicketsLimitClosed", "0"),
    ("ReopenTicket", "disabled"), ("spyticket", "disabled"), ("hidetab", "disabled"),
    ("groupnotification", "disabled"),
)
# `GET /settingsgeneral/` and `GET /public-settings/<key>` (the login page reads these three).
GENERAL_SETTINGS = (("allowSignup", "disabled"), ("habilitasmtp", "disabled"), ("whatsappnumber", ""))
TITLE = "Whazing"
# The plan's due date is this many days after start: the router guard sends an expired tenant to billing.
PLAN_DAYS = 365
