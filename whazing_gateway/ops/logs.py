"""Logging for the gateway: structlog everywhere, JSON off a terminal, secrets never written.

The gateway sees every credential of a Whazing (agents' JWTs, login passwords, API tokens) and
holds its own (webhook keys, signing secrets, the observer's password), so every line, our own
and mitmproxy's, passes one redaction processor before it is rendered. Redaction works on the
event dict (keys that name secrets, nested containers) and on strings (Bearer tokens, JWTs,
`whsec_` secrets, socket.io CONNECT payloads, `key=value` and `"key": "value"` pairs), plus exact
values the gateway registers with `register_secret`.

It runs on every log line, never on the traffic path: the hot path logs nothing at info level.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any, MutableMapping

import structlog

MASK = "***"

# Keys (lower-case, with "-" and "_" removed) whose values are secrets whatever they look like.
_SECRET_KEYS = frozenset(
    {
        "authorization", "proxyauthorization", "token", "tokens", "accesstoken", "refreshtoken",
        "idtoken", "bearertoken", "password", "passwd", "pwd", "webpassword", "newpassword",
        "oldpassword", "apikey", "xn8napikey", "xapikey", "secret", "secrets", "signingsecret",
        "clientsecret", "webhooksecret", "cookie", "setcookie", "jwt", "credentials", "privatekey",
    }
)
# Suffixes that make a key secret too (observer_password, n8n_api_key, api_token, ...).
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "secrets", "apikey", "cookie")
# Keys the suffix rule would catch but that hold no secret.
_NOT_SECRET = frozenset({"tokentype"})

_KEY_ALT = (
    r"authorization|proxy-authorization|x-n8n-api-key|x-api-key|api[_-]?key|apikey|"
    r"bearertoken|access[_-]?token|refresh[_-]?token|id[_-]?token|tokens?|"
    r"web[_-]?password|password|passwd|secret|secrets|signing[_-]?secret|cookie|set-cookie|jwt"
)
_STRING_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # "password": "x", 'token': 'x' (JSON bodies and Python reprs inside strings), including
    # socket.io CONNECT frames 40{"token":"..."} and header tuples (b'cookie', b'sid=x').
    (
        re.compile(
            r"""(?P<k>["'](?:[\w-]*?(?:""" + _KEY_ALT + r"""))["']\s*[:,]\s*b?)"""
            r"""(?P<q>["'])(?P<v>(?:\\.|(?!(?P=q)).)*)(?P=q)""",
            re.IGNORECASE,
        ),
        lambda m: f"{m.group('k')}{m.group('q')}{MASK}{m.group('q')}",
    ),
    # The same, JSON-escaped inside another string: {\"password\":\"x\"}.
    (
        re.compile(
            r"""(?P<k>\\["'](?:[\w-]*?(?:""" + _KEY_ALT + r"""))\\["']\s*:\s*\\["'])(?P<v>[^"'\\]*)""",
            re.IGNORECASE,
        ),
        lambda m: m.group("k") + MASK,
    ),
    # Header lines: "Authorization: Bearer x", "Cookie: a=b; c=d", "X-N8N-API-KEY: x".
    (
        re.compile(
            r"(?P<k>\b(?:authorization|proxy-authorization|x-n8n-api-key|x-api-key|cookie|set-cookie)"
            r"\s*:\s*)(?P<v>[^\r\n\"',}]+)",
            re.IGNORECASE,
        ),
        lambda m: m.group("k") + MASK,
    ),
    # Query strings and form bodies: ?bearertoken=x&token=y, password=z.
    (
        re.compile(
            r"(?P<k>(?:(?<=[?&;\s,(])|^)[\w.-]*?(?:" + _KEY_ALT + r")=)(?P<v>[^&\s\"',;)]+)",
            re.IGNORECASE,
        ),
        lambda m: m.group("k") + MASK,
    ),
    # Authorization schemes anywhere in text ("missing bearer token" stays readable).
    (
        re.compile(
            r"\b(?P<k>bearer)\s+(?!(?:token|tokens|auth|authentication|header|scheme)\b)"
            r"(?P<v>[A-Za-z0-9\-._~+/]+=*)",
            re.IGNORECASE,
        ),
        lambda m: f"{m.group('k')} {MASK}",
    ),
    (
        re.compile(r"\b(?P<k>Basic)\s+(?P<v>[A-Za-z0-9+/]{8,}=*)"),
        lambda m: f"{m.group('k')} {MASK}",
    ),
    # JWTs (header and payload are base64url JSON objects: they start with eyJ).
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), lambda m: MASK),
    # Standard Webhooks signing secrets.
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), lambda m: "whsec_" + MASK),
    # Userinfo of URLs: https://user:pass@host, redis://:pass@host (user and password both).
    (re.compile(r"(?P<k>\b[a-z][a-z0-9+.-]{0,20}://)(?P<v>[^/?#@\s\"']{1,256})@", re.IGNORECASE),
     lambda m: f"{m.group('k')}{MASK}@"),
]
# Cheap pre-check: a string containing none of these (lower-cased) cannot match any pattern
# above. Plain substring tests: several times faster than one case-insensitive regex.
_HINTS = ("eyj", "whsec_", "bearer", "basic", "token", "authoriz", "passw", "secret", "apikey",
          "api_key", "api-key", "cookie", "jwt", "://")


def _may_hold_secret(text: str) -> bool:
    low = text.lower()
    for hint in _HINTS:
        if hint in low:
            return True
    return False


_lock = threading.Lock()
_registered: set[str] = set()
_registered_re: re.Pattern[str] | None = None
MIN_SECRET_LEN = 4


def register_secret(value: str | bytes | None) -> None:
    """Mask this exact value wherever it appears in a log line from now on.

    For the gateway's own secrets (API keys, signing secrets, the observer's password): values
    too short to be told apart from ordinary text (< 4 characters) are ignored.
    """
    global _registered_re
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value)
    if len(value) < MIN_SECRET_LEN or value in _registered:
        return
    with _lock:
        _registered.add(value)
        alts = sorted(_registered, key=len, reverse=True)
        _registered_re = re.compile("|".join(re.escape(v) for v in alts))


_ENV_PART = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def register_env_parts(template: object, env: Mapping[str, str] | None = None) -> None:
    """Mask the values that `${VAR}` references in `template` (a target URL as written in the
    rules) put there: a URL's path or query often carries a token (n8n webhook ids)."""
    if not isinstance(template, str) or "${" not in template:
        return
    env = os.environ if env is None else env
    for name in _ENV_PART.findall(template):
        register_secret(env.get(name))


def mask_url(url: str) -> str:
    """A URL fit for a log line or a file at rest: userinfo and registered `${VAR}` parts masked."""
    return redact_text(url)


def clear_registered_secrets() -> None:
    """Forget registered values (tests, config reloads)."""
    global _registered_re
    with _lock:
        _registered.clear()
        _registered_re = None


def is_secret_key(key: object) -> bool:
    """True for a mapping key that names a secret (authorization, x-n8n-api-key, db_password...)."""
    return isinstance(key, str) and _secret_key(key)


@functools.lru_cache(maxsize=4096)  # log keys are a small, repeating set
def _secret_key(key: str) -> bool:
    k = key.lower().replace("-", "").replace("_", "")
    if k in _NOT_SECRET:
        return False
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def redact_text(text: str) -> str:
    """Mask every secret-looking part of a string."""
    reg = _registered_re
    if reg is not None:
        text = reg.sub(MASK, text)
    if not _may_hold_secret(text):
        return text
    for pattern, repl in _STRING_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _mask_value(value: Any) -> Any:
    # Keep None and booleans (has_token=False says something and leaks nothing).
    if value is None or isinstance(value, bool):
        return value
    return MASK


def redact(value: Any, _depth: int = 0) -> Any:
    """Return `value` with secrets masked; containers are copied, never changed in place."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth > 12:
        return MASK  # absurdly deep: do not risk printing it
    if isinstance(value, Mapping):
        return {
            k: (_mask_value(v) if is_secret_key(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        # Header lists: [("authorization", "Bearer x"), ...]
        make: Any = type(value)  # list or tuple (or a subclass of one)
        if len(value) == 2 and is_secret_key(value[0]):
            return make((value[0], _mask_value(value[1])))
        return make(redact(v, _depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
        masked = redact_text(text)
        return masked if masked != text else value
    # Anything else is rendered with repr() later: check that text.
    text = repr(value)
    masked = redact_text(text)
    return masked if masked != text else value


def redact_processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every value of the event dict."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):  # _record, _from_structlog: structlog's own plumbing
            continue
        if key != "event" and is_secret_key(key):
            event_dict[key] = _mask_value(value)
        else:
            event_dict[key] = redact(value)
    return event_dict


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
           "critical": logging.CRITICAL, "fatal": logging.CRITICAL}
_threshold = logging.INFO


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(_LEVELS)})") from None


def _drop_below_level(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # mitmproxy sets the root logger to DEBUG, so the stdlib's own check lets everything through;
    # drop early here, before any rendering work.
    if _LEVELS.get(method_name, logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event_dict


def _add_client(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # mitmproxy puts the client address on its records as `client`.
    record = event_dict.get("_record")
    client = getattr(record, "client", None) if record is not None else None
    if client and "client" not in event_dict:
        try:
            event_dict["client"] = f"{client[0]}:{client[1]}"
        except (TypeError, IndexError):
            event_dict["client"] = str(client)
    return event_dict


# mitmproxy's `proxy_debug` lines carry the raw bytes of every connection (">> DataReceived(client,
# b'...')", "<< SendData(server, b'...')"). A browser's websocket frames are masked there: its
# socket.io CONNECT (and the JWT in it) shows as bytes XORed with a key printed beside them, which
# no text pattern can see, yet anyone reading the log can undo. So the bytes are not logged, only
# their size: the flow viewer shows the same traffic decoded.
_RAW_BYTES = re.compile(r"(?P<k>\b(?:DataReceived|SendData)\(\w+, )(?P<v>b(?P<q>['\"]).*?)(?=\)?$)", re.M)


def _raw_size(literal: str) -> str:
    import ast

    try:
        return f"{len(ast.literal_eval(literal))} bytes"
    except (ValueError, SyntaxError, TypeError, MemoryError):  # cut at mitmproxy's 2048 characters
        return "bytes"


def _elide_raw_bytes(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    text = event_dict.get("event")
    if (record is not None and record.name == "mitmproxy.proxy.server" and isinstance(text, str)
            and ("DataReceived(" in text or "SendData(" in text)):
        event_dict["event"] = _RAW_BYTES.sub(lambda m: f"{m.group('k')}<{_raw_size(m.group('v'))} elided>", text)
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # JSON lines read better (and grep better) with the same four keys first.
    ordered = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class GatewayLogHandler(logging.StreamHandler):
    """Our root handler (a marker class, so a second configure_logging replaces it).

    Configured for sys.stderr, it looks sys.stderr up at every line instead of keeping the
    object it was given: a CLI command run in-process (tests, embedding) whose sys.stderr is
    swapped and closed later must not leave a handler writing to a closed file.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._follow_stderr = stream is None or stream is sys.stderr
        super().__init__(stream)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr if self._follow_stderr else self._stream

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        self._stream = value


_CONNECTION_CHATTER = ("client connect", "client disconnect", "server connect", "server disconnect")


class _ConnectionChatter(logging.Filter):
    """mitmproxy logs every connection open and close at info; in front of a whole helpdesk that
    is most of the log. Keep them at debug level only; errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _threshold <= logging.DEBUG or record.name != "mitmproxy.proxy.server":
            return True
        msg = record.msg
        return not (isinstance(msg, str) and msg.startswith(_CONNECTION_CHATTER))


def detach_mitmproxy_termlog() -> int:
    """Remove mitmproxy's terminal log handler from the root logger; return how many.

    Our handler renders mitmproxy's records too (redacted, same format), so keeping mitmdump's
    TermLog would print every line twice, unredacted the second time. mitmweb's event-log
    handler is kept: it feeds the flow viewer's Events pane.
    """
    try:
        from mitmproxy.addons.termlog import TermLogHandler
    except Exception:  # mitmproxy not importable: nothing to detach
        return 0
    root = logging.getLogger()
    found = [h for h in root.handlers if isinstance(h, TermLogHandler)]
    for h in found:
        root.removeHandler(h)
    return len(found)


class _HandlerLines:
    """A structlog logger that writes each rendered line to our handler's stream, under the
    handler's lock, as the stdlib path would: same stream, same order, no LogRecord."""

    def __init__(self, handler: logging.StreamHandler) -> None:
        self.handler = handler

    def msg(self, message: str) -> None:
        handler = self.handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: what StreamHandler would swallow
            pass
        finally:
            handler.release()

    info = debug = warning = error = critical = msg


_fast: dict[str, Any] = {}  # the JSON set-up of the last configure_logging, for hot_logger


def hot_logger(name: str) -> Any:
    """A logger for a line written per event on a hot path (the pipeline's `event` line).

    The same line as `structlog.get_logger(name)` writes, rendered by structlog alone: no
    stdlib LogRecord and formatter on the way (about half the time a line). On a console (or before
    logging is configured) it is the ordinary logger. Ask for it per use, not at import: a
    later configure_logging replaces it."""
    processors = _fast.get("processors")
    if processors is None or tuple(structlog.get_config()["processors"]) != _fast["configured"]:
        return structlog.get_logger(name)  # a console, or structlog set up since (capture_logs)
    return structlog.wrap_logger(_fast["lines"], processors=processors,
                                 wrapper_class=_fast["wrapper"]).bind(logger=name)


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    """Set up structlog and the stdlib root logger (mitmproxy's) to write through one redactor.

    fmt: "auto" (console on a terminal, JSON otherwise), "json" or "console".
    Safe to call again (tests, reloads): it replaces its previous handler.
    """
    global _threshold
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (auto, json, console)")
    follow_stderr = stream is None or stream is sys.stderr
    stream = stream if stream is not None else sys.stderr
    _threshold = _level_number(level)
    tty = _is_tty(stream)
    use_console = fmt == "console" or (fmt == "auto" and tty)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)

    configured = [_drop_below_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=configured,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a later configure_logging (tests, reloads) must reach module-level loggers.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_add_client, _elide_raw_bytes, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if use_console else [_order_keys]),
            renderer,
        ],
    )
    handler = GatewayLogHandler(None if follow_stderr else stream)
    handler.setFormatter(formatter)
    _fast.clear()
    if not use_console:
        _fast.update(
            configured=tuple(configured),  # structlog.testing.capture_logs edits the list in place
            lines=_HandlerLines(handler),
            wrapper=structlog.make_filtering_bound_logger(_threshold),
            processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True), redact_processor, _order_keys,
                        renderer],
        )
    handler.setLevel(_threshold)
    handler.addFilter(_ConnectionChatter())

    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, GatewayLogHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > _threshold:
        root.setLevel(_threshold)
    detach_mitmproxy_termlog()
    # Chatty libraries: their debug lines are noise even at debug level.
    for name in ("asyncio", "hpack", "aiohttp.access"):
        logging.getLogger(name).setLevel(max(logging.WARNING, _threshold))
