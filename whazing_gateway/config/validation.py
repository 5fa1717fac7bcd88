"""pydantic's errors -> `file:line: message` issues in the words `check` has always used.

pydantic validates a whole file in one pass and reports every error with its location
(`('channels', 0, 'events', 1)`); the location is walked through the line-aware YAML tree
to find the line, and the error type is said in plain words.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from whazing_gateway.config.env import UNSET
from whazing_gateway.config.errors import Issue, describe, did_you_mean
from whazing_gateway.config.yaml_lines import LDict, LList

Loc = tuple[Any, ...]

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}


def node_at(data: Any, loc: Loc) -> tuple[Any, int]:
    """(value, line) of `loc` in a loaded YAML tree: of the deepest part found, so a scalar
    read as a one-item list (`targets: n8n`) points at its key."""
    node = data
    line = getattr(data, "line", 1)
    for part in loc:
        if isinstance(node, LDict) and part in node:
            line = node.line_of(part)
            node = node[part]
        elif isinstance(node, LList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.line_of(part)
            node = node[part]
        else:
            break
    return node, line


def _unwrap_model(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The model class inside `X | None`, `list[X]`, `Annotated[X, ...]`, or None."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_model(typing.get_args(annotation)[0])
    if origin in (list, tuple, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def keys_of(model: type[pydantic.BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def model_at(root: type[pydantic.BaseModel], loc: Loc) -> type[pydantic.BaseModel] | None:
    model: type[pydantic.BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        model = _unwrap_model(field.annotation) if field is not None else None
    return model


def free_mapping(annotation: Any) -> bool:
    """Whether a field takes a mapping of any keys (`headers`)."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin in (typing.Annotated, typing.Union, types.UnionType):
        return any(free_mapping(arg) for arg in typing.get_args(annotation))
    return False


def belongs_under(key: str, mapping: Any, sections: dict[str, list[str] | None]) -> str:
    """The hint for a key one indentation level too far left: the section above it takes it.

    `sections` maps each key that is a section to the keys it takes (None: any key, as
    `headers`; then only an empty section right above counts)."""
    if not isinstance(mapping, LDict):
        return ""
    line = mapping.line_of(key)
    above = [k for k in mapping if mapping.line_of(k) < line and k in sections]
    above.sort(key=mapping.line_of)
    if above:
        last = above[-1]
        takes = sections[last]
        if (key in takes) if takes is not None else mapping[last] is None:
            return f": it belongs under '{last}', indent it below '{last}:'"
    homes = [name for name, keys in sections.items() if keys is not None and key in keys]
    if homes:
        return f": it belongs in a section ({' or '.join(repr(h) for h in homes)}), indented below it"
    return ""


@dataclass
class Shape:
    """What the messages need to know about one file's structure."""

    where: Callable[[Loc], str]  # the name of the mapping at a location ("channel rule match")
    keys: Callable[[Loc], list[str]]  # the keys it takes
    sections: Callable[[Loc], dict[str, list[str] | None]]  # its keys that are sections, with their keys
    key_name: Callable[[Any], str] = str  # a loc part as the user wrote it


def issues_from(exc: pydantic.ValidationError, data: Any, file: str, shape: Shape) -> list[Issue]:
    """Every error of one validation, as issues (errors about an unset `${VAR}` are dropped:
    the variable is reported once, where it is used)."""
    out: list[Issue] = []
    for err in exc.errors(include_url=False):
        if err.get("input") is not UNSET:
            line, message = _message(err, tuple(err["loc"]), data, shape)
            out.append(Issue(file, line, message))
    return out


def _last_key(loc: Sequence[Any]) -> Any:
    return next((p for p in reversed(loc) if not isinstance(p, int)), "value")


def _message(err: Any, loc: Loc, data: Any, shape: Shape) -> tuple[int, str]:
    """(line, message) of one pydantic error, in check's words."""
    kind, value = err["type"], err.get("input")
    line = node_at(data, loc)[1]
    key = shape.key_name(_last_key(loc))
    if kind in ("extra_forbidden", "missing"):
        parent = loc[:-1]
        mapping, parent_line = node_at(data, parent)
        if kind == "missing":
            return getattr(mapping, "line", parent_line), f"missing required key '{key}' in {shape.where(parent)}"
        name = str(loc[-1])
        hint = belongs_under(name, mapping, shape.sections(parent)) or did_you_mean(name, shape.keys(parent))
        return line, f"unknown key '{name}' in {shape.where(parent)}{hint}"
    if kind == "wgw":
        return line, str(err["ctx"]["msg"]).replace("{key}", f"'{key}'")
    if _EXPECTED.get(kind) == "a mapping" and loc and isinstance(loc[-1], int):
        return line, f"each entry of '{key}' must be a mapping, got {describe(value)}"
    if kind in _EXPECTED:
        return line, f"'{key}' must be {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "literal_error":
        choices = [c.strip().strip("'") for c in str(err["ctx"]["expected"]).replace(" or ", ", ").split(",")]
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return line, f"'{key}' must be one of {', '.join(c for c in choices if c)}, got {value!r}{hint}"
    if kind == "greater_than_equal":
        return line, f"'{key}' must be at least {err['ctx']['ge']}, got {value}"
    if kind == "greater_than":
        return line, f"'{key}' must be above {err['ctx']['gt']}, got {value}"
    return line, f"'{key}': {err['msg']}, got {describe(value)}"
