"""`/metrics` after the scenario counts exactly what happened: events by type (from the
scenario's meaning, tests/test_gateway_e2e.py `_expected`), deliveries routed and finished by
target and outcome, no dead letters, no decode or stage errors.

Watched by the observer and a browser at once, so de-duplication shows too: every push reaches
the gateway twice, is decoded once, and every event is counted once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import tests.test_gateway_e2e as e2e
from tests.harness import GatewayProcess, RawBrowser, login, rules_yaml, wait_until
from tests.receivers import Receiver
from whazing_standin import seed
from whazing_standin.demo import metric_by, metric_sum, parse_metrics
from whazing_standin.scenario import play_day
from whazing_standin.server import start_standin


@pytest.mark.slow
async def test_metrics_after_the_scenario_match_it_exactly(tmp_path):
    standin = await start_standin()
    receiver = await Receiver().start()
    gw = await GatewayProcess(tmp_path, standin.url, rules_yaml(receiver.url()),
                              env={"WHAZING_OBSERVER_EMAIL": seed.ADMIN_EMAIL,
                                   "WHAZING_OBSERVER_PASSWORD": seed.PASSWORD}).start()
    browser = None
    try:
        before = parse_metrics(await gw.metrics())
        assert metric_sum(before, "whazing_gateway_events_total") == 0
        await wait_until(lambda: "observer connected" in gw.log(), 30, what="the observer")
        browser = await RawBrowser(gw.url, await login(gw.url)).start()
        day = await play_day(gw.url)
        expected = e2e._expected(day.step("login_agent1").detail["user_id"], day.step("login_agent2").detail["user_id"])
        types = Counter(ev[0] for evs in expected.values() for ev in evs)
        total = sum(types.values())
        assert total == 33
        await receiver.wait_for(total, timeout=60)
        pushes = len(standin.standin.emitted)
        assert len(browser.events()) >= pushes  # the browser did receive its copies

        async def scrape():
            return parse_metrics(await gw.metrics())

        m = await scrape()
        deadline_checks = 0
        while (metric_sum(m, "whazing_gateway_deliveries_total") < total
               or metric_sum(m, "whazing_gateway_outbox_pending") != 0) and deadline_checks < 100:
            deadline_checks += 1  # the receiver answered; the outcome and backlog are recorded right after
            await asyncio.sleep(0.1)
            m = await scrape()
    finally:
        if browser is not None:
            await browser.stop()
        await gw.stop()
        await receiver.stop()
        await standin.stop()

    assert metric_by(m, "whazing_gateway_events_total", "type") == dict(types)
    assert types == {"message.received": 6, "message.sent": 7, "ticket.created": 4, "ticket.transferred": 4,
                     "ticket.accepted": 4, "ticket.closed": 6, "ticket.reopened": 2}
    # Each push reached the gateway twice (observer + browser): at most one observation per push
    # (copies are dropped before decoding), and no event counted twice (above).
    assert 0 < metric_sum(m, "whazing_gateway_observations_total", kind="socket") <= pushes
    routed = metric_by(m, "whazing_gateway_deliveries_routed_total", "type")
    assert routed == dict(types)
    assert metric_by(m, "whazing_gateway_deliveries_routed_total", "target") == {"recv": total}
    assert metric_sum(m, "whazing_gateway_deliveries_total", target="recv", outcome="delivered") == total
    assert metric_sum(m, "whazing_gateway_deliveries_total", outcome="dead") == 0
    assert metric_sum(m, "whazing_gateway_delivery_attempts_total", target="recv") == total  # no retries
    assert metric_sum(m, "whazing_gateway_dead_letters_total") == 0
    assert metric_sum(m, "whazing_gateway_outbox_pending") == 0
    assert metric_sum(m, "whazing_gateway_outbox_errors_total") == 0
    assert metric_sum(m, "whazing_gateway_decode_errors_total") == 0
    assert metric_sum(m, "whazing_gateway_stage_errors_total") == 0
    assert metric_sum(m, "whazing_gateway_observations_dropped_total") == 0
    assert metric_sum(m, "whazing_gateway_observer_connected") == 1
    assert metric_sum(m, "whazing_gateway_event_to_delivery_seconds_count", target="recv") == total
