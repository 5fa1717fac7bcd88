"""The JSON Schemas editors use: generated from the loader's declarations, shipped, referenced
from every shipped YAML file, accepting those files and rejecting what `check` rejects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from whazing_gateway.config import read_rules, read_settings
from whazing_gateway.config.schema import FILES, schema_text

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "gateway": [ROOT / "gateway.yaml", ROOT / "deploy" / "gateway.docker.yaml"],
    "rules": sorted((ROOT / "rules").glob("*.yaml")),
}
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.M)


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schema" / FILES[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FILES))
def test_shipped_schema_is_the_generated_one(kind):
    """`whazing-gateway schema KIND` (a real subprocess) prints exactly the shipped file."""
    proc = subprocess.run([sys.executable, "-m", "whazing_gateway.cli", "schema", kind], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == schema_text(kind) == (ROOT / "schema" / FILES[kind]).read_text(), \
        f"regenerate: whazing-gateway schema {kind} > schema/{FILES[kind]}"


@pytest.mark.parametrize("kind, path", [(k, p) for k, paths in SHIPPED.items() for p in paths],
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_shipped_file_names_its_schema_and_is_accepted(kind, path):
    text = path.read_text()
    first = text.splitlines()[0]
    m = MODELINE.match(first)
    assert m, f"{path.name}: first line must be the yaml-language-server modeline"
    assert (path.parent / m.group(1)).resolve() == (ROOT / "schema" / FILES[kind]).resolve()
    errors = [e.message for e in validator(kind).iter_errors(yaml.safe_load(text))]
    assert errors == []


def test_the_rules_folder_has_no_file_without_a_schema():
    assert {p.name for p in (ROOT / "rules").iterdir() if p.suffix in (".yaml", ".yml")} == \
        {p.name for p in SHIPPED["rules"]}


# Structural mistakes: `check` and the schema must both reject each one.
GATEWAY_MISTAKES = [
    "listen:\n  hots: 0.0.0.0\n",
    "listen:\n  port: eighty\n",
    "listen:\n  port: 70000\n",
    "listen:\n  host: 0.0.0.0\nport: 8080\n",
    "listen: 8080\n",
    "upstream: localhost:3000\n",
    "log:\n  format: pretty\n",
    "log:\n  level: verbose\n",
    "storage:\n  backend: mysql\n",
    "storage:\n  redis:\n    url: http://127.0.0.1:6379\n",
    "delivery:\n  retry_schedule: [0, soon]\n",
    "delivery:\n  retry_schedule: []\n",
    "delivery:\n  worker: thread\n",
    "delivery:\n  timeout_ms: 0\n",
    "observer:\n  password: hunter2\n",
    "proxy:\n  inspect_max_bytes: lots\n",
    "metrics:\n  port: -1\n",
    "webb: {}\n",
]
RULES_MISTAKES = [
    "- channel: 1\n",
    "queus:\n  - queue: 1\n",
    "targets:\n  - url: http://x\n",
    "targets:\n  - name: 'bad name'\n    url: http://x\n",
    "targets:\n  - name: t\n    url: ftp://x\n",
    "targets:\n  - name: t\n    url: http://x\n    format: xml\n",
    "targets:\n  - name: t\n    url: http://x\n    kind: slack\n",
    "targets:\n  - name: t\n    url: http://x\n    timeout_ms: fast\n",
    "targets:\n  - name: t\n    url: http://x\n    concurrency: 0\n",
    "targets:\n  - name: t\n    url: http://x\n    rate_per_s: 0\n",
    "targets:\n  - name: t\n    url: http://x\n    headers: {X-A: [1]}\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n    evnts: all\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n    events: [message.recieved]\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n    events: all\n"
    "    groups: 'no'\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: [1, null]\n    targets: t\n    events: all\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n    events: all\n"
    "    match:\n      contatc_number: '^55'\n",
    "targets:\n  - name: t\n    url: http://x\nchannels:\n  - channel: 1\n    targets: t\n    events: all\n"
    "    match:\n    text: hi\n",
    "targets:\n  - name: t\n    url: http://x\nqueues:\n  - queue: 1\n    targets: t\n    events: [ticket.closed]\n",
    "targets:\n  - name: t\n    url: http://x\nqueues:\n  - queue: 1\n    targets: t\n    start_on_transfer: sometimes\n",
    "targets:\n  - name: t\n    url: http://x\nqueues:\n  - targets: t\n",
]


@pytest.mark.parametrize("text", GATEWAY_MISTAKES)
def test_gateway_mistakes_are_rejected_by_check_and_by_the_schema(tmp_path, text):
    (tmp_path / "rules").mkdir()
    (tmp_path / "gateway.yaml").write_text(text)
    _, issues = read_settings(tmp_path / "gateway.yaml", env={})
    assert issues, "check accepts it"
    assert list(validator("gateway").iter_errors(yaml.safe_load(text))), "the schema accepts it"


@pytest.mark.parametrize("text", RULES_MISTAKES)
def test_rules_mistakes_are_rejected_by_check_and_by_the_schema(tmp_path, text):
    (tmp_path / "r.yaml").write_text(text)
    _, issues = read_rules(tmp_path, env={})
    assert issues, "check accepts it"
    assert list(validator("rules").iter_errors(yaml.safe_load(text))), "the schema accepts it"


def test_env_references_are_accepted_where_check_accepts_them():
    """`port: ${PORT:-8080}` is an integer once expanded: editors must not underline it."""
    assert not list(validator("gateway").iter_errors(
        yaml.safe_load("listen: {port: '${PORT:-8080}'}\nobserver: {enabled: '${OBS:-true}'}\n"
                       "delivery: {retry_schedule: ['${FIRST:-0}', 5m]}\n")))
    assert not list(validator("rules").iter_errors(yaml.safe_load(
        "targets:\n  - {name: t, url: '${URL}', concurrency: '${C:-2}', secrets: ['${S:-}']}\n")))


@pytest.mark.parametrize("name", ["gateway.yaml", "rules/10-targets.yaml", "rules/20-channels.yaml",
                                  "rules/30-queues.yaml", "rules/50-shape.yaml"])
def test_broken_fixtures_are_underlined_by_the_schema_too(name):
    """The check fixtures' structural mistakes (40-syntax.yaml is not YAML at all)."""
    text = (ROOT / "tests" / "fixtures" / "broken_rules" / name).read_text()
    kind = "gateway" if name == "gateway.yaml" else "rules"
    assert list(validator(kind).iter_errors(yaml.safe_load(text)))
