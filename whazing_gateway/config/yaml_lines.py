"""A YAML loader that remembers the line of every key and item, and says syntax errors plainly.

Users indent by hand: PyYAML's own words (`expected <block end>, but found '?'`) tell them
nothing, so tabs and misaligned keys are explained with the line, what is wrong and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from whazing_gateway.config.errors import Issue


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


class Unreadable(Exception):
    """The file could not be read or parsed; its issue is already recorded."""


def load_yaml(path: Path, issues: list[Issue]) -> Any:
    """Parse one file; read and syntax errors become issues and raise Unreadable."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.append(Issue(str(path.absolute()), 0, "file not found"))
        raise Unreadable from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        issues.append(Issue(str(path.absolute()), 0, f"cannot read file: {reason}"))
        raise Unreadable from None
    loader = _Loader(text, file, issues)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        line, message = explain_syntax_error(text, exc)
        issues.append(Issue(file, line, message))
        raise Unreadable from None
    except yaml.YAMLError as exc:
        issues.append(Issue(file, 1, f"YAML syntax error: {exc}"))
        raise Unreadable from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------- plain-language syntax errors

_KEY = re.compile(r"^(?P<indent> *)(?P<dash>(?:- +)*)(?P<key>[^\s#:'\"\[\]{}][^:#]*?|'[^']*'|\"[^\"]*\")\s*:(?:\s|$)")


def _key_at(line: str) -> tuple[int, str] | None:
    """(column of the key, key) of a `key:` line, `- key:` lines included; None for other lines."""
    m = _KEY.match(line)
    if not m:
        return None
    return len(m.group("indent")) + len(m.group("dash")), m.group("key").strip("'\"")


def _previous_key(lines: list[str], index: int) -> tuple[int, int, str] | None:
    """(line number, column, key) of the nearest `key:` line above `index` (0-based)."""
    for i in range(index - 1, -1, -1):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        got = _key_at(lines[i])
        return (i + 1, *got) if got else None
    return None


def _dash_at(line: str) -> int | None:
    """The column of a list item's dash (`  - x`), or None."""
    m = re.match(r"^( *)-(?:\s|$)", line)
    return len(m.group(1)) if m else None


def _previous_dash(lines: list[str], index: int) -> tuple[int, int] | None:
    """(line number, column) of the nearest list item above `index` (0-based)."""
    for i in range(index - 1, -1, -1):
        column = _dash_at(lines[i])
        if column is not None:
            return i + 1, column
    return None


def _spaces(n: int) -> str:
    return f"{n} space{'s' if n != 1 else ''}"


def _explain_indentation(lines: list[str], line: int) -> tuple[int, str] | None:
    """(line, message) for a line that does not line up with the list or mapping above it."""
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    dash = _dash_at(here)
    item = _previous_dash(lines, line - 1) if dash is not None else None
    if dash is not None and item is not None and item[1] != dash:
        return line, (f"YAML syntax error: bad indentation: this list item is indented by {_spaces(dash)}, the one "
                      f"on line {item[0]} by {item[1]}; items of one list must line up: indent it by "
                      f"{_spaces(item[1])}")
    got = _key_at(here)
    above = _previous_key(lines, line - 1) if got else None
    if got is None or above is None:
        return None
    (column, key), (above_line, above_column, above_key) = got, above
    if re.match(r"-[^\s-]", above_key):
        return above_line, (f"YAML syntax error: '{above_key}' needs a space after the dash to start a list "
                            f"item: write '- {above_key[1:]}'")
    if column == above_column:
        return None
    return line, (f"YAML syntax error: bad indentation: '{key}' is indented by {_spaces(column)}, "
                  f"'{above_key}' on line {above_line} by {above_column}; keys of one mapping must line up: "
                  f"indent '{key}' by {_spaces(above_column)} like '{above_key}', or line it up with "
                  f"the section it belongs to")


def explain_syntax_error(text: str, exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """(line, message) for a YAML syntax error, in words that say how to fix it."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    problem = exc.problem or exc.context or "invalid YAML"
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if "'\\t'" in problem or ("\t" in here[: len(here) - len(here.lstrip())]):
        return line, ("YAML syntax error: a tab character indents this line; YAML indents with spaces only: "
                      "replace the tab with spaces")
    if "mapping values are not allowed here" in problem or "expected <block end>" in problem:
        explained = _explain_indentation(lines, line)
        if explained is not None:
            return explained
    message = f"YAML syntax error: {problem}"
    opened = exc.context_mark.line + 1 if exc.context_mark is not None else line
    what = next((w for c, w in (("flow", "bracket"), ("quoted", "quote")) if c in (exc.context or "")), None)
    if what and opened != line:
        message += f" (the {what} opened on line {opened} is not closed)"
    return line, message
