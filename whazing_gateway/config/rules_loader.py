"""rules/*.yaml -> `RuleSet`: the rules files' fields declared once, as pydantic models.

The models below are the YAML as users write it (`channel:`, one target or a list, event
aliases); `_build_*` turn a valid file into the routing objects of route/rules.py. Each file
is validated in one pass; target names are checked across files afterwards. A file that
cannot be parsed does not make the names it defines "unknown" in the others: one mistake,
one message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, WithJsonSchema

from whazing_gateway import model
from whazing_gateway.config.env import expand_tree
from whazing_gateway.config.errors import ConfigError, Issue, describe, did_you_mean
from whazing_gateway.config.settings import Settings
from whazing_gateway.config.validation import Loc, Shape, free_mapping, issues_from, keys_of, model_at
from whazing_gateway.config.values import (
    Bool,
    HttpUrl,
    OneOrMany,
    OptionalStr,
    PositiveFloat,
    PositiveInt,
    Schedule,
    Str,
    fail,
    from_env,
)
from whazing_gateway.config.yaml_lines import LDict, LList, Unreadable, load_yaml
from whazing_gateway.ops.logs import register_env_parts
from whazing_gateway.route.patterns import compile_pattern
from whazing_gateway.deliver.signing import secret_key
from whazing_gateway.route.rules import ChannelRule, Match, QueueRule, RuleSet, rules_file_too_big

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
ALL = "all"
EVENT_NAMES = [*model.EVENT_TYPES, *EVENT_ALIASES, ALL]
QUEUE_EVENT_NAMES = [n for n in EVENT_NAMES if n == ALL or EVENT_ALIASES.get(n, n) in model.MESSAGE_EVENTS]
TARGET_NAME = r"^[A-Za-z0-9_.-]+$"


def _event(value: str) -> str:
    if value != ALL and value not in model.EVENT_TYPES and value not in EVENT_ALIASES:
        raise fail(f"unknown event '{value}'" + did_you_mean(value, EVENT_NAMES))
    return value


def _queue_event(value: str) -> str:
    if _event(value) not in QUEUE_EVENT_NAMES:
        raise fail(f"queue integrations take message events only, not '{value}'")
    return value


EventName = Annotated[Str, AfterValidator(_event), WithJsonSchema({"enum": EVENT_NAMES})]
QueueEventName = Annotated[Str, AfterValidator(_queue_event), WithJsonSchema({"enum": QUEUE_EVENT_NAMES})]


def _selector(value: Any) -> Any:
    if value is None or isinstance(value, (bool, float, list, dict)) or (isinstance(value, str) and not value.strip()):
        raise fail(f"{{key}} must be an id (integer), a name (string) or \"*\", got {describe(value)}")
    return str(value) if isinstance(value, str) else value


Selector = Annotated[Any, BeforeValidator(from_env), AfterValidator(_selector),
                     WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]})]
Plain = Annotated[Any, BeforeValidator(from_env), AfterValidator(lambda v: v if isinstance(v, (int, str)) else _selector(v)),
                  WithJsonSchema({"type": ["integer", "string"]})]


def _regex(value: str) -> str:
    try:
        compile_pattern(value)  # RE2: linear time; what it cannot run is refused here, with why
    except re.error as exc:
        raise fail(f"invalid regular expression in {{key}}: {exc}") from None
    return value


Regex = Annotated[Str, AfterValidator(_regex)]


def _target_name(value: str) -> str:
    if not re.match(TARGET_NAME, value):
        raise fail(f"target name {value!r} may use only letters, digits, '_', '.', '-'")
    return value


def _secret(value: str) -> str:
    if value:  # "${VAR:-}" unset: no signing with it
        try:
            secret_key(value)  # the sender's own check: fail here, not at the first delivery
        except ValueError:
            raise fail("a secret must be base64, usually with the 'whsec_' prefix (whsec_<base64>)") from None
    return value


def _header(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    raise fail(f"header {{key}} must be a string, got {describe(value)}")


TargetName = Annotated[Str, AfterValidator(_target_name), WithJsonSchema({"type": "string", "pattern": TARGET_NAME})]
Secret = Annotated[Str, AfterValidator(_secret)]
HeaderValue = Annotated[Any, AfterValidator(_header), WithJsonSchema({"type": ["string", "number", "boolean"]})]


class _Spec(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchSpec(_Spec):
    """Optional extra conditions; all must hold."""

    tenant: OneOrMany[Plain] | None = Field(None, description="Tenant id (or a list): only these tenants.")
    contact_number: Regex | None = Field(None, description="Regular expression searched in the contact's number.")
    text: Regex | None = Field(None, description="Regular expression searched in the message text.")
    tags: OneOrMany[Plain] | None = Field(None, description="Any of these tags (names or ids).")


class TargetSpec(_Spec):
    """Where webhooks go, and how."""

    name: TargetName = Field(description="The name rules use; letters, digits, _ . -")
    url: HttpUrl = Field(description="The webhook URL (http or https).")
    api_key: OptionalStr = Field(
        None, description="Sent as X-N8N-API-KEY, like Whazing's token; use ${VAR}.")
    secrets: OneOrMany[Secret] = Field(
        default_factory=list, description="Standard Webhooks signing secrets (whsec_...); several during rotation.")
    headers: dict[str, HeaderValue] | None = Field(None, description="Extra headers, e.g. {X-Team: support}.")
    timeout_ms: PositiveInt | None = Field(None, description="HTTP timeout; default: delivery.timeout_ms of gateway.yaml.")
    concurrency: PositiveInt = Field(4, description="Requests in flight to this target at most.")
    rate_per_s: PositiveFloat | None = Field(None, description="Optional cap of requests per second.")
    format: model.Format = Field("whazing", description="whazing: Whazing's native bodies | "
                                                        "envelope: {type, id, timestamp, data}.")
    kind: model.TargetKind = Field("n8n", description="n8n: a 404 (workflow inactive) is retried | generic: 404 is final.")
    retry_schedule: Schedule | None = Field(None, description="Default: delivery.retry_schedule of gateway.yaml.")


class _RuleSpec(_Spec):
    name: Str | None = Field(None, description="A name for logs (default: file:line).")
    enabled: Bool = Field(True, description="The on/off toggle.")
    targets: OneOrMany[Str] = Field(description="One target name or a list.")
    open: Bool = Field(True, description="Send MESSAGE events of open tickets.")
    pending: Bool = Field(True, description="Send MESSAGE events of pending tickets.")
    groups: Bool = Field(False, description="Send anything for group tickets.")
    match: MatchSpec | None = Field(None, description="Optional extra conditions, all must hold.")
    media_base64: Bool = Field(False, description="\"Media in base64\": message bodies carry the media file "
                                                  "in mediaBase64, fetched from Whazing (up to media.max_bytes).")


class ChannelRuleSpec(_RuleSpec):
    """Whazing's per-channel webhook: the listed events of the selected channels go to the targets."""

    channel: OneOrMany[Selector] = Field(description="Channel id, name, a list of them, or \"*\".")
    events: OneOrMany[EventName] = Field(description="Required; the ticked boxes (\"all\" = every one).")


class QueueRuleSpec(_RuleSpec):
    """Whazing's queue integration: the ticket's messages, while it sits in the queue, go to the targets."""

    queue: OneOrMany[Selector] = Field(description="Queue id, name, a list of them, or \"*\".")
    events: OneOrMany[QueueEventName] = Field(
        default_factory=lambda: sorted(model.MESSAGE_EVENTS), description="Message toggles only (default both).")
    start_on_transfer: Bool = Field(False, description="Fire at once, with the last received message, "
                                                       "when a ticket is transferred into the queue.")


class RulesFile(_Spec):
    """One rules file: any of targets, channels, queues (target names are global to the folder)."""

    targets: list[TargetSpec] | None = None
    channels: list[ChannelRuleSpec] | None = None
    queues: list[QueueRuleSpec] | None = None


# ---------------------------------------------------------------------------- specs -> routing objects


def _events(names: list[str], allowed: frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        out.update(allowed if name == ALL else {EVENT_ALIASES.get(name, name)})
    return frozenset(out)


def _match(spec: MatchSpec | None) -> Match:
    if spec is None:
        return Match()
    return Match(
        tenants=frozenset(str(t) for t in spec.tenant) if spec.tenant is not None else None,
        contact_number=compile_pattern(spec.contact_number) if spec.contact_number is not None else None,
        text=compile_pattern(spec.text) if spec.text is not None else None,
        tags=frozenset(str(t).casefold() for t in spec.tags) if spec.tags is not None else None,
    )


def _build_target(spec: TargetSpec, settings: Settings) -> model.Target:
    return model.Target(
        name=spec.name, url=spec.url, api_key=spec.api_key, secrets=tuple(s for s in spec.secrets if s),
        headers=dict(spec.headers or {}),
        timeout_ms=spec.timeout_ms if spec.timeout_ms is not None else settings.default_timeout_ms,
        concurrency=spec.concurrency, rate_per_s=spec.rate_per_s, format=spec.format, kind=spec.kind,
        retry_schedule=spec.retry_schedule if spec.retry_schedule is not None else settings.retry_schedule)


def _build_channel_rule(spec: ChannelRuleSpec, source: str, default_name: str) -> ChannelRule:
    return ChannelRule(name=spec.name or default_name, source=source, channels=tuple(spec.channel),
                       targets=tuple(dict.fromkeys(spec.targets)),
                       events=_events(spec.events, frozenset(model.EVENT_TYPES)), enabled=spec.enabled,
                       open=spec.open, pending=spec.pending, groups=spec.groups, match=_match(spec.match),
                       media_base64=spec.media_base64)


def _build_queue_rule(spec: QueueRuleSpec, source: str, default_name: str) -> QueueRule:
    return QueueRule(name=spec.name or default_name, source=source, queues=tuple(spec.queue),
                     targets=tuple(dict.fromkeys(spec.targets)), events=_events(spec.events, model.MESSAGE_EVENTS),
                     enabled=spec.enabled, open=spec.open, pending=spec.pending, groups=spec.groups,
                     start_on_transfer=spec.start_on_transfer, match=_match(spec.match),
                     media_base64=spec.media_base64)


# ---------------------------------------------------------------------------- reading a folder

_WHERE = {"targets": "target", "channels": "channel rule", "queues": "queue rule"}


def _where(loc: Loc) -> str:
    if not loc:
        return "rules file"
    name = _WHERE.get(str(loc[0]), str(loc[0]))
    rest = [str(p) for p in loc[2:] if not isinstance(p, int)]
    return " ".join([name, *rest])


def _sections(loc: Loc) -> dict[str, list[str] | None]:
    here = model_at(RulesFile, loc)
    out: dict[str, list[str] | None] = {}
    for name, field in here.model_fields.items() if here else []:
        sub = model_at(RulesFile, (*loc, name))
        if sub is not None:
            out[name] = keys_of(sub)
        elif free_mapping(field.annotation):
            out[name] = None
    return out


_SHAPE = Shape(where=_where, keys=lambda loc: keys_of(m) if (m := model_at(RulesFile, loc)) else [],
               sections=_sections)
_NAME_IN_TEXT = re.compile(r"^\s*(?:-\s+)?name\s*:\s*['\"]?([A-Za-z0-9_.-]+)", re.M)


def _items(data: LDict, key: str) -> list[LDict]:
    """The mappings listed under `key` (whatever else is there is reported by validation)."""
    items = data.get(key)
    return [i for i in items if isinstance(i, LDict)] if isinstance(items, LList) else []


def _declare_targets(items: list[LDict], path: Path, defined: dict[str, str], issues: list[Issue]) -> None:
    """Record each target name with its place; a name seen before is a duplicate (valid or not)."""
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in defined:
            issues.append(Issue(str(path), item.line_of("name"),
                                f"duplicate target name '{name}' (first defined at {defined[name]})"))
        else:
            defined[name] = f"{path}:{item.line_of('name')}"


def _target_refs(item: LDict) -> list[tuple[str, int]]:
    """The target names a rule names, with their lines (from the YAML, valid or not)."""
    raw = item.get("targets")
    if isinstance(raw, LList):
        return [(v, raw.line_of(i)) for i, v in enumerate(raw) if isinstance(v, str)]
    return [(raw, item.line_of("targets"))] if isinstance(raw, str) else []


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
        hint = ""
        if settings.config_path is not None:
            hint = (f" (rules_dir is relative to the folder of {settings.config_path.name}: "
                    f"{settings.config_path.absolute().parent})")
        return RuleSet(), [Issue(str(rules_dir.absolute()), 0, f"rules folder not found{hint}")]
    files = _rule_files(rules_dir)
    targets: dict[str, model.Target] = {}
    defined: dict[str, str] = {}  # target name -> "file:line", valid or not
    maybe_defined: set[str] = set()  # names that may be defined in a file that could not be parsed
    rules: list[ChannelRule | QueueRule] = []
    refs: list[tuple[str, str, int]] = []  # (target name, file, line) named by a rule
    for path in files:
        file = str(path)
        too_big = rules_file_too_big(path)
        if too_big is not None:  # refused before parsing: a huge file must not stall the loader
            issues.append(Issue(file, 0, too_big))
            continue
        try:
            data = load_yaml(path, issues)
        except Unreadable:
            try:
                maybe_defined.update(_NAME_IN_TEXT.findall(path.read_text(encoding="utf-8", errors="replace")))
            except OSError:
                pass
            continue
        if data is None:
            continue
        if not isinstance(data, LDict):
            issues.append(Issue(file, getattr(data, "line", 1), "a rules file must be a mapping with 'targets', "
                                                                "'channels' or 'queues', got " + describe(data)))
            continue
        for item in _items(data, "targets"):  # ${VAR} parts of a URL are masked in logs and at rest
            register_env_parts(item.get("url"), env)
        data = expand_tree(data, file, issues, env)
        raw_targets = _items(data, "targets")
        _declare_targets(raw_targets, path, defined, issues)
        refs.extend((name, file, line) for key in ("channels", "queues") for item in _items(data, key)
                    for name, line in _target_refs(item))
        try:
            spec = RulesFile.model_validate(data)
        except pydantic.ValidationError as exc:
            issues.extend(issues_from(exc, data, file, _SHAPE))
            continue
        for t, item in zip(spec.targets or [], raw_targets):
            if defined.get(t.name) == f"{path}:{item.line_of('name')}":  # not a duplicate
                targets[t.name] = _build_target(t, settings)
        for i, channel_spec in enumerate(spec.channels or []):
            line = data["channels"].line_of(i)
            rules.append(_build_channel_rule(channel_spec, f"{path}:{line}", f"{path.name}:{line}"))
        for i, queue_spec in enumerate(spec.queues or []):
            line = data["queues"].line_of(i)
            rules.append(_build_queue_rule(queue_spec, f"{path}:{line}", f"{path.name}:{line}"))
    for name, file, line in refs:
        if name not in defined and name not in maybe_defined:
            issues.append(Issue(file, line, f"unknown target '{name}'" + did_you_mean(name, [*defined, *maybe_defined])))
    order = {str(p): i for i, p in enumerate(files)}
    issues.sort(key=lambda i: (order.get(i.file, -1), i.line))
    return RuleSet(targets=dict(targets),
                   channel_rules=tuple(r for r in rules if isinstance(r, ChannelRule)),
                   queue_rules=tuple(r for r in rules if isinstance(r, QueueRule)),
                   files=tuple(files)), issues


def load_rules(rules_dir: str | os.PathLike, settings: Settings | None = None,
               env: Mapping[str, str] | None = None) -> RuleSet:
    """rules/*.yaml -> RuleSet, or ConfigError with every issue. `settings` gives target defaults."""
    rules, issues = read_rules(rules_dir, settings, env)
    if issues:
        raise ConfigError(issues)
    return rules
