"""Infer stage: ticket state diffs -> events, exactly once, with stable ids."""

import pytest

from whazing_gateway import model
from whazing_gateway.decode import RestCall, SocketEvent, routes
from whazing_gateway.infer.inferrer import Inferrer, diff
from whazing_gateway.state.memory import MemoryState

T0 = "2026-11-26T10:00:00.000Z"


def ticket(id=1, status="pending", queueId=None, userId=None, updatedAt="2026-11-26T10:00:00.000Z",
           createdAt="2026-11-20T10:00:00.000Z", **extra):
    return {"id": id, "status": status, "queueId": queueId, "userId": userId, "updatedAt": updatedAt,
            "createdAt": createdAt, "whatsappId": 1, "contact": {"id": 40 + id, "number": "55119999000%d" % id},
            **extra}


def upd(t, ts=1.0, type="ticket:update"):
    return SocketEvent(1, "ticketList", type, t, ts, "flow-1")


def msg(id, ticket_id=1, fromMe=False, **extra):
    return SocketEvent(1, "ticketList", "chat:create",
                       {"id": id, "body": "oi", "fromMe": fromMe, "ticketId": ticket_id,
                        "ticket": {"id": ticket_id, "status": "pending", "queueId": 2, "whatsappId": 1}, **extra}, 2.0, "f")


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ({"status": "pending", "queueId": 1, "userId": None}, {"status": "open", "queueId": 1, "userId": 7},
         [(model.TICKET_ACCEPTED, {"status": ("pending", "open"), "userId": (None, 7)})]),
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "open", "queueId": 2, "userId": 7},
         [(model.TICKET_TRANSFERRED, {"queueId": (1, 2)})]),
        ({"status": "pending", "queueId": None, "userId": None}, {"status": "pending", "queueId": 3, "userId": None},
         [(model.TICKET_TRANSFERRED, {"queueId": (None, 3)})]),  # a bot putting it in a queue
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "pending", "queueId": 1, "userId": 8},
         [(model.TICKET_TRANSFERRED, {"userId": (7, 8), "status": ("open", "pending")})]),
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "open", "queueId": 2, "userId": 8},
         [(model.TICKET_TRANSFERRED, {"queueId": (1, 2), "userId": (7, 8)})]),
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "closed", "queueId": 1, "userId": 7},
         [(model.TICKET_CLOSED, {"status": ("open", "closed")})]),
        ({"status": "closed", "queueId": 1, "userId": 7}, {"status": "open", "queueId": 1, "userId": 7},
         [(model.TICKET_REOPENED, {"status": ("closed", "open")})]),
        ({"status": "closed", "queueId": 1, "userId": 7}, {"status": "pending", "queueId": 1, "userId": None},
         [(model.TICKET_REOPENED, {"status": ("closed", "pending")})]),
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "open", "queueId": 1, "userId": None}, []),
        ({"status": "open", "queueId": 1, "userId": 7}, {"status": "open", "queueId": 1, "userId": 7}, []),
    ],
)
def test_diff_table(old, new, expected):
    assert diff(old, new) == expected


async def test_first_sighting_of_an_old_ticket_is_no_event():
    inf = Inferrer(MemoryState())
    assert await inf.observe(upd(ticket(status="open", queueId=2, userId=7))) == []
    # ... but the next change to it is
    [ev] = await inf.observe(upd(ticket(status="closed", queueId=2, userId=7, updatedAt="2026-11-26T10:05:00.000Z")))
    assert ev.type == model.TICKET_CLOSED and ev.changes == {"status": ("open", "closed")}


async def test_inbound_creation_and_agent_creation_are_told_apart():
    inf = Inferrer(MemoryState())
    [ev] = await inf.observe(upd(ticket(id=1, isCreated=True)))
    assert (ev.type, ev.origin) == (model.TICKET_CREATED, model.ORIGIN_INBOUND)
    # agent creation: the REST request is seen first, then the push without isCreated
    await inf.observe(RestCall(routes.TICKET_CREATE, {}, "POST", "/tickets", None, {"contactId": 42}, None, 1, 7, 3.0))
    [ev] = await inf.observe(upd(ticket(id=2, status="open", userId=7, isActiveDemand=True,
                                        createdAt=T0, updatedAt=T0)))
    assert (ev.type, ev.origin) == (model.TICKET_CREATED, model.ORIGIN_AGENT)
    # external API createticket: the push has isCreated, the request's number says it was made by automation
    await inf.observe(RestCall(routes.EXT_CREATE_TICKET, {"apiId": "x"}, "POST", "/v1/api/external/x/createticket",
                               None, {"number": "551199990003"}, None, None, None, 4.0))
    [ev] = await inf.observe(upd(ticket(id=3, isCreated=True)))
    assert ev.origin == model.ORIGIN_AGENT


async def test_copies_from_many_browsers_and_rest_yield_one_event():
    inf = Inferrer(MemoryState())
    await inf.observe(upd(ticket(status="pending", queueId=1)))
    new = ticket(status="open", queueId=1, userId=7, updatedAt="2026-11-26T10:01:00.000Z")
    old_again = ticket(status="pending", queueId=1, updatedAt="2026-11-26T10:00:00.000Z")
    events = []
    for _ in range(3):  # every PUT re-emits the old state first, to every browser
        events += await inf.observe(upd(old_again))
        events += await inf.observe(upd(new))
    events += await inf.observe(RestCall(routes.TICKET_UPDATE, {"ticketId": "1"}, "PUT", "/tickets/1", 200,
                                         {"status": "open"}, new, 1, 7, 5.0))
    assert [e.type for e in events] == [model.TICKET_ACCEPTED]


async def test_event_ids_are_deterministic_across_processes():
    a, b = Inferrer(MemoryState()), Inferrer(MemoryState())
    for inf in (a, b):
        await inf.observe(upd(ticket(status="open", queueId=1, userId=7)))
    t = ticket(status="open", queueId=2, userId=7, updatedAt="2026-11-26T11:00:00.000Z")
    [ea], [eb] = await a.observe(upd(t)), await b.observe(upd(t))
    assert ea.id == eb.id and ea.id.startswith("evt_")
    # a shared store de-duplicates across replicas
    shared = MemoryState()
    c, d = Inferrer(shared), Inferrer(shared)
    await c.observe(msg("M1"))
    assert await d.observe(msg("M1")) == []


async def test_messages_and_last_received_message():
    inf = Inferrer(MemoryState())
    [r] = await inf.observe(msg("A1"))
    [s] = await inf.observe(msg("A2", fromMe=True, sendType="chat"))
    assert (r.type, s.type) == (model.MESSAGE_RECEIVED, model.MESSAGE_SENT)
    assert await inf.observe(msg("A1")) == []  # a copy
    await inf.observe(upd(ticket(status="pending", queueId=2)))
    [t] = await inf.observe(upd(ticket(status="pending", queueId=3, updatedAt="2026-11-26T10:09:00.000Z")))
    assert t.type == model.TICKET_TRANSFERRED and t.message["id"] == "A1" and "ticket" not in t.message


async def test_reopen_of_a_known_closed_ticket_reusing_its_id():
    inf = Inferrer(MemoryState())
    await inf.observe(upd(ticket(status="closed", queueId=1)))
    [ev] = await inf.observe(upd(ticket(status="pending", queueId=1, isCreated=True, updatedAt="2026-11-26T12:00:00.000Z")))
    assert ev.type == model.TICKET_REOPENED


async def test_stale_updates_and_lists_never_invent_changes():
    inf = Inferrer(MemoryState())
    await inf.observe(upd(ticket(status="open", queueId=1, userId=7, updatedAt="2026-11-26T10:05:00.000Z")))
    stale = ticket(status="pending", queueId=1, updatedAt="2026-11-26T10:00:00.000Z")
    listing = RestCall(routes.TICKET_LIST, {}, "GET", "/tickets", 200, None,
                       {"tickets": [stale, ticket(id=5, status="open", isCreated=True)], "count": 2}, 1, 7, 9.0)
    assert await inf.observe(listing) == []  # stale copy ignored; a listed unknown ticket is only a first sighting
    assert await inf.observe(upd(stale)) == []


@pytest.mark.parametrize("payload", [None, [], "x", {"id": "abc"}, {"id": 1}, {"id": 1, "status": 5},
                                     {"id": True, "status": "open"}])
async def test_junk_payloads_are_ignored(payload):
    inf = Inferrer(MemoryState())
    assert await inf.observe(SocketEvent(1, "ticketList", "ticket:update", payload, 1.0)) == []
    assert await inf.observe(SocketEvent(1, "ticketList", "chat:create", payload, 1.0)) == []


async def test_event_time_is_whazings_not_the_observers():
    """Replicas stamp a change alike: the time comes from the payload, not from when it was seen."""
    import datetime as dt

    seen_at = dt.datetime(2026, 11, 26, 10, 0, 30, tzinfo=dt.timezone.utc).timestamp()
    a, b = Inferrer(MemoryState()), Inferrer(MemoryState())
    t = ticket(id=9, isCreated=True, createdAt="2026-11-26T10:00:00.250Z", updatedAt="2026-11-26T10:00:00.250Z")
    [ea] = await a.observe(SocketEvent(1, "ticketList", "ticket:update", t, seen_at, "f"))
    [eb] = await b.observe(SocketEvent(1, "ticketList", "ticket:update", t, seen_at + 0.7, "f"))
    assert ea.ts == eb.ts == seen_at - 29.75
    m = {"id": "Z1", "fromMe": False, "ticketId": 9, "createdAt": "2026-11-26T10:00:00.300Z", "ticket": {"id": 9}}
    [em] = await a.observe(SocketEvent(1, "ticketList", "chat:create", m, seen_at + 2, "f"))
    assert em.ts == seen_at - 29.7
    # no time, or an absurd one: when it was seen
    junk = {**m, "id": "Z2", "createdAt": "1999-01-01T00:00:00Z"}
    [ej] = await a.observe(SocketEvent(1, "ticketList", "chat:create", junk, seen_at, "f"))
    assert ej.ts == seen_at


async def test_only_ticket_routes_are_read_as_tickets():
    """A login answer has an id and a status too ("online"): it is not a ticket."""
    inf = Inferrer(MemoryState())
    user = {"id": 1, "status": "online", "isCreated": True, "createdAt": T0, "updatedAt": T0}
    assert await inf.observe(RestCall(routes.LOGIN, {}, "POST", "/auth/login/", 200, None, user, 1, 1, 1.0)) == []
    assert await inf.state.get("t:1:1") is None
    [ev] = await inf.observe(RestCall(routes.TICKET_CREATE, {}, "POST", "/tickets", 200, None,
                                      ticket(id=1, status="open", userId=7, createdAt=T0, updatedAt=T0), 1, 7, 2.0))
    assert ev.type == model.TICKET_CREATED


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_a_replica_committing_late_does_not_turn_a_ticket_back(tmp_path, store):
    """Replica B inferred an older state of the ticket and commits it only after replica A has
    committed a newer one (B was starved of CPU): the newer state stays, so the next copy is
    diffed against the present, not the past (that made a second `ticket.accepted`)."""
    from whazing_gateway.state.sqlite import SqliteState

    shared = MemoryState() if store == "memory" else SqliteState(tmp_path / "state.db")
    a, b = Inferrer(shared), Inferrer(shared)
    created = ticket(status="pending", queueId=2, updatedAt="2026-11-26T10:00:00.000Z", isCreated=True)
    bumped = ticket(status="pending", queueId=2, updatedAt="2026-11-26T10:00:01.000Z")  # a message
    accepted = ticket(status="open", queueId=2, userId=7, updatedAt="2026-11-26T10:00:02.000Z")
    again = ticket(status="open", queueId=2, userId=7, updatedAt="2026-11-26T10:00:03.000Z")
    assert [e.type for e in await a.observe(upd(created))] == [model.TICKET_CREATED]
    assert await b.infer(upd(bumped)) == []  # B holds the bumped (older) state, uncommitted
    assert await a.observe(upd(bumped)) == []
    assert [e.type for e in await a.observe(upd(accepted))] == [model.TICKET_ACCEPTED]
    await b.commit([])  # late
    assert (await shared.get("t:1:1"))["status"] == "open"
    assert await a.observe(upd(again)) == [] and await b.observe(upd(again)) == []
