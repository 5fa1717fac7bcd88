"""`whazing-gateway check`: every issue of gateway.yaml and its rules folder, `file:line: message`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from whazing_gateway.config.errors import Issue
from whazing_gateway.config.rules_loader import read_rules
from whazing_gateway.config.settings import read_settings
from whazing_gateway.route.rules import RuleSet


def check(config: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[RuleSet | None, list[Issue]]:
    """Validate gateway.yaml and its rules folder; every issue, in file order."""
    settings, issues = read_settings(config, env)
    if any(i.line == 0 for i in issues):  # no config file: its rules folder is unknown, not missing
        return None, issues
    rules, rule_issues = read_rules(settings.rules_dir, settings, env)
    return rules, issues + rule_issues


def check_command(args: Any) -> int:
    """Every error as `file:line: message`, exit 1; else a summary, exit 0."""
    rules, issues = check(args.config)
    out = sys.stdout
    for issue in issues:
        out.write(f"{issue}\n")
    if issues or rules is None:
        out.write(f"{len(issues)} error{'s' if len(issues) != 1 else ''}\n")
        out.flush()
        return 1
    out.write(f"OK: {rules.summary()}\n")
    out.flush()
    return 0
