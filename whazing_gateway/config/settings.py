"""gateway.yaml -> `Settings`: each setting declared once, as one field.

The field's alias is its place in the YAML (`listen.port`), its type says how the value is
read and checked (see values.py), its description is the hover text editors show. The loader,
the JSON Schema (`whazing-gateway schema gateway`) and the flat attributes the other stages
read (`settings.listen_port`) all come from that one line. Relative paths are resolved against
the folder of gateway.yaml, so `run` works from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from whazing_gateway import model
from whazing_gateway.config.env import expand_tree
from whazing_gateway.config.errors import ConfigError, Issue, describe, did_you_mean
from whazing_gateway.config.validation import Shape, belongs_under, issues_from
from whazing_gateway.config.values import (
    Bool,
    Duration,
    HttpUrl,
    NonNegativeInt,
    OptionalRedisUrl,
    OptionalStr,
    PortOrOff,
    Port,
    PositiveInt,
    Schedule,
    Size,
    SizeText,
    Str,
    fail,
)
from whazing_gateway.config.yaml_lines import LDict, Unreadable, load_yaml

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
Backend = Literal["sqlite", "redis"]
Worker = Literal["process", "inline"]
ChildrenCpu = Literal["idle", "low"]


def _path(value: Any) -> Any:
    if isinstance(value, str):
        return Path(value)
    if not isinstance(value, Path):
        raise fail(f"{{key}} must be a string, got {describe(value)}")
    return value


PathValue = Annotated[Path, BeforeValidator(_path), pydantic.WithJsonSchema({"type": "string"})]


def setting(path: str, default: Any, doc: str) -> Any:
    """One setting: where it sits in gateway.yaml, its default, and what it is for."""
    return Field(default=default, validation_alias=path, description=doc)


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True, validate_by_alias=True, extra="forbid"))
class Settings:
    """The gateway's own settings (gateway.yaml), flat: `listen.port` is `listen_port`."""

    config_path: Path | None = Field(default=None, exclude=True,
                                          description="the file these settings were read from")
    listen_host: Str = setting("listen.host", "0.0.0.0", "Address browsers and n8n reach the gateway on.")
    listen_port: Port = setting("listen.port", 8080, "TCP port of the proxy.")
    upstream: HttpUrl = setting("upstream", "http://127.0.0.1:3000",
                                "The Whazing backend the gateway stands in front of (reverse proxy upstream).")
    rules_dir: PathValue = setting("rules_dir", Path("rules"),
                                   "Folder of *.yaml rules files, read in name order; relative to this file's folder.")
    rules_reload_s: Duration = setting("rules_reload_s", 1.0,
                                       "Check the rules folder for changes every N seconds (0 = no hot reload).")
    data_dir: PathValue = setting("data_dir", Path("data"),
                                  "Where the sqlite outbox and other local state go; relative to this file's folder.")
    storage_backend: Backend = setting("storage.backend", "sqlite",
                                       "sqlite (one gateway, no other service) | redis (several replicas).")
    sqlite_path: PathValue | None = setting("storage.sqlite.path", None, "The sqlite outbox; default <data_dir>/outbox.db.")
    redis_url: OptionalRedisUrl = setting("storage.redis.url", None,
                                          "e.g. redis://127.0.0.1:6379/0 or ${REDIS_URL}; required for backend redis.")
    redis_prefix: Str = setting("storage.redis.prefix", "wgw", "Key prefix, so several gateways can share one Redis.")
    spool_max: NonNegativeInt = setting("storage.redis.spool_max", 10_000,
                                        "Deliveries kept on local disk while Redis is unreachable.")
    reorder_window_s: Duration = setting("storage.redis.reorder_window", 0.25,
                                         "Replicas: a ticket's new delivery waits this long before it can go, so an "
                                         "event of that ticket that happened more than a second earlier, written by "
                                         "another replica meanwhile, goes first. Raise it where replicas run on busy "
                                         "machines (a pipeline starved longer than this can deliver a ticket's events "
                                         "out of order).")
    observer_enabled: Bool = setting("observer.enabled", True,
                                     "The gateway's own socket.io connection, so events are seen with no browser open.")
    observer_email_env: Str = setting("observer.email_env", "WHAZING_OBSERVER_EMAIL",
                                      "NAME of the environment variable holding the observer's login e-mail.")
    observer_password_env: Str = setting("observer.password_env", "WHAZING_OBSERVER_PASSWORD",
                                         "NAME of the environment variable holding the observer's password.")
    log_format: LogFormat = setting("log.format", "auto", "auto (console on a terminal, else json) | json | console.")
    log_level: LogLevel = setting("log.level", "info", "debug | info | warning | error | critical.")
    metrics_host: Str = setting("metrics.host", "127.0.0.1", "Address of /metrics, /healthz and /readyz.")
    metrics_port: PortOrOff = setting("metrics.port", 9090, "Port of /metrics, /healthz and /readyz; 0 = off.")
    web_host: Str = setting("web.host", "127.0.0.1", "Address of mitmweb's flow viewer (run --web).")
    web_port: Port = setting("web.port", 8081, "Port of mitmweb's flow viewer (run --web).")
    web_password: OptionalStr = setting("web.password", None,
                                           "Flow viewer password, plaintext or argon2 hash; empty = mitmweb's token.")
    stream_large_bodies: SizeText = setting("proxy.stream_large_bodies", "1m",
                                            "Bodies above this size are streamed through, not buffered.")
    inspect_max_bytes: Size = setting("proxy.inspect_max_bytes", 1_048_576,
                                      "JSON bodies above this size are passed through without inspection.")
    websocket_max_message: Size = setting("proxy.websocket_max_message", 16 << 20,
                                          "A websocket message may grow (inflated, in the fragments mitmproxy buffers "
                                          "until the last) to at most this in the proxy; past it that websocket is "
                                          "closed with 1009 (too big).")
    max_flows: NonNegativeInt = setting("proxy.max_flows", 2000, "Flows kept in memory for the flow viewer.")
    pipeline: Worker = setting("proxy.pipeline", "process",
                               "process: decode, inference, routing and outbox writes run in a child process fed "
                               "through the journal, so no input can stall the proxy | inline: in the proxy's "
                               "event loop (tests, tiny setups).")
    children_cpu: ChildrenCpu = setting("proxy.children_cpu", "idle",
                                        "CPU class of the pipeline process and the delivery worker. idle: only CPU "
                                        "that nothing else on the machine wants, so the proxy's traffic always comes "
                                        "first, but other busy programs hold the webhooks back until they calm down "
                                        "(nothing is lost: records wait in the journal) | low: nice 10, a small share "
                                        "beside busy programs, taken from the proxy too when it is saturated.")
    defer_max_s: Duration = setting("proxy.defer_max", 10.0,
                                    "While the proxy's event loop keeps a core busy, the pipeline process holds "
                                    "its work (the traffic first, the same work once the load eases), but never a "
                                    "record longer than this, and not at all once the saturation has lasted this "
                                    "long (not a burst: it then works as records come); 0 = never hold. Replicas "
                                    "on a shared Redis state never hold.")
    journal_max_bytes: Size = setting("proxy.journal_max_bytes", 1 << 30,
                                      "Raw records waiting on disk for the pipeline process; past it they are dropped, "
                                      "counted and logged.")
    per_ticket_order: Bool = setting("delivery.per_ticket_order", True,
                                     "Deliveries of one ticket go out in order, one at a time per target.")
    retry_schedule: Schedule = setting("delivery.retry_schedule", model.DEFAULT_RETRY_SCHEDULE,
                                       "Delays in seconds (or \"5m\", \"2h\") before each attempt; default of targets.")
    default_timeout_ms: PositiveInt = setting("delivery.timeout_ms", 10_000, "Default HTTP timeout of targets.")
    media_max_bytes: Size = setting("media.max_bytes", 5 * 1024 * 1024,
                                    "Media in base64: larger media are left out of the body, with a note.")
    media_timeout_s: Duration = setting("media.timeout", 10.0, "Media in base64: how long one media download may take.")
    delivery_worker: Worker = setting("delivery.worker", "process",
                                      "process: webhooks are sent by a child process, off the proxy's CPU | inline.")

    def __post_init__(self) -> None:
        if self.sqlite_path is None:
            object.__setattr__(self, "sqlite_path", self.data_dir / "outbox.db")


# ---------------------------------------------------------------------------- the YAML shape, from the fields

FIELDS: dict[str, str] = {str(f.validation_alias): name for name, f in getattr(Settings, "__pydantic_fields__").items()
                          if f.validation_alias}
SECTION_DOCS = {
    "listen": "Where the proxy listens.",
    "storage": "Where deliveries wait until they are sent (the outbox).",
    "storage.sqlite": "The sqlite outbox (backend sqlite).",
    "storage.redis": "The Redis outbox and shared state (backend redis).",
    "observer": "The gateway's own socket.io connection; its login comes from the environment variables NAMED here.",
    "log": "The gateway's log.",
    "metrics": "/metrics, /healthz, /readyz.",
    "web": "mitmweb's flow viewer (whazing-gateway run --web).",
    "proxy": "How the proxy treats bodies and flows.",
    "delivery": "Defaults of every target's delivery.",
    "media": "Media in base64 (rules with media_base64: true): how much and how long to download.",
}
# Keys that must never be written here, with what to do instead.
REFUSED = {
    f"observer.{k}": (f"credentials are never written in gateway.yaml: put them in the environment variable "
                      f"named by '{k}_env'") for k in ("email", "password")
}


def _children(prefix: str) -> list[str]:
    """The keys a section takes (top level: prefix "")."""
    out: list[str] = []
    for path in FIELDS:
        if path.startswith(prefix):
            head = path[len(prefix):].split(".")[0]
            if head not in out:
                out.append(head)
    return out


def _is_section(path: str) -> bool:
    return any(p.startswith(path + ".") for p in FIELDS)


def _flatten(data: Any, file: str, issues: list[Issue]) -> LDict:
    """The nested YAML -> {"listen.port": value}, with each key's line; unknown keys are issues."""
    flat = LDict()
    flat.line = getattr(data, "line", 1)

    def walk(mapping: LDict, prefix: str) -> None:
        where = prefix.rstrip(".") or "gateway.yaml"
        known = _children(prefix)
        sections: dict[str, list[str] | None] = {k: _children(f"{prefix}{k}.") for k in known
                                                 if _is_section(prefix + k)}
        for key, value in mapping.items():
            path, line = f"{prefix}{key}", mapping.line_of(key)
            if path in FIELDS:
                flat[path] = value
                flat.key_lines[path] = line
            elif _is_section(path):
                if isinstance(value, LDict):
                    walk(value, path + ".")
                elif value is not None:
                    issues.append(Issue(file, line, f"'{key}' must be a mapping, got {describe(value)}"))
            elif path in REFUSED:
                issues.append(Issue(file, line, REFUSED[path]))
            else:
                hint = belongs_under(str(key), mapping, sections) or did_you_mean(str(key), known)
                issues.append(Issue(file, line, f"unknown key '{key}' in {where}{hint}"))

    if isinstance(data, LDict):
        walk(data, "")
    return flat


_SHAPE = Shape(where=lambda loc: "gateway.yaml", keys=lambda loc: [], sections=lambda loc: {},
               key_name=lambda part: str(part).rsplit(".", 1)[-1])


def read_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[Settings, list[Issue]]:
    """Settings plus every issue found. With issues, the defaults stand in for what could not be
    read (the rules folder is still found), so `check` goes on and validates the rules too."""
    path = Path(path)
    file = str(path)
    base = path.parent
    issues: list[Issue] = []
    try:
        data = load_yaml(path, issues)
    except Unreadable:
        data = None
    if data is not None and not isinstance(data, LDict):
        issues.append(Issue(file, getattr(data, "line", 1),
                            f"the file must be a mapping of settings, got {describe(data)}"))
        data = None
    data = expand_tree(data, file, issues, os.environ if env is None else env)
    flat = _flatten(data, file, issues)
    if flat.get("storage.backend") == "redis" and not flat.get("storage.redis.url"):
        line = flat.line_of("storage.redis.url") if "storage.redis.url" in flat else flat.line_of("storage.backend")
        issues.append(Issue(file, line, "storage.redis.url is required when storage.backend is redis"))
    values: dict[str, Any] = dict(flat)
    for alias in ("rules_dir", "data_dir", "storage.sqlite.path"):
        if isinstance(values.get(alias), str):
            values[alias] = base / values[alias]
    values.setdefault("rules_dir", base / "rules")
    values.setdefault("data_dir", base / "data")
    try:
        settings = Settings(config_path=path, **values)
    except pydantic.ValidationError as exc:
        issues.extend(issues_from(exc, flat, file, _SHAPE))
        rules_dir, data_dir = values["rules_dir"], values["data_dir"]
        settings = Settings(config_path=path, rules_dir=rules_dir if isinstance(rules_dir, Path) else base / "rules",
                            data_dir=data_dir if isinstance(data_dir, Path) else base / "data")
    issues.sort(key=lambda i: i.line)
    return settings, issues


def load_settings(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Settings:
    """gateway.yaml -> Settings, or ConfigError with every issue."""
    settings, issues = read_settings(path, env)
    if issues:
        raise ConfigError(issues)
    return settings
