"""Whazing's `POST /auth/login/` with the observer's credentials, for every call the gateway
makes on its own (socket.io observer, catch-up listing, media in base64)."""

from __future__ import annotations

import aiohttp

from whazing_gateway.ops.logs import register_secret


async def login(session: aiohttp.ClientSession, base_url: str, email: str, password: str) -> str:
    """The bearer token; it is masked in every log line from now on. Refusals raise PermissionError."""
    async with session.post(f"{base_url.rstrip('/')}/auth/login/", json={"email": email, "password": password}) as resp:
        if resp.status != 200:
            raise PermissionError(f"login refused: HTTP {resp.status}")
        body = await resp.json()
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise PermissionError("login answered without a token")
    register_secret(token)
    return token
