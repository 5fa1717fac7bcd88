"""HTTP body decoding: content-encoding (gzip, deflate, br) and JSON, with a size cap."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

try:  # Brotli ships with mitmproxy; keep the core importable without it.
    import brotli
except ImportError:  # pragma: no cover
    brotli = None


class BodyError(ValueError):
    """A body that cannot be decoded; the traffic itself is passed through untouched."""


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding; refuse to inflate beyond `limit` bytes (zip bombs)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return raw
    try:
        if enc in ("gzip", "x-gzip"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(raw, limit + 1)
        elif enc == "deflate":
            try:
                d = zlib.decompressobj()
                out = d.decompress(raw, limit + 1)
            except zlib.error:  # raw deflate without the zlib header, as some servers send
                d = zlib.decompressobj(-zlib.MAX_WBITS)
                out = d.decompress(raw, limit + 1)
        elif enc == "br" and brotli is not None:
            out = brotli.decompress(raw)
        else:
            raise BodyError(f"unsupported content-encoding {enc!r}")
    except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise BodyError(f"bad {enc} body: {exc}") from None
    except Exception as exc:  # brotli.error has no stable import path
        if isinstance(exc, BodyError):
            raise
        raise BodyError(f"bad {enc} body: {exc}") from None
    if len(out) > limit:
        raise BodyError(f"decoded body larger than {limit} bytes")
    return out


def parse_json(raw: bytes | None, encoding: str | None = None, limit: int = 1 << 20) -> Any:
    """Decoded JSON of a body, or None when there is no body. Raises BodyError when broken."""
    if not raw:
        return None
    if len(raw) > limit:
        raise BodyError(f"body larger than {limit} bytes")
    data = decompress(raw, encoding, limit)
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"body is not JSON: {exc}") from None
