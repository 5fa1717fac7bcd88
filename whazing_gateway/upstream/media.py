"""Whazing's "media in base64" option: fetch a message's media through the upstream, bounded.

Used where deliveries are built (the router), only for rules with `media_base64: true` and
only for messages that carry a `mediaUrl`. Everything is async and bounded by a size limit and
a timeout (gateway.yaml `media:`), so the proxied traffic never waits for it. The media is read
from the upstream Whazing itself (the path of `mediaUrl` on `upstream`, never another host),
with the observer's login when the deployment keeps files private. When a media is not
included, `Media.note` says why; the body carries that note and the log says it too.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog

from whazing_gateway.upstream.login import login

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024
_ENCODE_IN_THREAD = 256 * 1024  # larger media are encoded off the event loop


@dataclass(frozen=True, slots=True)
class Media:
    """One media as a webhook gets it: its base64, or None and the reason in `note`."""

    base64: str | None
    note: str | None = None
    size: int | None = None


def upstream_url(upstream: str, media_url: str) -> str:
    """The media's path (and query) on the upstream: a mediaUrl may name the public host, the
    gateway itself or another name for the backend; the bytes come from the upstream only."""
    parts = urlsplit(media_url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return urljoin(upstream.rstrip("/") + "/", path.lstrip("/"))


class MediaFetcher:
    """Fetches media from the upstream for base64 deliveries; one login kept and renewed."""

    def __init__(self, upstream: str, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S,
                 email: str | None = None, password: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._email = email
        self._password = password
        self._token: str | None = None
        self._login_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings) -> "MediaFetcher":
        """Limits from gateway.yaml `media:`; the login from the observer's environment variables."""
        return cls(settings.upstream,
                   max_bytes=getattr(settings, "media_max_bytes", DEFAULT_MAX_BYTES),
                   timeout_s=getattr(settings, "media_timeout_s", DEFAULT_TIMEOUT_S),
                   email=os.environ.get(settings.observer_email_env) or None,
                   password=os.environ.get(settings.observer_password_env) or None)

    async def _login(self, session: aiohttp.ClientSession, stale: str | None) -> str | None:
        """The observer's credentials against the upstream; None when there are none."""
        if not (self._email and self._password):
            return None
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return self._token  # another fetch renewed it meanwhile
            self._token = await login(session, self.upstream, self._email, self._password)
            return self._token

    async def fetch(self, media_url: str, **context) -> Media:
        """The media at `media_url` (read from the upstream), or why it is left out. Never raises."""
        url = upstream_url(self.upstream, media_url)
        blog = log.bind(media_url=media_url, **context)
        try:
            media = await asyncio.wait_for(self._fetch(url), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            media = Media(None, f"media not included: fetch timed out after {self.timeout_s:g} s")
        except Exception as exc:  # a refused login, a reset connection: the webhook goes out anyway
            media = Media(None, f"media not included: fetch failed ({type(exc).__name__}: {exc})")
        if media.base64 is None:
            blog.warning("media.skipped", reason=media.note, size=media.size, limit=self.max_bytes)
        else:
            blog.debug("media.included", size=media.size)
        return media

    async def _fetch(self, url: str) -> Media:
        async with aiohttp.ClientSession() as session:
            token = self._token or await self._login(session, None)
            for attempt in (1, 2):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with session.get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (401, 403) and token is not None and attempt == 1:
                        token = await self._login(session, token)  # expired: log in again, once
                        continue
                    if resp.status != 200:
                        return Media(None, f"media not included: fetch failed (HTTP {resp.status})")
                    return await self._read(resp)
        return Media(None, "media not included: fetch failed (login not accepted)")

    async def _read(self, resp: aiohttp.ClientResponse) -> Media:
        limit = self.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            return Media(None, f"media not included: {resp.content_length} bytes, over the limit of {limit} bytes",
                         resp.content_length)
        data = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            data += chunk
            if len(data) > limit:
                return Media(None, f"media not included: more than {limit} bytes, over the limit", len(data))
        raw = bytes(data)
        if len(raw) > _ENCODE_IN_THREAD:
            encoded = await asyncio.to_thread(base64.b64encode, raw)
        else:
            encoded = base64.b64encode(raw)
        return Media(encoded.decode("ascii"), None, len(raw))
