"""The catch-up reads Whazing's ticket listing by pages while Whazing goes on: a ticket updated
between two page requests jumps onto page 1, already read, and would be read on no page at
all (its missed messages never reported). Served here by a small in-process Whazing listing
that moves tickets exactly between two requests."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

from aiohttp import web

from whazing_gateway.edge.observer import CatchUp
from whazing_gateway.infer.catchup import WATERMARK_KEY
from whazing_gateway.state.memory import MemoryState

PAGE = 40


def iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MovingListing:
    """`/auth/login/` and `/tickets` (40 per page, most recently updated first, as Whazing
    pages); `moves[n]` lists the tickets updated right after the n-th listing answer."""

    def __init__(self, count: int, start: float) -> None:
        self.now = start
        self.tickets = {}
        for tid in range(1, count + 1):
            self.now += 1.0
            self.tickets[tid] = {"id": tid, "tenantId": 1, "status": "open", "queueId": 1, "userId": None,
                                 "createdAt": iso(start), "updatedAt": iso(self.now), "lastMessage": "oi",
                                 "lastMessageAt": int(self.now * 1000)}
        self.moves: dict[int, list[int]] = {}
        self.answers: list[int] = []  # the page number of each answer

    def touch(self, tid: int) -> None:
        """A new message on `tid`: Whazing stamps lastMessageAt and updatedAt together."""
        self.now += 1.0
        self.tickets[tid] = {**self.tickets[tid], "updatedAt": iso(self.now), "lastMessage": "mais uma",
                             "lastMessageAt": int(self.now * 1000)}

    async def login(self, request: web.Request) -> web.Response:
        return web.json_response({"token": "t0ken-for-the-listing"})

    async def listing(self, request: web.Request) -> web.Response:
        page = int(request.query["pageNumber"])
        ordered = sorted(self.tickets.values(), key=lambda t: (t["updatedAt"], t["id"]), reverse=True)
        body = {"tickets": ordered[(page - 1) * PAGE: page * PAGE], "count": len(ordered),
                "hasMore": len(ordered) > page * PAGE}
        self.answers.append(page)
        for tid in self.moves.get(len(self.answers), []):
            self.touch(tid)
        return web.json_response(body)

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/auth/login/", self.login)
        app.router.add_get("/tickets", self.listing)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return runner, f"http://127.0.0.1:{port}"


async def catch_up(whazing: MovingListing, since: float) -> CatchUp:
    runner, url = await whazing.start()
    try:
        state = MemoryState()
        await state.set(WATERMARK_KEY, since + 5.0)  # the catch-up reads from 5 s before it
        cu = CatchUp(url, "observer@example.com", "secret", state, lambda frame: None,
                     SimpleNamespace(connected_at=None))  # type: ignore[arg-type]
        assert await cu._once() is True
        return cu
    finally:
        await runner.cleanup()


async def test_a_ticket_that_moves_between_two_pages_is_still_read_and_its_gap_reported():
    start = float(int(time.time()) - 3600)
    whazing = MovingListing(100, start)
    whazing.moves = {1: [30]}  # right after page 1: ticket 30 (page 2, then) gets a message
    cu = await catch_up(whazing, start)

    gaps = Counter(g.ticket_id for g in cu.last_plan.gaps)
    assert set(gaps) == set(range(1, 101))  # nobody watched: every ticket's last message is a gap
    assert max(gaps.values()) == 1  # the ticket read twice (pushed across the page edge) once
    gap_30 = next(g for g in cu.last_plan.gaps if g.ticket_id == 30)
    assert gap_30.last_message_at == whazing.tickets[30]["lastMessageAt"] / 1000  # its newest entry
    # three pages, then page 1 again (the moved ticket sits above the first answer's newest)
    assert whazing.answers == [1, 2, 3, 1]
    assert Counter(p["id"] for p in cu.last_plan.payloads) == Counter(range(1, 101))  # fed once each


async def test_the_top_is_read_again_until_one_answer_holds_it():
    start = float(int(time.time()) - 3600)
    whazing = MovingListing(100, start)
    # after page 1, 41 tickets change: the re-read of the top needs two pages, and while it
    # reads them ticket 5 changes again (between its two pages), so the top is read once more
    whazing.moves = {1: list(range(10, 51)), 4: [5]}
    cu = await catch_up(whazing, start)

    assert {g.ticket_id for g in cu.last_plan.gaps} == set(range(1, 101))
    assert next(g for g in cu.last_plan.gaps if g.ticket_id == 5).last_message_at == whazing.now
    assert whazing.answers == [1, 2, 3, 1, 2, 1]


async def test_one_page_is_one_answer_and_is_not_read_again():
    start = float(int(time.time()) - 3600)
    whazing = MovingListing(30, start)
    whazing.moves = {1: [3]}  # changed after the only answer: the live socket saw it
    cu = await catch_up(whazing, start)
    assert whazing.answers == [1]
    assert len(cu.last_plan.gaps) == 30
