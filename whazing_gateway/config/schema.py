"""JSON Schemas of gateway.yaml and of rules files, generated from the declarations the loader
validates with, so editors (yaml-language-server in VS Code, Neovim...) complete, document and
underline exactly what `check` accepts. `whazing-gateway schema [gateway|rules]` prints them;
the copies under schema/ are what the shipped YAML files' modelines point at.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import TypeAdapter

from whazing_gateway.config.rules_loader import RulesFile
from whazing_gateway.config.settings import FIELDS, SECTION_DOCS, Settings
from whazing_gateway.config.values import ENV_PATTERN

KINDS = ("gateway", "rules")
FILES = {"gateway": "gateway.schema.json", "rules": "rules.schema.json"}
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_ENV = {"type": "string", "pattern": ENV_PATTERN, "description": "${VAR} or ${VAR:-default}, from the environment"}
_KEEP_OUTSIDE = ("description", "default")


def _any_string(node: dict) -> bool:
    return node.get("type") == "string" and not ({"pattern", "enum", "minLength", "const"} & node.keys())


def _structure(node: dict) -> bool:
    kind = node.get("type")
    types: list = kind if isinstance(kind, list) else [kind]
    return "$ref" in node or "object" in types or "array" in types


def _allow_env(node: dict) -> dict:
    """A value may be written as `${VAR}` (typed once expanded): let editors accept that."""
    if _structure(node) or _any_string(node):
        return node
    if any(_any_string(alt) or _structure(alt) for alt in node.get("anyOf", [])):
        return node
    outer = {k: node.pop(k) for k in _KEEP_OUTSIDE if k in node}
    return {**outer, "anyOf": [node, _ENV]}


def _tidy(node: Any) -> Any:
    """Drop pydantic's generated titles and let every value be an env reference."""
    if isinstance(node, list):
        return [_tidy(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _tidy(v) for k, v in node.items() if k != "title"}
    if isinstance(node.get("properties"), dict):
        node["properties"] = {k: _allow_env(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _allow_env(node["items"])
    return node


def gateway_schema() -> dict:
    """gateway.yaml's nested sections, rebuilt from the flat fields' YAML paths."""
    flat = TypeAdapter(Settings).json_schema(by_alias=True)
    root: dict = {"$schema": _DRAFT, "title": "Whazing Gateway settings (gateway.yaml)",
                  "description": "Validate with: whazing-gateway check --config gateway.yaml",
                  "type": ["object", "null"], "additionalProperties": False, "properties": {}}
    for path in FIELDS:
        parts = path.split(".")
        node = root
        for i, part in enumerate(parts[:-1]):
            section = ".".join(parts[: i + 1])
            node = node["properties"].setdefault(part, {
                "description": SECTION_DOCS.get(section, ""), "type": ["object", "null"],
                "additionalProperties": False, "properties": {}})
        node["properties"][parts[-1]] = flat["properties"][path]
    if "$defs" in flat:
        root["$defs"] = flat["$defs"]
    return {"$schema": _DRAFT, "title": root["title"], **_tidy(root)}


def rules_schema() -> dict:
    schema = RulesFile.model_json_schema()
    schema = {"$schema": _DRAFT, "title": "Whazing Gateway rules file (rules/*.yaml)",
              **{k: v for k, v in schema.items() if k != "title"}}
    schema["type"] = ["object", "null"]
    return {"$schema": _DRAFT, "title": schema["title"], **_tidy(schema)}


def schema_text(kind: str) -> str:
    schema = gateway_schema() if kind == "gateway" else rules_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema_command(args: Any) -> int:
    """`whazing-gateway schema [gateway|rules]`: the JSON Schema on stdout."""
    sys.stdout.write(schema_text(args.kind))
    return 0
