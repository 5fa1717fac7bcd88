"""The last rules that loaded, kept in `data_dir`, for a process that starts while a rules file
is broken.

A refused reload keeps the rules in force, but a process that starts (or restarts: the pipeline
process or the delivery worker after a crash, the gateway after a deploy) while a file is broken
had nothing to keep: the worker held every accepted delivery back ("no such target"), the
pipeline routed nothing. Each successful load saves the files' text here; a start whose rules
are refused loads this copy instead, says so, and the hot reload takes over once the files are
fixed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import structlog

from whazing_gateway.config import ConfigError, Settings, load_rules
from whazing_gateway.config.rules_loader import _rule_files  # the files a load reads, in its order
from whazing_gateway.ops.files import private_dir
from whazing_gateway.route.rules import RuleSet

log = structlog.get_logger(__name__)

SNAPSHOT = "rules-last-good.json"


def save(settings: Settings) -> None:
    """After a successful load: the rules files' text, written atomically (0600, in the private
    data folder). Never raises: a copy that cannot be written only loses this fallback. Only for
    a gateway run from a config file: its data folder is where it keeps everything else."""
    if settings.config_path is None:
        return
    try:
        folder = private_dir(settings.data_dir)
        files = [[p.name, p.read_text(encoding="utf-8")] for p in _rule_files(Path(settings.rules_dir))]
        fd, tmp = tempfile.mkstemp(prefix=".rules-last-good.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"files": files}, f)
            os.replace(tmp, folder / SNAPSHOT)
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception as exc:
        log.warning("rules: last good copy not saved", error=repr(exc))


def load(settings: Settings) -> RuleSet | None:
    """The saved copy, loaded like the folder (None if there is none, or it does not load)."""
    if settings.config_path is None:
        return None
    path = Path(settings.data_dir) / SNAPSHOT
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="whazing-rules-") as tmp:
            for name, text in files:
                (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
            return load_rules(tmp, settings)
    except (ConfigError, OSError, ValueError, TypeError):
        return None
