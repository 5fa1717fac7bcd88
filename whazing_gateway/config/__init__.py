"""gateway.yaml -> `Settings`, rules/*.yaml -> `RuleSet`, and `whazing-gateway check`.

Users edit YAML by hand, so every complaint names a file and a line and says what is wrong
(unknown keys get a did-you-mean), and all complaints are gathered before giving up: one
`check` run lists everything to fix. Secrets come from the environment as `${VAR}` or
`${VAR:-default}`; they are never required to be written in a file.

`run` and `check` read the files the same way: a referenced `${VAR}` that is unset (and has
no `:-default`) is an error in both, so the gateway refuses to start rather than sending
webhooks without their key; hot reload refuses such a rules file and keeps the last good one.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from whazing_gateway import model
from whazing_gateway.deliver.signing import secret_key
from whazing_gateway.route.rules import ChannelRule, Match, QueueRule, RuleSet

__all__ = [
    "ConfigError",
    "Issue",
    "RuleSet",
    "Settings",
    "check_command",
    "expand_env",
    "load_rules",
    "load_settings",
    "read_settings",
]


# ============================================================================ issues


@dataclass(frozen=True)
class Issue:
    """One thing wrong in one file, at one line (0 when it is about a folder, not a line)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Raised with every issue found, not just the first."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


# ============================================================================ YAML with lines


class LDict(dict):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int = 1

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LList(list):
    """A sequence that knows its own line and the line of each item (1-based)."""

    line: int = 1

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    """SafeLoader whose maps and sequences carry line numbers and which flags duplicate keys."""

    def __init__(self, stream: str, file: str, issues: list[Issue]) -> None:
        super().__init__(stream)
        self.file = file
        self.issues = issues


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = LDict()
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            loader.issues.append(Issue(loader.file, line, "a mapping key must be a plain value"))
            continue
        if key in data:
            loader.issues.append(Issue(loader.file, line, f"duplicate key '{key}' (first at line {data.key_lines[key]})"))
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = LList()
    data.line = node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.item_lines.append(child.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _load_yaml(path: Path, issues: list[Issue]) -> Any:
    """Parse one file; read and syntax errors become issues and give None."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        issues.append(Issue(file, 0, f"cannot read file: {reason}"))
        return None
    loader = _Loader(text, file, issues)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        issues.append(Issue(file, line, f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"))
        return None
    except yaml.YAMLError as exc:
        issues.append(Issue(file, 1, f"YAML syntax error: {exc}"))
        return None
    finally:
        loader.dispose()


# ============================================================================ ${ENV}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Replace `${VAR}` and `${VAR:-default}`; return the text and the names that were unset.

    `${VAR:-}` has an empty default (an optional secret simply disappears); an empty VAR
    counts as unset when a default is given, as in the shell. `$${` is a literal `${`.
    """
    env = os.environ if env is None else env
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            missing.append(name)
            return ""
        return value

    return "${".join(_ENV_REF.sub(sub, part) for part in text.split("$${")), missing


# ============================================================================ typed reading

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", LList: "list", LDict: "mapping",
               list: "list", dict: "mapping", type(None): "null"}


def _describe(value: Any) -> str:
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, (list, dict)) or value is None:
        return name
    return f"{name} {value!r}"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.I)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.I)
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Reader:
    """Reads one file's values, collecting issues (file, line, message) instead of raising."""

    def __init__(self, file: str, issues: list[Issue], env: Mapping[str, str]) -> None:
        self.file = file
        self.issues = issues
        self.env = env

    def error(self, line: int, message: str) -> None:
        self.issues.append(Issue(self.file, line, message))

    _FAIL = object()

    def value(self, raw: Any, kind: str, key: str, line: int) -> Any:
        """Convert one YAML value to `kind`; on error record an issue and return _FAIL.

        kinds: str, int, float, bool, size (bytes: 1048576 or "1m"), duration (seconds: 5,
        "300ms", "5m", "2h"), map, list, any. A trailing "?" allows null.
        """
        nullable = kind.endswith("?")
        kind = kind.rstrip("?")
        if isinstance(raw, str) and "${" in raw:
            expanded, missing = expand_env(raw, self.env)
            for name in missing:
                self.error(line, f"environment variable {name} is not set")
            if missing:
                return self._FAIL
            if kind not in ("str", "any"):
                try:
                    raw = yaml.safe_load(expanded) if expanded.strip() else None
                except yaml.YAMLError:
                    raw = expanded
            else:
                raw = expanded
        if raw is None:
            if nullable or kind == "any":
                return None
            self.error(line, f"'{key}' must be {_EXPECTED[kind]}, got null")
            return self._FAIL
        ok: Any = self._FAIL
        if kind == "any":
            ok = raw
        elif kind == "str" and isinstance(raw, str):
            ok = raw
        elif kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
            ok = raw
        elif kind == "float" and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            ok = float(raw)
        elif kind == "bool" and isinstance(raw, bool):
            ok = raw
        elif kind == "map" and isinstance(raw, dict):
            ok = raw
        elif kind == "list" and isinstance(raw, list):
            ok = raw
        elif kind == "size":
            ok = _parse_size(raw)
        elif kind == "duration":
            ok = _parse_duration(raw)
        if ok is self._FAIL or ok is None:
            self.error(line, f"'{key}' must be {_EXPECTED[kind]}, got {_describe(raw)}")
            return self._FAIL
        return ok


_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "map": "a mapping",
    "list": "a list",
    "size": "a size in bytes (e.g. 1048576 or \"1m\")",
    "duration": "a duration in seconds (e.g. 5, \"300ms\", \"5m\", \"2h\")",
    "any": "a value",
}


def _parse_size(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, str):
        m = _SIZE.match(raw)
        if m:
            return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()])
    return None


def _parse_duration(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw) if raw >= 0 else None
    if isinstance(raw, str):
        m = _DURATION.match(raw)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return float(m.group(1)) * _DURATION_UNITS[unit]
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f", did you mean '{close[0]}'?" if close else ""


class _Section:
    """One mapping being read: typed getters, then a report of keys nobody asked for."""

    def __init__(self, reader: _Reader, data: Any, where: str, line: int = 1) -> None:
        self.r = reader
        self.where = where
        self.known: list[str] = []
        if data is None:
            data = LDict()
            data.line = line
        self.d: LDict = data
        self.line = getattr(data, "line", line)

    def line_of(self, key: str) -> int:
        return self.d.line_of(key)

    def has(self, key: str) -> bool:
        return key in self.d

    def get(self, key: str, kind: str, default: Any = None, *, required: bool = False) -> Any:
        self.known.append(key)
        if key not in self.d:
            if required:
                self.r.error(self.line, f"missing required key '{key}' in {self.where}")
            return default
        got = self.r.value(self.d[key], kind, key, self.d.line_of(key))
        return default if got is _Reader._FAIL else got

    def sub(self, key: str, where: str | None = None) -> "_Section":
        """A nested mapping (absent or null: empty, so its defaults apply)."""
        self.known.append(key)
        raw = self.d.get(key)
        line = self.d.line_of(key)
        if raw is not None and not isinstance(raw, dict):
            self.r.error(line, f"'{key}' must be a mapping, got {_describe(raw)}")
            raw = None
        return _Section(self.r, raw, where or key, line)

    def done(self) -> None:
        for key in self.d:
            if key not in self.known:
                self.r.error(self.d.line_of(key), f"unknown key '{key}' in {self.where}"
                             + _did_you_mean(str(key), self.known))


# ============================================================================ Settings


@dataclass(frozen=True)
class Settings:
    """The gateway's own settings (gateway.yaml), flat. YAML sections -> fields:

    listen.host/port -> listen_host/listen_port; upstream; rules_dir, rules_reload_s;
    data_dir; storage.backend -> storage_backend, storage.sqlite.path -> sqlite_path,
    storage.redis.url/prefix/spool_max -> redis_url/redis_prefix/spool_max;
    observer.enabled/email_env/password_env -> observer_*; log.format/level -> log_format/log_level;
    metrics.host/port -> metrics_host/metrics_port (port 0 = off); web.host/port/password ->
    web_*; proxy.stream_large_bodies/inspect_max_bytes/max_flows; delivery.per_ticket_order,
    delivery.retry_schedule -> retry_schedule, delivery.timeout_ms -> default_timeout_ms,
    delivery.worker -> delivery_worker.
    Relative paths are resolved against the folder of gateway.yaml, so `run` works from anywhere.
    """

    config_path: Path | None = None
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    upstream: str = "http://127.0.0.1:3000"
    rules_dir: Path = Path("rules")
    rules_reload_s: float = 1.0  # poll interval of the hot reload; 0 = off
    data_dir: Path = Path("data")
    storage_backend: str = "sqlite"
    sqlite_path: Path = Path("data/outbox.db")
    redis_url: str | None = None
    redis_prefix: str = "wgw"
    spool_max: int = 10_000
    observer_enabled: bool = True
    observer_email_env: str = "WHAZING_OBSERVER_EMAIL"
    observer_password_env: str = "WHAZING_OBSERVER_PASSWORD"
    log_format: str = "auto"
    log_level: str = "info"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090
    web_host: str = "127.0.0.1"
    web_port: int = 8081
    web_password: str | None = None
    stream_large_bodies: str = "1m"
    inspect_max_bytes: int = 1_048_576
    max_flows: int = 2000
    per_ticket_order: bool = True
    delivery_worker: str = "process"  # "process": the sender runs in a child process; "inline": in the proxy
    retry_schedule: tuple[float, ...] = model.DEFAULT_RETRY_SCHEDULE
    default_timeout_ms: int = 10_000


LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
BACKENDS = ("sqlite", "redis")
WORKERS = ("process", "inline")
FORMATS = ("whazing", "envelope")
KINDS = ("n8n", "generic")


def _choice(sec: _Section, key: str, choices: tuple[str, ...], default: str) -> str:
    value = sec.get(key, "str", default)
    if value not in choices:
        sec.r.error(sec.line_of(key), f"'{key}' must be one of {', '.join(choices)}, got {value!r}"
                    + _did_you_mean(str(value), list(choices)))
        return default
    return value


def _port(sec: _Section, key: str, default: int, *, allow_zero: bool) -> int:
    value = sec.get(key, "int", default)
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        sec.r.error(sec.line_of(key), f"'{key}' must be between {low} and 65535, got {value}")
        return default
    return value


def _url(sec: _Section, key: str, default: str | None, *, required: bool = False,
         schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    value = sec.get(key, "str" if required else "str?", default, required=required)
    if not value or (value == default and not sec.has(key)):
        return value
    m = re.match(r"^([a-z][a-z0-9+.-]*)://[^/\s]+", value, re.I)
    if not m or m.group(1).lower() not in schemes:
        sec.r.error(sec.line_of(key), f"'{key}' must be {_article(schemes[0])} {' or '.join(schemes)} URL, got {value!r}")
        return default
    return value


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiouh" else "a"


def _positive(sec: _Section, key: str, kind: str, default: Any, minimum: float = 1) -> Any:
    value = sec.get(key, kind, default)
    if value is not None and value < minimum:
        sec.r.error(sec.line_of(key), f"'{key}' must be at least {minimum}, got {value}")
        return default
    return value


def _schedule(sec: _Section, key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    items = sec.get(key, "list", None)
    if items is None:
        return default
    out: list[float] = []
    for i, raw in enumerate(items):
        v = sec.r.value(raw, "duration", key, items.line_of(i))
        if v is _Reader._FAIL:
            return default
        out.append(v)
    if not out:
        sec.r.error(sec.line_of(key), f"'{key}' must list at least one delay")
        return default
    return tuple(out)


def read_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[Settings, list[Issue]]:
    """Settings plus every issue found; where a value is wrong its default is used, so `check`
    can go on and validate the rules folder too."""
    path = Path(path)
    issues: list[Issue] = []
    reader = _Reader(str(path), issues, os.environ if env is None else env)
    data = _load_yaml(path, issues)
    base = path.parent
    if data is not None and not isinstance(data, dict):
        reader.error(getattr(data, "line", 1), f"the file must be a mapping of settings, got {_describe(data)}")
        data = None
    top = _Section(reader, data, "gateway.yaml")
    d = Settings()

    listen = top.sub("listen")
    listen_host = listen.get("host", "str", d.listen_host)
    listen_port = _port(listen, "port", d.listen_port, allow_zero=False)
    listen.done()

    upstream = _url(top, "upstream", d.upstream)
    rules_dir = base / top.get("rules_dir", "str", str(d.rules_dir))
    rules_reload_s = _positive(top, "rules_reload_s", "duration", d.rules_reload_s, minimum=0)
    data_dir = base / top.get("data_dir", "str", str(d.data_dir))

    storage = top.sub("storage")
    backend = _choice(storage, "backend", BACKENDS, d.storage_backend)
    sqlite = storage.sub("sqlite", "storage.sqlite")
    sqlite_raw = sqlite.get("path", "str?", None)
    sqlite_path = base / sqlite_raw if sqlite_raw else data_dir / "outbox.db"
    sqlite.done()
    redis = storage.sub("redis", "storage.redis")
    redis_url = _url(redis, "url", None, schemes=("redis", "rediss", "unix"))
    if redis_url == "":
        redis_url = None
    redis_prefix = redis.get("prefix", "str", d.redis_prefix)
    spool_max = _positive(redis, "spool_max", "int", d.spool_max, minimum=0)
    if backend == "redis" and not redis_url:
        reader.error(redis.line if redis.d else storage.line_of("backend"),
                     "storage.redis.url is required when storage.backend is redis")
    redis.done()
    storage.done()

    observer = top.sub("observer")
    observer_enabled = observer.get("enabled", "bool", d.observer_enabled)
    email_env = observer.get("email_env", "str", d.observer_email_env)
    password_env = observer.get("password_env", "str", d.observer_password_env)
    for key in ("email", "password"):
        if observer.has(key):
            observer.known.append(key)
            reader.error(observer.line_of(key),
                         f"credentials are never written in gateway.yaml: put them in the environment "
                         f"variable named by '{key}_env'")
    observer.done()

    log = top.sub("log")
    log_format = _choice(log, "format", LOG_FORMATS, d.log_format)
    log_level = _choice(log, "level", LOG_LEVELS, d.log_level)
    log.done()

    metrics = top.sub("metrics")
    metrics_host = metrics.get("host", "str", d.metrics_host)
    metrics_port = _port(metrics, "port", d.metrics_port, allow_zero=True)
    metrics.done()

    web = top.sub("web")
    web_host = web.get("host", "str", d.web_host)
    web_port = _port(web, "port", d.web_port, allow_zero=False)
    web_password = web.get("password", "str?", None) or None
    web.done()

    proxy = top.sub("proxy")
    stream_large_bodies = proxy.get("stream_large_bodies", "any", d.stream_large_bodies)
    if stream_large_bodies is not None and _parse_size(stream_large_bodies) is None:
        reader.error(proxy.line_of("stream_large_bodies"),
                     f"'stream_large_bodies' must be {_EXPECTED['size']}, got {_describe(stream_large_bodies)}")
        stream_large_bodies = d.stream_large_bodies
    inspect_max_bytes = proxy.get("inspect_max_bytes", "size", d.inspect_max_bytes)
    max_flows = _positive(proxy, "max_flows", "int", d.max_flows, minimum=0)
    proxy.done()

    delivery = top.sub("delivery")
    per_ticket_order = delivery.get("per_ticket_order", "bool", d.per_ticket_order)
    retry_schedule = _schedule(delivery, "retry_schedule", d.retry_schedule)
    default_timeout_ms = _positive(delivery, "timeout_ms", "int", d.default_timeout_ms)
    delivery_worker = _choice(delivery, "worker", WORKERS, d.delivery_worker)
    delivery.done()

    top.done()
    issues.sort(key=lambda i: i.line)
    settings = Settings(
        config_path=path,
        listen_host=listen_host,
        listen_port=listen_port,
        upstream=upstream or d.upstream,
        rules_dir=rules_dir,
        rules_reload_s=rules_reload_s,
        data_dir=data_dir,
        storage_backend=backend,
        sqlite_path=sqlite_path,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        spool_max=spool_max,
        observer_enabled=observer_enabled,
        observer_email_env=email_env,
        observer_password_env=password_env,
        log_format=log_format,
        log_level=log_level,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        web_host=web_host,
        web_port=web_port,
        web_password=web_password,
        stream_large_bodies=str(stream_large_bodies) if stream_large_bodies is not None else "",
        inspect_max_bytes=inspect_max_bytes,
        max_flows=max_flows,
        per_ticket_order=per_ticket_order,
        delivery_worker=delivery_worker,
        retry_schedule=retry_schedule,
        default_timeout_ms=default_timeout_ms,
    )
    return settings, issues


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Settings:
    """gateway.yaml -> Settings, or ConfigError with every issue."""
    settings, issues = read_settings(path, env)
    if issues:
        raise ConfigError(issues)
    return settings


# ============================================================================ rules

# Event names in YAML: the gateway's own, plus the names Whazing's UI and bodies use.
EVENT_ALIASES: dict[str, str] = {
    "received": model.MESSAGE_RECEIVED,
    "message_received": model.MESSAGE_RECEIVED,
    "sent": model.MESSAGE_SENT,
    "message_sent": model.MESSAGE_SENT,
    "new_ticket": model.TICKET_CREATED,
    "NewTicket": model.TICKET_CREATED,
    "NewTicketUserCreate": model.TICKET_CREATED,
    "transferred": model.TICKET_TRANSFERRED,
    "TransferTicket": model.TICKET_TRANSFERRED,
    "closed": model.TICKET_CLOSED,
    "ClosedTicket": model.TICKET_CLOSED,
    "reopened": model.TICKET_REOPENED,
    "ReopenTicket": model.TICKET_REOPENED,
    "accepted": model.TICKET_ACCEPTED,
    "AcceptTicket": model.TICKET_ACCEPTED,
}
_EVENT_NAMES = list(model.EVENT_TYPES) + list(EVENT_ALIASES) + ["all"]
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _str_list(sec: _Section, key: str, kind: str, *, required: bool = False) -> tuple[list[Any], list[int]] | None:
    """A scalar or a list of scalars of `kind` ("str", "int", "any"), with their lines."""
    sec.known.append(key)
    if key not in sec.d:
        if required:
            sec.r.error(sec.line, f"missing required key '{key}' in {sec.where}")
        return None
    raw = sec.d[key]
    line = sec.d.line_of(key)
    items = list(raw) if isinstance(raw, list) else [raw]
    lines = [raw.line_of(i) for i in range(len(items))] if isinstance(raw, LList) else [line] * len(items)
    out: list[Any] = []
    out_lines: list[int] = []
    for item, item_line in zip(items, lines):
        if isinstance(item, (dict, list)):
            sec.r.error(item_line, f"'{key}' must list plain values, got {_describe(item)}")
            continue
        v = sec.r.value(item, kind, key, item_line)
        if v is not _Reader._FAIL:
            out.append(v)
            out_lines.append(item_line)
    return out, out_lines


def _events(sec: _Section, allowed: tuple[str, ...], default: frozenset[str] | None, what: str) -> frozenset[str]:
    got = _str_list(sec, "events", "str", required=default is None)
    if got is None:
        return default or frozenset()
    out: set[str] = set()
    for name, line in zip(*got):
        if name == "all":
            out.update(allowed)
            continue
        canonical = name if name in model.EVENT_TYPES else EVENT_ALIASES.get(name)
        if canonical is None:
            sec.r.error(line, f"unknown event '{name}'" + _did_you_mean(name, _EVENT_NAMES))
        elif canonical not in allowed:
            sec.r.error(line, f"{what} take message events only, not '{name}'")
        else:
            out.add(canonical)
    return frozenset(out)


def _selectors(sec: _Section, key: str) -> tuple[Any, ...]:
    got = _str_list(sec, key, "any", required=True)
    if got is None:
        return ()
    out: list[Any] = []
    for value, line in zip(*got):
        if value is None or isinstance(value, (bool, float)) or (isinstance(value, str) and not value.strip()):
            sec.r.error(line, f"'{key}' must be an id (integer), a name (string) or \"*\", got {_describe(value)}")
            continue
        out.append(value)
    return tuple(out)


def _regex(sec: _Section, key: str) -> re.Pattern | None:
    pattern = sec.get(key, "str?", None)
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        sec.r.error(sec.line_of(key), f"invalid regular expression in '{key}': {exc}")
        return None


def _match(sec: _Section) -> Match:
    m = sec.sub("match", f"{sec.where} match")
    tenants = _str_list(m, "tenant", "any")
    contact_number = _regex(m, "contact_number")
    text = _regex(m, "text")
    tags = _str_list(m, "tags", "any")
    m.done()
    return Match(
        tenants=frozenset(str(t) for t in tenants[0]) if tenants is not None else None,
        contact_number=contact_number,
        text=text,
        tags=frozenset(str(t).casefold() for t in tags[0]) if tags is not None else None,
    )


@dataclass
class _Draft:
    """A rule read from YAML before its target names are checked against all files."""

    build: Callable[[], Any]
    kind: str
    target_refs: list[tuple[str, str, int]] = field(default_factory=list)  # (name, file, line)


def _target(sec: _Section, settings: Settings) -> model.Target | None:
    name = sec.get("name", "str", None, required=True)
    if name is not None and not _TARGET_NAME.match(name):
        sec.r.error(sec.line_of("name"), f"target name {name!r} may use only letters, digits, '_', '.', '-'")
        name = None
    url = _url(sec, "url", None, required=True)
    api_key = sec.get("api_key", "str?", None) or None
    secrets_got = _str_list(sec, "secrets", "str")
    secrets: list[str] = []
    for secret, line in zip(*(secrets_got or ([], []))):
        if not secret:
            continue  # "${VAR:-}" unset: no signing with it
        try:
            secret_key(secret)  # the sender's own check: fail here, not at the first delivery
        except ValueError:
            sec.r.error(line, "a secret must be base64, usually with the 'whsec_' prefix (whsec_<base64>)")
            continue
        secrets.append(secret)
    headers_raw = sec.get("headers", "map?", None)
    headers: dict[str, str] = {}
    if headers_raw:
        for hk, hv in headers_raw.items():
            hline = headers_raw.line_of(hk)
            v = sec.r.value(hv, "any", str(hk), hline)
            if v is _Reader._FAIL:
                continue
            if isinstance(v, (dict, list)) or v is None:
                sec.r.error(hline, f"header '{hk}' must be a string, got {_describe(v)}")
                continue
            headers[str(hk)] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    timeout_ms = _positive(sec, "timeout_ms", "int", settings.default_timeout_ms)
    concurrency = _positive(sec, "concurrency", "int", 4)
    rate = sec.get("rate_per_s", "float?", None)
    if rate is not None and rate <= 0:
        sec.r.error(sec.line_of("rate_per_s"), f"'rate_per_s' must be above 0, got {rate}")
        rate = None
    fmt = _choice(sec, "format", FORMATS, "whazing")
    kind = _choice(sec, "kind", KINDS, "n8n")
    schedule = _schedule(sec, "retry_schedule", settings.retry_schedule)
    sec.done()
    if name is None or url is None:
        return None
    return model.Target(name=name, url=url, api_key=api_key, secrets=tuple(secrets), headers=headers,
                        timeout_ms=timeout_ms, concurrency=concurrency, rate_per_s=rate, format=fmt,
                        retry_schedule=schedule, kind=kind)


def _rule(sec: _Section, kind: str, path: Path, index: int) -> _Draft:
    r = sec.r
    name = sec.get("name", "str", None) or f"{path.name}:{sec.line}"
    source = f"{path}:{sec.line}"
    selector_key = "channel" if kind == "channel" else "queue"
    selectors = _selectors(sec, selector_key)
    enabled = sec.get("enabled", "bool", True)
    refs = _str_list(sec, "targets", "str", required=True)
    target_refs = [(t, r.file, line) for t, line in zip(*refs)] if refs else []
    if kind == "channel":
        events = _events(sec, model.EVENT_TYPES, None, "channel rules")
    else:
        events = _events(sec, tuple(sorted(model.MESSAGE_EVENTS)), frozenset(model.MESSAGE_EVENTS),
                         "queue integrations")
    open_ = sec.get("open", "bool", True)
    pending = sec.get("pending", "bool", True)
    groups = sec.get("groups", "bool", False)
    start_on_transfer = sec.get("start_on_transfer", "bool", False) if kind == "queue" else False
    match = _match(sec)
    sec.done()
    targets = tuple(dict.fromkeys(t for t, _, _ in target_refs))

    def build() -> Any:
        if kind == "channel":
            return ChannelRule(name=name, source=source, channels=selectors, targets=targets, events=events,
                               enabled=enabled, open=open_, pending=pending, groups=groups, match=match)
        return QueueRule(name=name, source=source, queues=selectors, targets=targets, events=events,
                         enabled=enabled, open=open_, pending=pending, groups=groups,
                         start_on_transfer=start_on_transfer, match=match)

    return _Draft(build=build, kind=kind, target_refs=target_refs)


def _rule_files(rules_dir: Path) -> list[Path]:
    return sorted(p for p in rules_dir.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")
                  and not p.name.startswith("."))


def read_rules(rules_dir: str | os.PathLike, settings: Settings | None = None,
               env: Mapping[str, str] | None = None) -> tuple[RuleSet, list[Issue]]:
    """Every *.yaml / *.yml of the folder (in name order) -> RuleSet, plus every issue found."""
    rules_dir = Path(rules_dir)
    settings = settings or Settings()
    env = os.environ if env is None else env
    issues: list[Issue] = []
    if not rules_dir.is_dir():
        return RuleSet(), [Issue(str(rules_dir), 0, "rules folder not found")]
    files = _rule_files(rules_dir)
    targets: dict[str, model.Target] = {}
    target_where: dict[str, str] = {}
    drafts: list[_Draft] = []
    for path in files:
        reader = _Reader(str(path), issues, env)
        data = _load_yaml(path, issues)
        if data is None:
            continue
        if not isinstance(data, dict):
            reader.error(getattr(data, "line", 1),
                         f"a rules file must be a mapping with 'targets', 'channels' or 'queues', got {_describe(data)}")
            continue
        top = _Section(reader, data, "rules file")
        for section_key, kind in (("targets", "target"), ("channels", "channel"), ("queues", "queue")):
            items = top.get(section_key, "list?", None)
            for i, item in enumerate(items or []):
                line = items.line_of(i)
                if not isinstance(item, dict):
                    reader.error(line, f"each entry of '{section_key}' must be a mapping, got {_describe(item)}")
                    continue
                what = {"target": "target", "channel": "channel rule", "queue": "queue rule"}[kind]
                sec = _Section(reader, item, what)
                if kind == "target":
                    target = _target(sec, settings)
                    tname = item.get("name")
                    if isinstance(tname, str) and tname in target_where:
                        reader.error(sec.line_of("name"), f"duplicate target name '{tname}' "
                                                          f"(first defined at {target_where[tname]})")
                        continue
                    if isinstance(tname, str):
                        target_where[tname] = f"{path}:{sec.line_of('name')}"
                    if target is not None:
                        targets[target.name] = target
                else:
                    drafts.append(_rule(sec, kind, path, i))
        top.done()
    channel_rules: list[ChannelRule] = []
    queue_rules: list[QueueRule] = []
    for draft in drafts:
        for name, file, line in draft.target_refs:
            if name not in target_where:  # defined but invalid: already reported there
                issues.append(Issue(file, line, f"unknown target '{name}'" + _did_you_mean(name, list(targets))))
        rule = draft.build()
        (channel_rules if draft.kind == "channel" else queue_rules).append(rule)
    order = {str(p): i for i, p in enumerate(files)}
    issues.sort(key=lambda i: (order.get(i.file, -1), i.line))
    return RuleSet(targets=dict(targets), channel_rules=tuple(channel_rules), queue_rules=tuple(queue_rules),
                   files=tuple(files)), issues


def load_rules(rules_dir: str | os.PathLike, settings: Settings | None = None,
               env: Mapping[str, str] | None = None) -> RuleSet:
    """rules/*.yaml -> RuleSet, or ConfigError with every issue. `settings` gives target defaults."""
    rules, issues = read_rules(rules_dir, settings, env)
    if issues:
        raise ConfigError(issues)
    return rules


# ============================================================================ check


def check(config: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[RuleSet | None, list[Issue]]:
    """Validate gateway.yaml and its rules folder; every issue, in file order."""
    settings, issues = read_settings(config, env)
    rules, rule_issues = read_rules(settings.rules_dir, settings, env)
    return rules, issues + rule_issues


def check_command(args: Any) -> int:
    """`whazing-gateway check`: every error as `file:line: message`, exit 1; else a summary, exit 0."""
    rules, issues = check(args.config)
    out = sys.stdout
    for issue in issues:
        out.write(f"{issue}\n")
    if issues or rules is None:
        out.write(f"{len(issues)} error{'s' if len(issues) != 1 else ''}\n")
        out.flush()
        return 1
    out.write(f"OK: {rules.summary()}\n")
    out.flush()
    return 0

