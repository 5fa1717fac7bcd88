"""Events x rules -> deliveries.

Pure except for one small piece of state per ticket, the queue integration's, kept in the
StateStore under "qi:<tenant>:<ticket>" so replicas sharing a Redis agree on it. The rules
are read once per event from `self.rules`, which hot reload replaces by assignment: an event
is routed by one rule set, never half of each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from whazing_gateway import model
from whazing_gateway.ops import metrics
from whazing_gateway.route.payloads import render
from whazing_gateway.route.rules import QueueRule, RuleSet, knows_queue, queue_name_for, queue_of
from whazing_gateway.state.memory import StateStore

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
    snapshot = v if isinstance(v := msg.get("ticket"), dict) else {}
    msg["ticket"] = {**snapshot, **{k: v for k, v in (event.ticket or {}).items()}}
    return dataclasses.replace(
        event,
        id=model.stable_id("evt", event.id, "start_on_transfer"),
        type=model.MESSAGE_RECEIVED,
        message=msg,
        changes={},
        origin=None,
    )


class Router:
    """Decides which targets get an event and renders one body per target."""

    def __init__(self, rules: RuleSet, state: StateStore) -> None:
        self.rules = rules
        self.state = state

    async def route(self, event: model.Event) -> list[model.Delivery]:
        rules = self.rules  # one snapshot for the whole event
        picks: dict[tuple[str, str], model.Event] = {}  # (event id, target) -> event to render
        for rule in rules.channel_rules:
            if rule.accepts(event):
                for target in rule.targets:
                    picks.setdefault((event.id, target), event)
        if rules.queue_rules and event.ticket_id is not None:
            for ev, target in await self._queue_integrations(rules, event):
                picks.setdefault((ev.id, target), ev)
        return self._deliveries(rules, event, picks)

    def _deliveries(self, rules: RuleSet, event: model.Event,
                    picks: dict[tuple[str, str], model.Event]) -> list[model.Delivery]:
        out: list[model.Delivery] = []
        bodies: dict[tuple[str, str], bytes] = {}
        for (event_id, name), ev in picks.items():
            target = rules.targets.get(name)
            if target is None:  # validation refuses such rules; belt and braces
                continue
            try:
                body = bodies.get((event_id, target.format))
                if body is None:
                    body = bodies[(event_id, target.format)] = render(ev, target.format)
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

    async def _queue_integrations(self, rules: RuleSet, event: model.Event) -> list[tuple[model.Event, str]]:
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
            return [(start, t) for r in starters if r.accepts_start(start) for t in r.targets]
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
        return [(event, t) for r in selected if r.accepts_message(event) for t in r.targets]

    @staticmethod
    def _selected(rules: RuleSet, queue_id: Any, queue_name: Any) -> list[QueueRule]:
        return [r for r in rules.queue_rules if r.selects_queue(queue_id, queue_name)]
