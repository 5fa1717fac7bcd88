"""The gateway's own socket.io connection, so inbound messages are seen when no agent is online.

It logs in with service credentials from the environment (never from YAML) and connects
through the gateway's OWN listen port: its frames take the same path as a browser's, are
inferred the same way (copies de-duplicated) and show in the flow viewer.

Whazing's auth middleware answers a valid CONNECT with `40{sid}` and then `44{"message":
"authentication error"}` while keeping the socket open. python-socketio's client takes that
`44` as a failed namespace, so the observer does not trust the client's `connected` flag: it
connects without waiting for the namespace and watches the Engine.IO transport instead.

`CatchUp` uses the same login, directly against the upstream, to read Whazing's ticket listing
(read-only) after a start or a reconnect, and hands what changed meanwhile to the pipeline as
ordinary `ticket:update` frames (the logic: `whazing_gateway/infer/catchup.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
import socketio
import structlog

from whazing_gateway.ops import metrics

from whazing_gateway.upstream.login import login

log = structlog.get_logger(__name__)


class Observer:
    def __init__(self, base_url: str, email: str, password: str, *,
                 relogin_s: float = 600.0, max_backoff_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.email = email
        self._password = password
        self.relogin_s = relogin_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.connects = 0
        self.connected_at: float | None = None  # unix time of the current connection
        self._task: asyncio.Task | None = None
        self._client: socketio.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings) -> "Observer | None":
        if not settings.observer_enabled:
            return None
        email = os.environ.get(settings.observer_email_env)
        password = os.environ.get(settings.observer_password_env)
        if not email or not password:
            log.warning("no observer credentials: events are inferred from browser traffic only "
                        "(inbound messages are missed while no agent has Whazing open)",
                        email_env=settings.observer_email_env, password_env=settings.observer_password_env)
            return None
        from whazing_gateway.ops.logs import register_secret

        register_secret(password)
        host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::", "") else settings.listen_host
        return cls(f"http://{host}:{settings.listen_port}", email, password)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="whazing-observer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._disconnect()

    async def login(self, session: aiohttp.ClientSession) -> str:
        return await login(session, self.base_url, self.email, self._password)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        metrics.OBSERVER_CONNECTED.set(0)
        if client is not None:
            await _close(client)

    def _alive(self) -> bool:
        return self._client is not None and self._client.eio.state == "connected"

    async def _run(self) -> None:
        backoff = 1.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while True:
                try:
                    token = await self.login(session)
                    client = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
                    await client.connect(self.base_url, auth={"token": token}, transports=["websocket"],
                                         wait=False)
                    # On a token refresh the old socket closes only once the new one is up: no gap.
                    old, self._client = self._client, client
                    if old is not None:
                        await _close(old)
                    self.connected = True
                    self.connected_at = time.time()
                    self.connects += 1
                    metrics.OBSERVER_CONNECTED.set(1)
                    log.info("observer connected", url=self.base_url, connects=self.connects)
                    backoff = 1.0
                    since = time.monotonic()
                    while self._alive() and time.monotonic() - since < self.relogin_s:
                        await asyncio.sleep(1.0)
                    if self._alive():
                        log.info("observer refreshing its token")
                        continue
                    log.info("observer reconnecting", reason="connection lost")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("observer connection failed; retrying", error=str(exc), retry_in_s=round(backoff, 1))
                    await self._disconnect()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                await self._disconnect()


async def _close(client: socketio.AsyncClient) -> None:
    try:
        await client.eio.disconnect(abort=True)
    except Exception:  # already gone
        pass


# ---- catch-up after the gateway was away ----------------------------------------------------

# What the SPA asks for (frontend `ConsultarTickets`: axios sends arrays as `status[]=`); with
# `showAll` an admin gets every ticket of the tenant, most recently updated first, by pages.
GAP_LOG = ("catch-up: messages of this ticket were missed and are not delivered "
           "(fetching them would mark the ticket read in Whazing)")
LISTING_QUERY = [("status[]", "open"), ("status[]", "pending"), ("status[]", "closed"), ("showAll", "true")]


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class CatchUp:
    """After a start, and after every observer reconnect: read what changed in Whazing while
    nobody was watching, and feed it to the pipeline; report messages that cannot be fetched.

    The watermark (`WATERMARK_KEY` in the inference's state) moves while the observer is
    connected and the last catch-up is done, so a crash at any moment leaves it at a time up to
    which everything was seen."""

    def __init__(self, upstream: str, email: str, password: str, state: Any, submit: Callable[[Any], None],
                 observer: Observer, *, heartbeat_s: float = 1.0, margin_s: float = 5.0,
                 max_pages: int = 40, max_rereads: int = 5, clock: Callable[[], float] = time.time,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.upstream = upstream.rstrip("/")
        self.email = email
        self._password = password
        self.state = state
        self.submit = submit
        self.observer = observer
        self.heartbeat_s = heartbeat_s
        self.margin_s = margin_s
        self.max_pages = max_pages
        self.max_rereads = max_rereads
        self._clock = clock
        # False while the pipeline process has not loaded its state yet: it reads the watermark
        # once, at its start, so this one must not move before then (a newer one would hide the
        # tickets created while the gateway was away).
        self.ready = ready
        self._task: asyncio.Task | None = None
        self.runs = 0
        self.last_plan: Any = None

    @classmethod
    def from_settings(cls, settings, state, submit, observer: Observer | None,
                      ready: Callable[[], bool] = lambda: True) -> "CatchUp | None":
        if observer is None:  # no login, no listing: said once by the observer already
            return None
        return cls(settings.upstream, observer.email, observer._password, state, submit, observer, ready=ready)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="whazing-catchup")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        handled = 0  # observer connection number whose catch-up is done
        while True:
            if not self.ready():
                await asyncio.sleep(self.heartbeat_s / 10)
                continue
            connects = self.observer.connects
            if self.observer.connected and connects != handled:
                if await self._once():
                    handled = connects
            if self.observer.connected and connects == handled:
                from whazing_gateway.infer.catchup import WATERMARK_KEY

                try:
                    await self.state.set(WATERMARK_KEY, self._clock() - self.margin_s)
                except Exception as exc:  # the next beat tries again
                    log.warning("catch-up watermark not saved", error=repr(exc))
            await asyncio.sleep(self.heartbeat_s)

    async def _once(self) -> bool:
        """One catch-up; True when done (or nothing to do), False to try again soon."""
        from whazing_gateway.infer import catchup
        from whazing_gateway.infer.catchup import WATERMARK_KEY
        from whazing_gateway.ops import metrics

        try:
            since = await self.state.get(WATERMARK_KEY)
        except Exception as exc:
            log.warning("catch-up: state unreadable, trying again", error=repr(exc))
            return False
        if since is None:
            log.info("catch-up: first start on this state, nothing to catch up")
            metrics.CATCHUP_RUNS.labels("skipped").inc()
            return True
        since = float(since) - self.margin_s
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                token = await login(session, self.upstream, self.email, self._password)
                tickets, complete = await self._listing(session, token, since)
            known = await self._known(tickets, since)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.CATCHUP_RUNS.labels("failed").inc()
            log.warning("catch-up failed; retrying", error=repr(exc), retry_in_s=self.heartbeat_s)
            await asyncio.sleep(max(0.0, 4 * self.heartbeat_s))
            return False
        result = catchup.plan(tickets, known, since, live_since=self.observer.connected_at)
        self.last_plan = result
        for payload in result.payloads:
            self.submit(_frame(payload))
        for gap in result.gaps:
            metrics.CATCHUP_MESSAGE_GAPS.inc()
            log.warning(GAP_LOG, ticket_id=gap.ticket_id, tenant_id=gap.tenant_id, certain=gap.certain,
                        last_message_at=_iso(gap.last_message_at), seen_until=_iso(gap.known_until))
        metrics.CATCHUP_TICKETS.labels("created").inc(len(result.created))
        metrics.CATCHUP_TICKETS.labels("changed").inc(len(result.changed))
        metrics.CATCHUP_RUNS.labels("ok").inc()
        self.runs += 1
        log.info("catch-up done", since=_iso(since), listed=len(tickets), created=len(result.created),
                 changed=len(result.changed), message_gaps=len(result.gaps), complete=complete)
        if not complete:
            log.warning("catch-up: the listing was cut at its page limit, or kept moving while it was read; "
                        "changes it did not show are not caught up", pages=self.max_pages, rereads=self.max_rereads)
        return True

    async def _listing(self, session: aiohttp.ClientSession, token: str, since: float) -> tuple[list[dict], bool]:
        """Pages of the listing (most recently updated first) until they are older than `since`,
        then the top again until it held still; one entry per ticket, its newest.

        Whazing pages by `updatedAt` while tickets change: a ticket updated between two page
        requests jumps onto page 1, already read, and every ticket above its old place shifts
        down one, so it is read on no page at all and a neighbour is read twice. Each ticket
        that moved was updated after the first page was answered, so it sits at or above that
        page's newest `updatedAt`: the top is read again down to that mark, until one answer
        holds the whole of it (one answer is consistent)."""
        newest: dict[int, dict] = {}
        pages, mark, complete = await self._read_down(session, token, newest, since)
        if pages > 1 and complete:  # a single answer cannot have moved under us
            complete = False
            for _ in range(self.max_rereads):
                pages, top, _ended = await self._read_down(session, token, newest, mark)
                if pages == 1:
                    complete = True
                    break
                mark = top
        return list(newest.values()), complete

    async def _read_down(self, session: aiohttp.ClientSession, token: str, newest: dict[int, dict],
                         floor: float | None) -> tuple[int, float | None, bool]:
        """Pages from the first until one reaches below `floor` (or the last page), each ticket
        kept in `newest`: the pages read, the first page's newest `updatedAt`, and False if the
        page limit cut it."""
        from whazing_gateway.infer.catchup import ts

        top = None
        for page in range(1, self.max_pages + 1):
            tickets, more = await self._page(session, token, page)
            _keep_newest(newest, tickets)
            times = [ts(t.get("updatedAt")) or 0.0 for t in tickets]
            if page == 1:
                top = max(times, default=None)
            if not tickets or not more or floor is None or min(times) < floor:
                return page, top, True
        return self.max_pages, top, False

    async def _page(self, session: aiohttp.ClientSession, token: str, page: int) -> tuple[list[dict], bool]:
        async with session.get(f"{self.upstream}/tickets", params=[*LISTING_QUERY, ("pageNumber", str(page))],
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"ticket listing answered HTTP {resp.status}")
            body = await resp.json()
        if not isinstance(body, dict):
            return [], False
        return [t for t in (body.get("tickets") or []) if isinstance(t, dict)], bool(body.get("hasMore"))

    async def _known(self, tickets: list[dict], since: float) -> dict:
        from whazing_gateway.decode import as_int
        from whazing_gateway.infer.catchup import Known, changed_since

        # What we knew before we went away: the persisted state as loaded (live sightings since
        # the restart must not hide what happened meanwhile); a shared state (Redis) as it is.
        baseline = getattr(self.state, "loaded", None)
        read = baseline or self.state.get
        known = {}
        for t in changed_since(tickets, since):
            tenant, tid = as_int(t.get("tenantId")), as_int(t.get("id"))
            known[(tenant, tid)] = Known(state=await read(f"t:{tenant}:{tid}"),  # Inferrer._tkey
                                        last_received=await read(f"m:{tenant}:{tid}"),
                                        trust_until=None if baseline else since)
        return known


def _keep_newest(newest: dict[int, dict], tickets: list[dict]) -> None:
    """Index `tickets` by id, keeping the entry with the latest `updatedAt` of each."""
    from whazing_gateway.decode import as_int
    from whazing_gateway.infer.catchup import ts

    for t in tickets:
        tid = as_int(t.get("id"))
        if tid is None:
            continue
        old = newest.get(tid)
        if old is None or (ts(t.get("updatedAt")) or 0.0) >= (ts(old.get("updatedAt")) or 0.0):
            newest[tid] = t


def _frame(ticket: dict) -> Any:
    """A server frame as Whazing would push it for this ticket, for the ordinary pipeline."""
    from whazing_gateway.edge.records import WsFrame

    event = [f"{ticket.get('tenantId')}:ticketList", {"type": "ticket:update", "payload": ticket}]
    content = ("42" + json.dumps(event, separators=(",", ":"), ensure_ascii=False)).encode()
    return WsFrame("catchup", time.time(), False, content, True)
