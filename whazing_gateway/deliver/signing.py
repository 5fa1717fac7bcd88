"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the key is
the base64 part of a `whsec_...` secret. Several secrets (rotation) give several space-separated
signatures; a receiver accepts the message if any one verifies. Written with hmac/hashlib only:
the `standardwebhooks` package is kept as the independent verifier in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Iterable

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decode after an optional `whsec_` prefix."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("webhook secret is not base64 (expected whsec_<base64>)") from exc


def sign(secret_whsec: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the message."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    mac = hmac.new(secret_key(secret_whsec), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret, space-separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def new_secret(nbytes: int = 32) -> str:
    """A fresh `whsec_` secret (24-64 random bytes is what the spec recommends)."""
    if not 24 <= nbytes <= 64:
        raise ValueError("secrets should have 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(os.urandom(nbytes)).decode()
