"""Issues: one thing wrong in one file, at one line, said so that a new user can fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One thing wrong in one file, at one line (0 when it is about the file or folder itself)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """Raised with every issue found, not just the first."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f", did you mean '{close[0]}'?" if close else ""


_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def describe(value: Any) -> str:
    """How a YAML value reads in a message: `string 'eighty'`, `integer 1`, `list`, `null`."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if value is None:
        return "null"
    name = _TYPE_NAMES.get(type(value)) or next((n for t, n in _TYPE_NAMES.items() if isinstance(value, t)),
                                                type(value).__name__)
    return f"{name} {str(value)!r}" if isinstance(value, str) else f"{name} {value!r}"
