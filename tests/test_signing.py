"""Our signatures, checked by the independent `standardwebhooks` verifier from PyPI."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from whazing_gateway.deliver import signing


def _headers(sig: str, msg_id: str, ts: int) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_signature_verifies_with_standardwebhooks():
    secret = signing.new_secret()
    body = '{"Type":"NewTicket","ticket":{"id":123},"messageBody":"Olá, ação!"}'.encode()
    ts = int(time.time())
    sig = signing.signature_header([secret], "msg_abc", ts, body)
    assert sig.startswith("v1,")
    payload = Webhook(secret).verify(body, _headers(sig, "msg_abc", ts))
    assert payload["ticket"]["id"] == 123


def test_rotation_any_secret_verifies_and_others_fail():
    old, new, stranger = signing.new_secret(), signing.new_secret(24), signing.new_secret(64)
    body, ts = b'{"a":1}', int(time.time())
    sig = signing.signature_header([new, old], "msg_rot", ts, body)
    assert len(sig.split(" ")) == 2
    Webhook(old).verify(body, _headers(sig, "msg_rot", ts))
    Webhook(new).verify(body, _headers(sig, "msg_rot", ts))
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, _headers(sig, "msg_rot", ts))


@pytest.mark.parametrize("field", ["body", "id", "timestamp"])
def test_tampering_is_detected(field):
    secret = signing.new_secret()
    body, ts, msg_id = b'{"a":1}', int(time.time()), "msg_t"
    sig = signing.sign(secret, msg_id, ts, body)
    if field == "body":
        body = b'{"a":2}'
    elif field == "id":
        msg_id = "msg_u"
    else:
        ts += 1
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, _headers(sig, msg_id, ts))


def test_secret_without_prefix_is_the_same_key():
    raw = base64.b64encode(b"k" * 32).decode()
    assert signing.sign("whsec_" + raw, "m", 1, b"x") == signing.sign(raw, "m", 1, b"x")
    with pytest.raises(ValueError):
        signing.sign("whsec_not base64!", "m", 1, b"x")
