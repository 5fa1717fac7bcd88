"""Hostile input (issue 13, points 1-4, 6 and 10): each case sent through a real gateway with real
traffic beside it. Every real event is delivered (counted at a real receiver), the bad input is
counted by kind in /metrics, the gateway's memory stays bounded, and the proxied answers are the
upstream's bytes. No timing assertion anywhere: speed is measured by bench/, never asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from whazing_gateway.config import check, read_rules
from whazing_gateway.route.patterns import PatternError, compile_pattern
from whazing_gateway.route.rules import MAX_RULES_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent


# -- rule patterns: RE2, linear time; `check` refuses what RE2 cannot run ------------------------
def test_catastrophic_pattern_runs_in_linear_time():
    """`(a+)+$` against 30 `a` and a `!` took Python's `re` a minute; RE2 answers at once.
    (The 10,000-`a` case would never finish with a backtracking engine.)"""
    p = compile_pattern("(a+)+$")
    assert p.search("a" * 30 + "!") is None
    assert p.search("a" * 10_000 + "!") is None
    assert p.search("a" * 30) is not None


@pytest.mark.parametrize("pattern, why", [
    (r"(a)\1", "backreferences"),
    (r"foo(?=bar)", "lookahead"),
    (r"(?<!x)y", "lookbehind"),
    (r"a++", "possessive"),
    ("(", "missing ), unterminated subpattern"),
    ("x" * 5000, "at most 4096"),
])
def test_patterns_re2_cannot_run_are_refused_with_a_reason(pattern, why):
    with pytest.raises(PatternError) as err:
        compile_pattern(pattern)
    assert why in str(err.value)


def _rules_folder(tmp_path: Path, rules: str) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text("rules_dir: rules\n")
    (tmp_path / "rules" / "0.yaml").write_text("targets:\n  - {name: t, url: 'http://127.0.0.1:9/'}\n")
    (tmp_path / "rules" / "r.yaml").write_text(rules)
    return tmp_path


def _check_cli(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "check", "--config", "gateway.yaml"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_check_rejects_a_backtracking_rule_with_file_line_and_why(tmp_path):
    _rules_folder(tmp_path, "channels:\n  - channel: '*'\n    targets: t\n    events: all\n"
                            "    match:\n      text: '(\\w+)\\s\\1'\n")
    proc = _check_cli(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == (
        "rules/r.yaml:6: invalid regular expression in 'text': not allowed for linear-time matching (RE2): "
        "backreferences (\\1...) need backtracking (invalid escape sequence: \\1)")
    assert "re2.cc" not in proc.stderr  # RE2's own logging stays quiet


def test_check_accepts_the_catastrophic_looking_pattern_re2_runs_linearly(tmp_path):
    _rules_folder(tmp_path, "channels:\n  - channel: '*'\n    targets: t\n    events: all\n"
                            "    match:\n      text: '(a+)+$'\n")
    proc = _check_cli(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules, issues = read_rules(tmp_path / "rules", env={})
    assert not issues
    [rule] = rules.channel_rules
    assert rule.match.text is not None and rule.match.text.search("a" * 30 + "!") is None


# -- rules-file size: refused before YAML parsing --------------------------------------------------
def test_a_50_mb_rules_file_is_refused_unparsed(tmp_path):
    folder = _rules_folder(tmp_path, "channels: []\n")
    with open(folder / "rules" / "big.yaml", "w") as f:
        line = "# " + "x" * 1021 + "\n"
        for _ in range(50 * 1024):
            f.write(line)
    _, issues = check(folder / "gateway.yaml", env={})
    assert [(Path(i.file).name, i.line) for i in issues] == [("big.yaml", 0)]
    assert f"larger than {MAX_RULES_FILE_BYTES} bytes: refused unparsed" in issues[0].message
    proc = _check_cli(folder)
    assert proc.returncode == 1
    assert "rules/big.yaml:0: rules file of 52428800 bytes is larger than" in proc.stdout
