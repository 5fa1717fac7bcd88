"""HTTP body decoding: content-encodings (gzip, deflate, br, stacked) and JSON, every step bounded.

Hostile bodies cost only themselves: inflation stops at the inspection limit *while* inflating
(a 1.6 KB brotli bomb never becomes 1 GiB), JSON nesting and number sizes are capped, and the
only exception that leaves this module is `BodyError` (with a `kind` for the metrics).
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

try:  # Brotli ships with mitmproxy; keep the core importable without it.
    import brotli
except ImportError:  # pragma: no cover
    brotli = None

# Whazing's JSON is a few levels deep (ticket -> contact -> tags -> tag); anything far deeper is
# hostile, and Python's own parsers and serializers recurse on depth.
MAX_JSON_DEPTH = 64
# Whazing's numbers are int64 ids, counters and epoch times: 40 characters is generous, and it
# keeps int()'s quadratic conversion (and its 4300-digit ValueError) out of reach.
MAX_NUMBER_CHARS = 40
# More stacked encodings than this is not a real server.
MAX_ENCODINGS = 4


class BodyError(ValueError):
    """A body that cannot be decoded; the traffic itself is passed through untouched.

    `kind` names the class of bad input for the metrics (too_large, bomb, encoding, json,
    too_deep, number)."""

    def __init__(self, message: str, kind: str = "body") -> None:
        super().__init__(message)
        self.kind = kind


def _inflate_zlib(raw: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(raw, limit + 1)
    if len(out) > limit:
        raise BodyError(f"decoded body larger than {limit} bytes", "bomb")
    return out


def _brotli_has_output_limit() -> bool:
    if brotli is None or not hasattr(brotli, "Decompressor"):
        return False
    return "output_buffer_limit" in (brotli.Decompressor.process.__doc__ or "")


_BROTLI_OUTPUT_LIMIT = _brotli_has_output_limit()


def _inflate_brotli(raw: bytes, limit: int) -> bytes:
    """Brotli with a bounded output. Brotli >= 1.2 (mitmproxy 12) bounds the output buffer
    itself; older ones (mitmproxy 11 pins 1.1) are fed one input byte at a time, so a bomb
    stops at most one meta-block (16 MiB) past the limit."""
    if brotli is None:
        raise BodyError("br body but no brotli module", "encoding")
    d = brotli.Decompressor()
    if _BROTLI_OUTPUT_LIMIT:
        out = d.process(raw, output_buffer_limit=limit + 1)
        if len(out) > limit:
            raise BodyError(f"decoded body larger than {limit} bytes", "bomb")
    else:
        parts: list[bytes] = []
        size = 0
        view = memoryview(raw)
        for i in range(len(raw)):
            piece = d.process(bytes(view[i:i + 1]))
            if piece:
                size += len(piece)
                if size > limit:
                    raise BodyError(f"decoded body larger than {limit} bytes", "bomb")
                parts.append(piece)
        out = b"".join(parts)
    if not d.is_finished():
        raise BodyError("truncated br body", "encoding")
    return out


def _decode_one(raw: bytes, enc: str, limit: int) -> bytes:
    if enc in ("", "identity"):
        return raw
    if enc in ("gzip", "x-gzip"):
        return _inflate_zlib(raw, 16 + zlib.MAX_WBITS, limit)
    if enc == "deflate":
        try:
            return _inflate_zlib(raw, zlib.MAX_WBITS, limit)
        except zlib.error:  # raw deflate without the zlib header, as some servers send
            return _inflate_zlib(raw, -zlib.MAX_WBITS, limit)
    if enc == "br":
        return _inflate_brotli(raw, limit)
    raise BodyError(f"unsupported content-encoding {enc!r}", "encoding")


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (stacked ones in reverse order); never inflate beyond `limit` bytes."""
    encodings = [e.strip().lower() for e in (encoding or "").split(",")]
    encodings = [e for e in encodings if e not in ("", "identity")]
    if not encodings:
        return raw
    if len(encodings) > MAX_ENCODINGS:
        raise BodyError(f"{len(encodings)} stacked content-encodings", "encoding")
    out = raw
    for enc in reversed(encodings):
        try:
            out = _decode_one(out, enc, limit)
        except BodyError:
            raise
        except Exception as exc:  # zlib.error, brotli.error (no stable import path), MemoryError
            raise BodyError(f"bad {enc} body: {exc}", "encoding") from None
    return out


# -- JSON ---------------------------------------------------------------------------------------
def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise BodyError(f"JSON number of {len(text)} characters", "number")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS * 2:
        raise BodyError(f"JSON number of {len(text)} characters", "number")
    value = float(text)
    if math.isinf(value):  # 1e400: re-encoded it would be `Infinity`, which is not JSON
        raise BodyError(f"JSON number {text} overflows a double", "number")
    return value


def _no_constant(name: str) -> Any:
    raise BodyError(f"JSON constant {name} is not JSON", "number")


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _may_nest_deeper(text: str | bytes, limit: int) -> bool:
    """Cheap prefilter: a document with at most `limit` openers cannot nest deeper than that."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > limit
    return text.count("[") + text.count("{") > limit


def loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with bounded nesting and numbers; raises only BodyError."""
    try:
        if isinstance(text, bytes):
            text = text.decode(json.detect_encoding(text), "strict")
        value = _DECODER.decode(text)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("JSON nested too deep", "too_deep") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, LookupError-free
        raise BodyError(f"not JSON: {exc}", "json") from None
    if isinstance(value, (dict, list)) and _may_nest_deeper(text, max_depth) and json_depth_exceeds(value, max_depth):
        raise BodyError(f"JSON nested deeper than {max_depth}", "too_deep")
    return value


def parse_json(raw: bytes | None, encoding: str | None = None, limit: int = 1 << 20) -> Any:
    """Decoded JSON of a body, or None when there is no body. Raises BodyError when broken."""
    if not raw:
        return None
    if len(raw) > limit:
        raise BodyError(f"body larger than {limit} bytes", "too_large")
    data = decompress(raw, encoding, limit)
    if not data:
        return None
    return loads(data)
