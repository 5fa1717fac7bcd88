"""The value types settings and rules are declared with: each parses YAML strictly, says what
it expects in plain words, and describes itself in the JSON Schema editors use.

Strict on purpose: `groups: "no"` is a string, not false; `port: "80"` is a string, not 80.
A value written as `${VAR}` is read as YAML once expanded, so `${PORT:-8080}` is an integer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import annotated_types as at
import yaml
from pydantic import AfterValidator, BeforeValidator, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from whazing_gateway.config.env import EnvStr
from whazing_gateway.config.errors import describe

ENV_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"


def fail(message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose message is ours; `{key}` becomes the quoted key name."""
    return PydanticCustomError("wgw", "{msg}", {"msg": message, **ctx})


def from_env(value: Any) -> Any:
    """A `${...}` value is read as a YAML scalar once expanded: typed like a written one."""
    if isinstance(value, EnvStr):
        if not value.strip():
            return None
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return str(value)
    return value


def _env_str(value: Any) -> Any:
    return str(value) if isinstance(value, EnvStr) else value


Str = Annotated[str, BeforeValidator(_env_str)]
Int = Annotated[int, Strict(), BeforeValidator(from_env)]
Float = Annotated[float, Strict(), BeforeValidator(from_env)]
Bool = Annotated[bool, Strict(), BeforeValidator(from_env)]
NonNegativeInt = Annotated[int, Strict(), at.Ge(0), BeforeValidator(from_env)]
PositiveInt = Annotated[int, Strict(), at.Ge(1), BeforeValidator(from_env)]
PositiveFloat = Annotated[float, Strict(), at.Gt(0), BeforeValidator(from_env)]


def _port_range(low: int):
    def check(value: int) -> int:
        if not low <= value <= 65535:
            raise fail(f"{{key}} must be between {low} and 65535, got {value}")
        return value
    return check


Port = Annotated[int, Strict(), BeforeValidator(from_env), AfterValidator(_port_range(1)),
                 Field(json_schema_extra={"minimum": 1, "maximum": 65535})]
PortOrOff = Annotated[int, Strict(), BeforeValidator(from_env), AfterValidator(_port_range(0)),
                      Field(json_schema_extra={"minimum": 0, "maximum": 65535})]

# ---------------------------------------------------------------------------- sizes and durations

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.I)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.I)
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_WORDS = "a size in bytes (e.g. 1048576 or \"1m\")"
DURATION_WORDS = "a duration in seconds (e.g. 5, \"300ms\", \"5m\", \"2h\")"


def parse_size(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, str):
        m = _SIZE.match(raw)
        if m:
            return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()])
    return None


def parse_duration(raw: Any) -> float | None:
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


def _size(raw: Any) -> int:
    value = parse_size(from_env(raw))
    if value is None:
        raise fail(f"{{key}} must be {SIZE_WORDS}, got {describe(from_env(raw))}")
    return value


def _size_text(raw: Any) -> str:
    _size(raw)
    return str(from_env(raw))


def _duration(raw: Any) -> float:
    value = parse_duration(from_env(raw))
    if value is None:
        raise fail(f"{{key}} must be {DURATION_WORDS}, got {describe(from_env(raw))}")
    return value


_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0},
                          {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kmgKMG]?)[iI]?[bB]?\s*$"}]}
_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|MS|S|M|H|D)?\s*$"}]}

Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_SCHEMA)]
SizeText = Annotated[str, BeforeValidator(_size_text), WithJsonSchema(_SIZE_SCHEMA)]
Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]


def _schedule(raw: Any) -> Any:
    raw = from_env(raw)
    if isinstance(raw, (list, tuple)) and not raw:
        raise fail("{key} must list at least one delay")
    return raw


Schedule = Annotated[tuple[Duration, ...], BeforeValidator(_schedule),
                     Field(json_schema_extra={"minItems": 1})]

# ---------------------------------------------------------------------------- URLs


def _url(schemes: tuple[str, ...]):
    article = "an" if schemes[0][:1] in "aeiouh" else "a"

    def check(value: str) -> str:
        m = re.match(r"^([a-z][a-z0-9+.-]*)://[^/\s]+", value, re.I)
        if not m or m.group(1).lower() not in schemes:
            raise fail(f"{{key}} must be {article} {' or '.join(schemes)} URL, got {value!r}")
        return value
    return check


def _url_schema(schemes: tuple[str, ...]) -> dict:
    return {"type": "string", "pattern": f"^({'|'.join(schemes)})://[^/\\s]+"}


HTTP = ("http", "https")
REDIS = ("redis", "rediss", "unix")
HttpUrl = Annotated[str, BeforeValidator(_env_str), AfterValidator(_url(HTTP)),
                    Field(json_schema_extra=_url_schema(HTTP))]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


RedisUrl = Annotated[str, BeforeValidator(_env_str), AfterValidator(_url(REDIS)),
                     Field(json_schema_extra=_url_schema(REDIS))]
# Empty is unset: `${VAR:-}` with VAR unset simply leaves the value out.
OptionalRedisUrl = Annotated[RedisUrl | None, BeforeValidator(_empty_is_none)]
OptionalStr = Annotated[Str | None, BeforeValidator(_empty_is_none)]

# ---------------------------------------------------------------------------- one value or a list of them


def _listify(value: Any) -> Any:
    return value if isinstance(value, (list, tuple)) else [value]


def _one_or_many_schema(schema: dict) -> None:
    """`targets: n8n` and `targets: [n8n, crm]` are both right: say so to editors."""
    items = schema.pop("items", {})
    schema.pop("type", None)
    schema["anyOf"] = [items, {"type": "array", "items": items}]


T = TypeVar("T")
# A field that takes one value or a list of them (`targets: n8n`); always read as a list.
OneOrMany = Annotated[list[T], BeforeValidator(_listify), Field(json_schema_extra=_one_or_many_schema)]
