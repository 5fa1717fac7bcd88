"""`whazing-gateway check`: run as a real subprocess on broken and on shipped files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from whazing_gateway.config import check

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "tests" / "fixtures" / "broken_rules"

EXPECTED_BROKEN = """\
gateway.yaml:3: 'port' must be an integer, got string 'eighty'
gateway.yaml:4: unknown key 'hots' in listen, did you mean 'host'?
gateway.yaml:5: 'upstream' must be an http or https URL, got 'localhost:3000'
gateway.yaml:7: 'format' must be one of auto, json, console, got 'pretty'
gateway.yaml:9: 'port' must be between 0 and 65535, got 70000
gateway.yaml:11: 'retry_schedule' must be a duration in seconds (e.g. 5, "300ms", "5m", "2h"), got string 'soon'
gateway.yaml:13: environment variable WGW_TEST_UNSET_PASSWORD is not set
rules/10-targets.yaml:4: environment variable WGW_TEST_UNSET_KEY is not set
rules/10-targets.yaml:5: 'timeout_ms' must be an integer, got string 'fast'
rules/10-targets.yaml:6: duplicate target name 'n8n' (first defined at rules/10-targets.yaml:2)
rules/10-targets.yaml:9: 'url' must be an http or https URL, got 'ftp://crm.example'
rules/10-targets.yaml:10: 'format' must be one of whazing, envelope, got 'xml'
rules/10-targets.yaml:11: a secret must be base64, usually with the 'whsec_' prefix (whsec_<base64>)
rules/10-targets.yaml:12: missing required key 'name' in target
rules/20-channels.yaml:3: unknown target 'n8m', did you mean 'n8n'?
rules/20-channels.yaml:4: unknown key 'evnts' in channel rule, did you mean 'events'?
rules/20-channels.yaml:5: unknown event 'message.recieved', did you mean 'message.received'?
rules/20-channels.yaml:6: 'groups' must be true or false, got string 'no'
rules/20-channels.yaml:7: missing required key 'events' in channel rule
rules/20-channels.yaml:13: invalid regular expression in 'text': missing ), unterminated subpattern at position 0
rules/20-channels.yaml:14: unknown key 'contatc_number' in channel rule match, did you mean 'contact_number'?
rules/30-queues.yaml:4: queue integrations take message events only, not 'ticket.closed'
rules/30-queues.yaml:5: 'start_on_transfer' must be true or false, got string 'sometimes'
rules/40-syntax.yaml:4: YAML syntax error: expected ',' or ']', but got ':' (the bracket opened on line 3 is not closed)
rules/50-shape.yaml:1: a rules file must be a mapping with 'targets', 'channels' or 'queues', got list
25 errors
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WGW_", "N8N_", "AUDIT_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _check(cwd: Path, config: str = "gateway.yaml", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "check", "--config", config], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_check_broken_files_prints_every_error_exactly():
    proc = _check(BROKEN)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == EXPECTED_BROKEN


@pytest.mark.slow
def test_check_shipped_config_passes_on_a_fresh_machine():
    """No env var set: the shipped examples only use ${VAR:-} for their secrets."""
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "OK: 2 targets, 3 channel rules, 2 queue rules\n"


@pytest.mark.slow
def test_check_shipped_config_from_another_folder_resolves_rules_next_to_it(tmp_path):
    proc = _check(tmp_path, str(ROOT / "gateway.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK: 2 targets")


@pytest.mark.slow
def test_set_env_var_clears_the_error(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text("rules_dir: rules\n")
    (tmp_path / "rules" / "t.yaml").write_text(
        "targets:\n  - name: a\n    url: ${WGW_T_URL}\n    api_key: ${WGW_T_KEY}\n"
        "channels:\n  - channel: '*'\n    targets: a\n    events: []\n")
    bad = _check(tmp_path)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "rules/t.yaml:3: environment variable WGW_T_URL is not set",
        "rules/t.yaml:4: environment variable WGW_T_KEY is not set",
        "2 errors",
    ]
    good = _check(tmp_path, WGW_T_URL="http://127.0.0.1:9/x", WGW_T_KEY="k")
    assert good.returncode == 0, good.stdout
    assert good.stdout == "OK: 1 targets, 1 channel rules, 0 queue rules\n"


@pytest.mark.slow
def test_missing_config_is_named_by_its_absolute_path_alone(tmp_path):
    """Without its config file, the rules folder is not "missing": it is unknown (no cascade)."""
    proc = _check(tmp_path, "nope.yaml")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{tmp_path / 'nope.yaml'}: file not found", "1 error"]


@pytest.mark.slow
def test_missing_rules_folder_says_where_it_was_looked_for(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway.yaml").write_text("rules_dir: ruls\n")
    proc = _check(tmp_path, "conf/gateway.yaml")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{tmp_path / 'conf' / 'ruls'}: rules folder not found (rules_dir is relative to the folder of "
        f"gateway.yaml: {tmp_path / 'conf'})",
        "1 error",
    ]


@pytest.mark.parametrize("text, message", [
    ("channels:\n  - channel: 1\n    targets: t\n    events: [message.received]\n    open: 1\n",
     "r.yaml:5: 'open' must be true or false, got integer 1"),
    ("channels:\n  - channel: 1\n    targets: t\n    events: [ticket.created]\n    channel: 2\n",
     "r.yaml:5: duplicate key 'channel' (first at line 2)"),
    ("channels:\n  - channel: [1, null]\n    targets: t\n    events: all\n",
     "r.yaml:2: 'channel' must be an id (integer), a name (string) or \"*\", got null"),
    ("targets:\n  - name: 'bad name'\n    url: http://x\n",
     "r.yaml:2: target name 'bad name' may use only letters, digits, '_', '.', '-'"),
    ("targets:\n  - name: u\n    url: http://x\n    concurrency: 0\n",
     "r.yaml:4: 'concurrency' must be at least 1, got 0"),
    ("targets:\n  - name: u\n    url: http://x\n    headers: {X-A: [1]}\n",
     "r.yaml:4: header 'X-A' must be a string, got list"),
    ("queus:\n  - queue: 1\n", "r.yaml:1: unknown key 'queus' in rules file, did you mean 'queues'?"),
    ("queues:\n  - queue: 1\n    targets: t\n    start_on_transfer: true\n    event: [sent]\n",
     "r.yaml:5: unknown key 'event' in queue rule, did you mean 'events'?"),
])
def test_single_mistakes(tmp_path, text, message):
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text("")
    (tmp_path / "rules" / "0.yaml").write_text("targets:\n  - {name: t, url: 'http://127.0.0.1:9/'}\n")
    (tmp_path / "rules" / "r.yaml").write_text(text)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        _, issues = check("gateway.yaml", env={})
    finally:
        os.chdir(old)
    assert [str(i).removeprefix("rules/") for i in issues] == [message]


# The mistakes listed in issue 11. Pinned before the loader rewrite in PyYAML's words
# ("expected <block end>, but found '?'", "found character '\\t' that cannot start any token",
# "unknown key 'port' in gateway.yaml", and a tab in a targets file made every rule naming its
# targets say "unknown target"); now each says what is wrong and how to fix it, once.
_TAB = ("YAML syntax error: a tab character indents this line; YAML indents with spaces only: "
        "replace the tab with spaces")


def _indent(key: str, spaces: int, above: str, above_line: int, fix: int) -> str:
    return (f"YAML syntax error: bad indentation: '{key}' is indented by {spaces} spaces, '{above}' on line "
            f"{above_line} by {fix}; keys of one mapping must line up: indent '{key}' by {fix} spaces like "
            f"'{above}', or line it up with the section it belongs to")


_TARGETS = "targets:\n  - name: n8n\n    url: http://127.0.0.1:5678/w\n"
ISSUE_CASES = {
    "port dedented to the top level": (
        "listen:\n  host: 0.0.0.0\nport: 8080\n", {},
        ["gateway.yaml:3: unknown key 'port' in gateway.yaml: it belongs under 'listen', indent it below 'listen:'"]),
    "key over-indented in gateway.yaml": (
        "listen:\n  host: 0.0.0.0\n    port: 8080\n", {},
        ["gateway.yaml:3: " + _indent("port", 4, "host", 2, 2)]),
    "tab in gateway.yaml": (
        "listen:\n\tport: 8080\n", {},
        ["gateway.yaml:2: " + _TAB]),
    "rule key over-indented": (
        "", {"20-c.yaml": "channels:\n  - channel: 1\n    targets: n8n\n     events: all\n"},
        ["rules/20-c.yaml:4: " + _indent("events", 5, "targets", 3, 4)]),
    "rule key under-indented": (
        "", {"20-c.yaml": "channels:\n  - channel: 1\n    targets: n8n\n   events: all\n"},
        ["rules/20-c.yaml:4: " + _indent("events", 3, "targets", 3, 4)]),
    "rule keys not under the dash": (
        "", {"20-c.yaml": "channels:\n  - channel: 1\n  targets: n8n\n  events: all\n"},
        ["rules/20-c.yaml:3: " + _indent("targets", 2, "channel", 2, 4)]),
    "target key dedented to the list": (
        "", {"15-t.yaml": "targets:\n  - name: a\n    url: http://x\n  headers:\n    X: y\n"},
        ["rules/15-t.yaml:4: " + _indent("headers", 2, "url", 3, 4)]),
    "match key not indented under match": (
        "", {"20-c.yaml": "channels:\n  - channel: 1\n    targets: n8n\n    events: all\n    match:\n    text: hi\n"},
        ["rules/20-c.yaml:6: unknown key 'text' in channel rule: it belongs under 'match', indent it below 'match:'"]),
    "tab in a targets file": (
        "", {"10-targets.yaml": "targets:\n  - name: n8n\n\turl: http://127.0.0.1:5678/w\n",
             **{f"2{i}-c.yaml": f"channels:\n  - channel: {i}\n    targets: n8n\n    events: all\n" for i in (2, 3, 4)},
             "30-q.yaml": "queues:\n  - queue: 1\n    targets: [n8n]\n"},
        ["rules/10-targets.yaml:3: " + _TAB]),
}


# More of the same family, added with the rewrite.
ISSUE_CASES.update({
    "list item misaligned": (
        "", {"15-t.yaml": "targets:\n- name: a\n  url: http://x\n - name: b\n   url: http://y\n"},
        ["rules/15-t.yaml:4: YAML syntax error: bad indentation: this list item is indented by 1 space, the one on "
         "line 2 by 0; items of one list must line up: indent it by 0 spaces"]),
    "no space after the dash (reported on its own line, not the next)": (
        "", {"20-c.yaml": "channels:\n  -channel: 1\n   targets: n8n\n"},
        ["rules/20-c.yaml:2: YAML syntax error: '-channel' needs a space after the dash to start a list item: "
         "write '- channel'"]),
    "header not indented under an empty headers": (
        "", {"15-t.yaml": "targets:\n  - name: a\n    url: http://x\n    headers:\n    X-A: b\n"},
        ["rules/15-t.yaml:5: unknown key 'X-A' in target: it belongs under 'headers', indent it below 'headers:'"]),
    "a tab in a targets file does not hide a typo elsewhere": (
        "", {"10-targets.yaml": "targets:\n  - name: n8n\n\turl: http://127.0.0.1:5678/w\n",
             "20-c.yaml": "channels:\n  - channel: 1\n    targets: [n8n, n8m]\n    events: all\n"},
        ["rules/10-targets.yaml:3: " + _TAB, "rules/20-c.yaml:3: unknown target 'n8m', did you mean 'n8n'?"]),
    "metrics port dedented": (
        "listen:\n  port: 8080\nmetrics:\n  host: 127.0.0.1\nport: 9191\n", {},
        ["gateway.yaml:5: unknown key 'port' in gateway.yaml: it belongs under 'metrics', indent it below 'metrics:'"]),
    "key at the top level with no section above": (
        "port: 9191\n", {},
        ["gateway.yaml:1: unknown key 'port' in gateway.yaml: it belongs in a section ('listen' or 'metrics' or "
         "'web'), indented below it"]),
})


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_issue_mistakes(tmp_path, case):
    gateway, files, expected = ISSUE_CASES[case]
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text(gateway)
    (tmp_path / "rules" / "10-targets.yaml").write_text(_TARGETS)
    for name, text in files.items():
        (tmp_path / "rules" / name).write_text(text)
    proc = _check(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    n = len(expected)
    assert proc.stdout.splitlines() == expected + [f"{n} error{'s' if n != 1 else ''}"]
