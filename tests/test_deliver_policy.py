"""The Sender's pure decisions: what a response means and when to try again."""

from __future__ import annotations

import email.utils

from hypothesis import given
from hypothesis import strategies as st

from whazing_gateway import model
from whazing_gateway.deliver.sender import Breaker, TokenBucket, build_headers, decide, next_delay, parse_retry_after

N8N = model.Target(name="n", url="http://x")
GENERIC = model.Target(name="g", url="http://x", kind="generic")
NOW = 1_000_000.0


def test_parse_retry_after():
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(" 1.5 ", NOW) == 1.5
    assert parse_retry_after("-3", NOW) == 0
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    assert abs(parse_retry_after(date, NOW) - 90) < 1
    assert parse_retry_after(email.utils.formatdate(NOW - 90, usegmt=True), NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_default_schedule_then_dead():
    # attempt k failed -> wait DEFAULT_RETRY_SCHEDULE[k]; after the 8th attempt: dead letter
    delays = [decide(N8N, 500, None, k, NOW, jitter=0).next_at - NOW for k in range(1, 8)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000]
    last = decide(N8N, 500, None, 8, NOW, jitter=0)
    assert last.outcome == "dead" and "exhausted" in last.reason


def test_classification():
    assert decide(N8N, 200, None, 1, NOW).outcome == "delivered"
    assert decide(N8N, 204, None, 1, NOW).outcome == "delivered"
    for status in (408, 429, 500, 502, 503, 504):
        d = decide(GENERIC, status, None, 1, NOW)
        assert d.outcome == "retry" and d.target_failure
    for status in (400, 401, 403, 405, 413, 422):
        d = decide(N8N, status, None, 1, NOW)
        assert d.outcome == "dead" and not d.target_failure and not d.pause
    assert decide(GENERIC, 404, None, 1, NOW).outcome == "dead"
    n8n_404 = decide(N8N, 404, None, 1, NOW)
    assert n8n_404.outcome == "retry" and n8n_404.warning
    gone = decide(N8N, 410, None, 1, NOW)
    assert gone.outcome == "dead" and gone.pause
    moved = decide(N8N, 301, None, 1, NOW, location="https://x")
    assert moved.outcome == "dead" and "https://x" in moved.reason
    conn = decide(N8N, None, "ClientConnectorError: refused", 1, NOW)
    assert conn.outcome == "retry" and conn.reason.startswith("ClientConnectorError")


def test_retry_after_overrides_the_schedule_but_not_its_end():
    assert decide(N8N, 429, None, 1, NOW, retry_after=2).next_at == NOW + 2
    assert decide(N8N, 429, None, 1, NOW, retry_after=10**9).next_at == NOW + 86400
    assert decide(N8N, 429, None, 8, NOW, retry_after=2).outcome == "dead"


@given(st.lists(st.floats(0, 1e5), min_size=1, max_size=10), st.integers(0, 12), st.floats(0, 1))
def test_jitter_stays_within_ten_percent(schedule, done, r):
    delay = next_delay(tuple(schedule), done, 0.1, lambda: r)
    if done >= len(schedule):
        assert delay is None
    else:
        assert schedule[done] * 0.9 - 1e-9 <= delay <= schedule[done] * 1.1 + 1e-9


def test_breaker_cycle():
    b = Breaker(threshold=3, cooldown_s=10, max_cooldown_s=25)
    assert [b.failure(0), b.failure(0), b.failure(0)] == [False, False, True]
    assert b.state(5) == "open" and b.state(10) == "half-open"
    assert b.failure(6) is False and b.open_until == 10  # a straggler does not extend it
    assert b.failure(10) is True and b.open_until == 30  # the probe failed: twice as long
    assert b.failure(31) is True and b.open_until == 56  # capped at max_cooldown_s
    assert b.success() is True and b.state(31) == "closed"
    assert b.failure(40) is False and b.current_cooldown == 0


def test_token_bucket():
    t = [0.0]
    bucket = TokenBucket(2, clock=lambda: t[0])
    assert bucket.available() == 2
    bucket.take(2)
    assert bucket.available() == 0 and bucket.wait_s() == 0.5
    t[0] = 0.5
    assert bucket.available() == 1
    t[0] = 100
    assert bucket.available() == 2  # burst is bounded


def test_headers_keep_required_values():
    target = model.Target(name="n", url="http://x", headers={"X-N8N-API-KEY": "user", "webhook-id": "fake",
                                                             "User-Agent": "custom"})
    dl = model.Delivery(id="msg_1", target="n", event_id="e", event_type="x", order_key=None, body=b"{}",
                        created_at=0)
    h = build_headers(target, dl, 42)
    assert h["webhook-id"] == "msg_1" and h["webhook-timestamp"] == "42"
    assert h["User-Agent"] == "custom"  # a target may name itself differently
    assert h["X-N8N-API-KEY"] == "user"  # no api_key configured: the header given is kept
    assert "webhook-signature" not in h
