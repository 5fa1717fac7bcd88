"""`${VAR}` and `${VAR:-default}` in YAML values: secrets live in the environment, not in files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from whazing_gateway.config.errors import Issue
from whazing_gateway.config.yaml_lines import LDict, LList

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


class EnvStr(str):
    """A value that came from `${...}`: typed fields read it as YAML (`${PORT:-8080}` is an integer)."""


class _Unset:
    """Stands for a value whose variable is unset: already reported, so its own checks stay quiet."""

    def __repr__(self) -> str:
        return "<unset environment variable>"


UNSET = _Unset()


def expand_tree(data: Any, file: str, issues: list[Issue], env: Mapping[str, str]) -> Any:
    """Expand every `${...}` of a loaded YAML tree in place; unset variables become issues."""

    def one(value: Any, line: int) -> Any:
        if isinstance(value, str) and "${" in value:
            expanded, missing = expand_env(value, env)
            for name in missing:
                issues.append(Issue(file, line, f"environment variable {name} is not set"))
            return UNSET if missing else EnvStr(expanded)
        if isinstance(value, LDict):
            for key in list(value):
                value[key] = one(value[key], value.line_of(key))
        elif isinstance(value, LList):
            for i, item in enumerate(value):
                value[i] = one(item, value.line_of(i))
        return value

    return one(data, getattr(data, "line", 1))
