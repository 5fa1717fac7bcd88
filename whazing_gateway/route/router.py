"""Events x rules -> deliveries.

Pure except for one small piece of state per ticket, the queue integration's, kept in the
state store under "qi:<tenant>:<ticket>" so replicas sharing a Redis agree on it (in the
pipeline through the inference's uncommitted batch: undone with a failed or refused record,
written with its commit). The rules
are read once per event from `self.rules`, which hot reload replaces by assignment: an event
is routed by one rule set, never half of each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import structlog

from whazing_gateway import model
from whazing_gateway.upstream.media import Media, MediaFetcher
from whazing_gateway.ops import metrics
from whazing_gateway.route.payloads import render
from whazing_gateway.route.rules import QueueRule, RuleSet, knows_queue, queue_name_for, queue_of
from whazing_gateway.state.memory import KeyValue

log = structlog.get_logger(__name__)

QI_PREFIX = "qi:"
QI_TTL_S = 30 * 86400.0  # a ticket untouched for a month forgets its queue integration


def qi_key(event: model.Event) -> str:
    return f"{QI_PREFIX}{event.tenant_id}:{event.ticket_id}"


def start_event(event: model.Event) -> model.Event | None:
    """The message-shaped event a queue integration fires on transfer (start_on_transfer).

    Built from the ticket's last received message, seen with the ticket as it is now (in the
    new queue, with its current status); None when the transfer carried no such message.
    Its id derives from the transfer's, so it is as stable as the transfer itself.
    """
    if not event.message:
        return None
    msg = dict(event.message)
    raw = msg.get("ticket")
    snapshot: dict[str, Any] = raw if isinstance(raw, dict) else {}
    msg["ticket"] = {**snapshot, **{k: v for k, v in (event.ticket or {}).items()}}
    return dataclasses.replace(
        event,
        id=model.stable_id("evt", event.id, "start_on_transfer"),
        type=model.MESSAGE_RECEIVED,
        message=msg,
        changes={},
        origin=None,
    )


def wants_media(rule: Any) -> bool:
    """Whazing's "media in base64" toggle of a channel rule or queue integration."""
    return bool(getattr(rule, "media_base64", False))


def media_url(event: model.Event) -> str | None:
    """The media a message event carries (None for text, for ticket events, for no URL)."""
    if event.type not in model.MESSAGE_EVENTS or not isinstance(event.message, Mapping):
        return None
    url = event.message.get("mediaUrl")
    return url if isinstance(url, str) and url else None


class Router:
    """Decides which targets get an event and renders one body per target.

    `media` fetches the media of messages for rules with media in base64; without it such
    rules get `mediaBase64: null` and a note (e.g. `replay`, which must stay offline).
    """

    def __init__(self, rules: RuleSet, state: KeyValue, media: MediaFetcher | None = None) -> None:
        self.rules = rules
        self.state = state
        self.media = media

    async def route(self, event: model.Event) -> list[model.Delivery]:
        rules = self.rules  # one snapshot for the whole event
        # (event id, target) -> (event to render, does a rule picking it ask for media in base64)
        picks: dict[tuple[str, str], tuple[model.Event, bool]] = {}
        for rule in rules.channel_rules:
            if rule.accepts(event):
                for target in rule.targets:
                    _pick(picks, event, target, wants_media(rule))
        if rules.queue_rules and event.ticket_id is not None:
            for ev, target, media in await self._queue_integrations(rules, event):
                _pick(picks, ev, target, media)
        return await self._deliveries(rules, event, picks)

    async def _media_of(self, ev: model.Event, cache: dict[str, Media | None]) -> Media | None:
        """The event's media for a base64 rule, fetched once per event whatever the targets."""
        url = media_url(ev)
        if url is None:
            return None
        if ev.id not in cache:
            if self.media is None:
                cache[ev.id] = Media(None, "media not included: no media fetcher (dry run)")
            else:
                cache[ev.id] = await self.media.fetch(url, event_id=ev.id, ticket_id=ev.ticket_id,
                                                      flow_id=ev.flow_id)
        return cache[ev.id]

    async def _deliveries(self, rules: RuleSet, event: model.Event,
                          picks: dict[tuple[str, str], tuple[model.Event, bool]]) -> list[model.Delivery]:
        out: list[model.Delivery] = []
        bodies: dict[tuple[str, str, bool], bytes] = {}
        media_cache: dict[str, Media | None] = {}
        for (event_id, name), (ev, with_media) in picks.items():
            target = rules.targets.get(name)
            if target is None:  # validation refuses such rules; belt and braces
                continue
            try:
                media = await self._media_of(ev, media_cache) if with_media else None
                key = (event_id, target.format, media is not None)
                body = bodies.get(key)
                if body is None:
                    body = bodies[key] = render(ev, target.format, media)
            except Exception:
                metrics.STAGE_ERRORS.labels("route").inc()
                log.exception("route.render_failed", event_id=ev.id, target=name, ticket_id=ev.ticket_id)
                continue
            out.append(model.Delivery(
                id=model.Delivery.make_id(ev.id, name),
                target=name,
                event_id=event.id,
                event_type=ev.type,
                order_key=ev.order_key,
                body=body,
                created_at=ev.ts,
                ticket_id=ev.ticket_id,
                flow_id=ev.flow_id,
            ))
            metrics.DELIVERIES_ROUTED.labels(name, ev.type).inc()
        return out

    async def _queue_integrations(self, rules: RuleSet, event: model.Event) -> list[tuple[model.Event, str, bool]]:
        """Whazing's queue integrations: fire on transfer (start_on_transfer) and on messages
        while the ticket is in the queue; leaving the queue stops them. Never ticket events."""
        key = qi_key(event)
        if event.type == model.TICKET_TRANSFERRED:
            if "queueId" not in (event.changes or {}):
                return []  # a user-to-user transfer: the queue integration is unchanged
            new_queue = event.changes["queueId"][1]
            selected = self._selected(rules, new_queue, queue_name_for(event, new_queue))
            starters = [r for r in selected if r.start_on_transfer]
            await self.state.set(key, {"queue": new_queue, "active": bool(starters)}, QI_TTL_S)
            if not starters:
                return []
            start = start_event(event)
            if start is None:
                log.info("route.start_on_transfer_skipped", reason="no last received message",
                         event_id=event.id, ticket_id=event.ticket_id, queue_id=new_queue)
                return []
            return [(start, t, wants_media(r)) for r in starters if r.accepts_start(start) for t in r.targets]
        if event.type not in model.MESSAGE_EVENTS:
            return []
        state = await self.state.get(key) or {}
        queue_id, queue_name = queue_of(event)
        if queue_id is None and not knows_queue(event):
            queue_id = state.get("queue")  # a partial ticket: the queue we last saw it in
        selected = self._selected(rules, queue_id, queue_name)
        active = bool(selected)
        if state.get("queue") != queue_id or bool(state.get("active")) != active:
            await self.state.set(key, {"queue": queue_id, "active": active}, QI_TTL_S)
            if state.get("active") and not active:
                log.debug("route.queue_integration_stopped", ticket_id=event.ticket_id, queue_id=state.get("queue"))
        return [(event, t, wants_media(r)) for r in selected if r.accepts_message(event) for t in r.targets]

    @staticmethod
    def _selected(rules: RuleSet, queue_id: Any, queue_name: Any) -> list[QueueRule]:
        return [r for r in rules.queue_rules if r.selects_queue(queue_id, queue_name)]


def _pick(picks: dict[tuple[str, str], tuple[model.Event, bool]], ev: model.Event, target: str, media: bool) -> None:
    """One delivery per (event, target); media in base64 when any rule picking it asks."""
    key = (ev.id, target)
    if key in picks:
        picks[key] = (picks[key][0], picks[key][1] or media)
    else:
        picks[key] = (ev, media)
