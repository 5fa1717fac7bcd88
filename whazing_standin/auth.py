"""Whazing's tokens: the session JWT (HS256, `{id, username, profile, tenantId}`), the refresh
token (cookie `jrt`) and the external API's bearer check. Error bodies are `{"error": "..."}`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from whazing_standin import seed
from whazing_standin.store import User


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: what the real `isAuth` middleware puts in `req.user`."""

    id: int
    profile: str
    tenantId: int


class AuthError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def issue_token(u: User, ttl: int, secret: str = seed.JWT_SECRET) -> str:
    now = int(time.time())
    claims = {"id": u.id, "username": u.name, "profile": u.profile, "tenantId": u.tenantId,
              "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


def issue_refresh_token(u: User, ttl: int) -> str:
    now = int(time.time())
    return jwt.encode({"id": u.id, "tokenVersion": u.tokenVersion, "iat": now, "exp": now + ttl},
                      seed.JWT_REFRESH_SECRET, algorithm="HS256")


def decode_token(token: str, secret: str = seed.JWT_SECRET) -> dict[str, Any]:
    return jwt.decode(token, secret, algorithms=["HS256"])


def principal_from_header(header: str | None) -> Principal:
    """The `isAuth` middleware: 403 without a header or with a bad token, 401 when expired."""
    if not header:
        raise AuthError("Token was not provided.", 403)
    parts = header.split(" ", 1)
    token = parts[1].strip() if len(parts) == 2 else ""
    try:
        claims = decode_token(token)
    except jwt.ExpiredSignatureError:
        raise AuthError("ERR_SESSION_EXPIRED", 401) from None
    except jwt.PyJWTError:
        raise AuthError("Invalid token.", 403) from None
    return Principal(int(claims["id"]), str(claims.get("profile", "user")), int(claims["tenantId"]))


def tenant_from_socket_auth(auth: Any) -> int | None:
    """The socket middleware: the CONNECT payload `{token}`; None when missing or invalid."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        return None
    try:
        return int(decode_token(str(token))["tenantId"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return None


def check_api_token(header: str | None, expected: str) -> None:
    """The external API's check: the API config's own JWT, not a user session."""
    if not header:
        raise AuthError("Token was not provided.", 403)
    parts = header.split(" ", 1)
    token = parts[1].strip() if len(parts) == 2 else ""
    if token != expected:
        raise AuthError("Invalid token.", 403)
    try:
        decode_token(token, seed.API_SECRET)
    except jwt.PyJWTError:
        raise AuthError("Invalid token.", 403) from None
