"""gateway.yaml -> `Settings`, rules/*.yaml -> `RuleSet`, and `whazing-gateway check`.

Users edit YAML by hand, so every complaint names a file and a line and says what is wrong
(unknown keys get a did-you-mean), and all complaints are gathered before giving up: one
`check` run lists everything to fix. Every setting and rule field is declared once (settings.py,
rules_loader.py); the JSON Schema editors use is generated from the same declarations (schema.py).
Secrets come from the environment as `${VAR}` or `${VAR:-default}`; they are never required to
be written in a file. `run` and `check` read the files the same way: a referenced `${VAR}` that
is unset (and has no `:-default`) is an error in both, so the gateway refuses to start rather
than sending webhooks without their key; hot reload refuses such a rules file and keeps the last good one.
"""

from whazing_gateway.config.check import check, check_command
from whazing_gateway.config.env import expand_env
from whazing_gateway.config.errors import ConfigError, Issue
from whazing_gateway.config.rules_loader import EVENT_ALIASES, load_rules, read_rules
from whazing_gateway.config.settings import Settings, load_settings, read_settings
from whazing_gateway.route.rules import RuleSet

__all__ = [
    "EVENT_ALIASES",
    "ConfigError",
    "Issue",
    "RuleSet",
    "Settings",
    "check",
    "check_command",
    "expand_env",
    "load_rules",
    "load_settings",
    "read_rules",
    "read_settings",
]
