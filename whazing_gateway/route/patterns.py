"""Rule patterns (`match.text`, `match.contact_number`) compiled with RE2: linear time, always.

A customer writes the text a rule searches, so a backtracking engine would let one message
freeze the gateway (`(a+)+$` against 30 `a` and a `!`: a minute with Python's `re`). RE2 has
no backtracking; what it cannot run (backreferences, lookaround, possessive quantifiers) is
refused when the rules are loaded, and `whazing-gateway check` says why.
"""

from __future__ import annotations

import re
from typing import Protocol

import re2

# A pattern this long is not a hand-written rule.
MAX_PATTERN_CHARS = 4096
# RE2 builds its automata within this memory; past it a pattern is refused, never slow.
MAX_MEM_BYTES = 8 << 20

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the refusal is reported as an issue, not on stderr
_OPTIONS.max_mem = MAX_MEM_BYTES

_WHY = (
    (re.compile(r"\\[1-9]"), "backreferences (\\1...) need backtracking"),
    (re.compile(r"\(\?<?[=!]"), "lookahead and lookbehind ((?=...), (?!...), (?<=...), (?<!...)) need backtracking"),
    (re.compile(r"\(\?>"), "atomic groups ((?>...)) are not supported"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers (*+, ++, ?+) are not supported"),
)


class Pattern(Protocol):
    """What rules need of a compiled pattern (RE2's and Python's both have it)."""

    pattern: str

    def search(self, text: str, /) -> object | None: ...


class PatternError(re.error):
    """A rule pattern RE2 cannot run. A `re.error`, so callers that caught that still do."""


def compile_pattern(pattern: str) -> Pattern:
    """`pattern` compiled with RE2 (linear-time search), or PatternError saying why not."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"pattern of {len(pattern)} characters (at most {MAX_PATTERN_CHARS})")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise PatternError(_explain(pattern, exc)) from None


def _explain(pattern: str, exc: Exception) -> str:
    """Why RE2 refused it: Python's own syntax message when the pattern is broken anyway,
    else what in it needs backtracking."""
    try:
        re.compile(pattern)  # compiling is cheap and safe; only matching can backtrack
    except re.error as syntax:
        return str(syntax)
    detail = exc.args[0] if exc.args else exc
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    for rx, why in _WHY:
        if rx.search(pattern):
            return f"not allowed for linear-time matching (RE2): {why} ({text})"
    return f"RE2 cannot compile it: {text}"
