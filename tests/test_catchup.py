"""The catch-up's pure part (listing + what we knew -> ticket payloads and message gaps), fed
through the real Inferrer; and the SQLite state that keeps what we knew across restarts."""

from __future__ import annotations

import pytest

import asyncio
import subprocess
import sys
import textwrap

from whazing_gateway import model
from whazing_gateway.decode import SocketEvent
from whazing_gateway.infer import catchup
from whazing_gateway.infer.catchup import Known
from whazing_gateway.infer.inferrer import Inferrer, snapshot
from whazing_gateway.state.memory import MemoryState
from whazing_gateway.state.sqlite import SqliteState

SINCE = 1_764_500_000.0  # the watermark: until then, everything was seen


def iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ticket(tid: int, status: str, *, queue=None, user=None, created: float, updated: float,
           last_msg: float | None = None, body: str = "oi") -> dict:
    return {"id": tid, "tenantId": 1, "status": status, "queueId": queue, "userId": user,
            "createdAt": iso(created), "updatedAt": iso(updated), "contactId": 100 + tid,
            "lastMessage": body if last_msg else None,
            "lastMessageAt": int(last_msg * 1000) if last_msg else None}


async def infer_all(payloads, state) -> list[model.Event]:
    inf = Inferrer(state)
    out = []
    for p in payloads:
        events = await inf.ticket_seen(p, 1, SINCE + 100, "socket", "catchup")
        await inf.commit(events)
        out += events
    return out


def test_known_ticket_changes_become_their_events_with_live_ids():
    before = ticket(1, "pending", created=SINCE - 100, updated=SINCE - 50, last_msg=SINCE - 50.01)
    after = ticket(1, "closed", queue=2, created=SINCE - 100, updated=SINCE + 20, last_msg=SINCE - 50.01)
    known = {(1, 1): Known(state=snapshot(before))}
    plan = catchup.plan([after, ticket(9, "open", created=SINCE - 900, updated=SINCE - 800)], known, SINCE)
    assert plan.changed == [1] and plan.created == [] and plan.gaps == []
    assert [p["id"] for p in plan.payloads] == [1]  # ticket 9 did not change since the watermark

    async def run():
        state = MemoryState()
        await state.set("t:1:1", snapshot(before))
        events = await infer_all(plan.payloads, state)
        # the same change seen live (one step) gives the same ids
        live_state = MemoryState()
        await live_state.set("t:1:1", snapshot(before))
        live = await Inferrer(live_state).observe(
            SocketEvent(1, "ticketList", "ticket:update", after, SINCE + 20, "f"))
        return events, live

    events, live = asyncio.run(run())
    assert [e.type for e in events] == [model.TICKET_TRANSFERRED, model.TICKET_CLOSED]
    assert [e.id for e in events] == [e.id for e in live]


def test_ticket_created_while_away_is_created_then_closed_with_the_live_creation_id():
    t = ticket(5, "closed", created=SINCE + 10, updated=SINCE + 30, last_msg=SINCE + 10.2)
    plan = catchup.plan([t], {}, SINCE)
    assert plan.created == [5]
    assert [p["status"] for p in plan.payloads] == ["pending", "closed"]
    assert plan.payloads[0]["isCreated"] is True
    events = asyncio.run(infer_all(plan.payloads, MemoryState()))
    assert [e.type for e in events] == [model.TICKET_CREATED, model.TICKET_CLOSED]
    live_id = model.stable_id("evt", 1, 5, model.TICKET_CREATED, t["createdAt"])
    assert events[0].id == live_id
    assert [(g.ticket_id, g.known_until) for g in plan.gaps] == [(5, None)]  # its messages: a gap


def test_old_ticket_never_seen_is_remembered_without_an_event():
    t = ticket(7, "open", created=SINCE - 5000, updated=SINCE + 5)
    plan = catchup.plan([t], {}, SINCE)
    assert plan.created == [] and [p["id"] for p in plan.payloads] == [7]
    assert asyncio.run(infer_all(plan.payloads, MemoryState())) == []


def test_message_gaps_only_when_the_last_message_is_newer_than_what_we_saw():
    seen = ticket(1, "open", created=SINCE - 100, updated=SINCE - 10, last_msg=SINCE - 10.001)
    newer = ticket(1, "open", created=SINCE - 100, updated=SINCE + 3, last_msg=SINCE + 2.9)
    known = {(1, 1): Known(state=snapshot(seen))}
    assert catchup.plan([seen], known, SINCE - 20).gaps == []
    (gap,) = catchup.plan([newer], known, SINCE).gaps
    assert gap.ticket_id == 1 and gap.last_message_at == SINCE + 2.9
    # a received message we saw after the last ticket update also counts as seen
    msg = {"id": "m1", "body": "oi", "createdAt": iso(SINCE + 2.9)}
    assert catchup.plan([newer], {(1, 1): Known(state=snapshot(seen), last_received=msg)}, SINCE).gaps == []


@pytest.mark.slow
def test_sqlite_state_survives_a_process_and_expires(tmp_path):
    path = tmp_path / "state.db"

    async def first():
        s = SqliteState(path)
        await s.set("t:1:1", {"status": "open", "updatedAt": "x"}, 3600)
        assert await s.add_once("e:1", 3600) is True
        await s.set("short", 1, 0.05)
        await s.set("gone", 1)
        await s.set("gone", None)
        await s.close()

    asyncio.run(first())
    # a new process (what a restart is) reads it back
    code = textwrap.dedent(f"""
        import asyncio, time
        from whazing_gateway.state.sqlite import SqliteState
        async def main():
            time.sleep(0.1)
            s = SqliteState({str(path)!r})
            print(await s.get("t:1:1"), await s.add_once("e:1", 60), await s.get("short"), await s.get("gone"))
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{'status': 'open', 'updatedAt': 'x'} False None None"


def test_a_shared_state_is_trusted_only_up_to_the_watermark():
    """Redis: the state read after the restart may hold a live sighting of the ticket; a message
    between the watermark and that sighting must still count as a gap."""
    live = ticket(1, "open", created=SINCE - 100, updated=SINCE + 8, last_msg=SINCE + 7.9)
    known = Known(state=snapshot(live))  # what the live pipeline wrote after we were back
    assert catchup.plan([live], {(1, 1): known}, SINCE, live_since=SINCE + 6).gaps == []  # baseline: trusted
    shared = Known(state=snapshot(live), trust_until=SINCE)
    (gap,) = catchup.plan([live], {(1, 1): shared}, SINCE, live_since=SINCE + 6).gaps
    assert gap.ticket_id == 1 and gap.certain is False  # its last message came when we were back
