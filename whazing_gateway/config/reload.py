"""Hot reload of the rules folder: validate, then swap the whole RuleSet in one assignment.

Polling (mtime, size) instead of inotify: it works the same on every OS, on bind mounts and
on Kubernetes ConfigMaps (whose files change by symlink swap). The stat and the parse run in
a thread, so the event loop, and with it the traffic and the deliveries, never waits for them.
A broken file is refused and logged with every issue; the last good rules stay in force.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

import structlog

from whazing_gateway.config import ConfigError, Settings, load_rules
from whazing_gateway.ops import metrics
from whazing_gateway.route.rules import RuleSet

log = structlog.get_logger(__name__)

def initial_rules(settings: Settings, *, quiet: bool = False) -> RuleSet:
    """The rules at start. Broken rules do not keep the proxy down: it starts routing nothing,
    says why, and the hot reload picks up the fixed file. `quiet`: a second process reading the
    same files (the delivery worker) leaves the saying to the gateway."""
    from whazing_gateway.config import last_good

    try:
        rules = load_rules(settings.rules_dir, settings)
    except ConfigError as exc:
        saved = last_good.load(settings)
        if saved is not None:
            register_rule_secrets(saved)
        if quiet:
            return saved or RuleSet()
        for issue in exc.issues:
            log.error("rules refused at start", issue=str(issue), file=issue.file, line=issue.line)
        if saved is not None:
            log.warning("rules: routing with the last rules that loaded until the files are fixed",
                        saved=str(Path(settings.data_dir) / last_good.SNAPSHOT), summary=saved.summary())
        else:
            log.error("rules: no rules that loaded before: nothing is routed until the files are fixed")
        metrics.RULES_RELOADS.labels("refused").inc()
        return saved or RuleSet()
    register_rule_secrets(rules)
    last_good.save(settings)
    return rules


def register_rule_secrets(rules: RuleSet) -> None:
    """Mask every target's API key and signing secrets in logs, whatever the log line calls them."""
    from whazing_gateway.ops.logs import register_secret

    for target in rules.targets.values():
        register_secret(target.api_key)
        for secret in target.secrets:
            register_secret(secret)


Signature = tuple[tuple[str, int, int], ...]


def folder_signature(rules_dir: Path) -> Signature:
    """(name, mtime_ns, size) of every rules file; a missing folder has the empty signature."""
    out: list[tuple[str, int, int]] = []
    try:
        entries = list(os.scandir(rules_dir))
    except OSError:
        return ()
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            st = entry.stat()  # follows symlinks: a ConfigMap swap changes the target
        except OSError:
            continue
        out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


class RulesWatcher:
    """Polls `rules_dir` every `interval_s` and reloads `router.rules` when a file changed."""

    def __init__(self, router: Any, rules_dir: str | os.PathLike, settings: Settings | None = None,
                 interval_s: float = 1.0, on_reload: Callable[[RuleSet], None] | None = None) -> None:
        self.router = router
        self.rules_dir = Path(rules_dir)
        self.settings = settings
        self.interval_s = interval_s
        self.on_reload = on_reload
        self._task: asyncio.Task | None = None
        self._signature: Signature | None = None
        self.last_issues: list = []  # the issues of the last refused reload, [] once a reload succeeds

    def start(self) -> None:
        """Start polling (call from a running loop). The rules in force match the files now."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rules-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        self._signature = await asyncio.to_thread(folder_signature, self.rules_dir)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any surprise
                metrics.STAGE_ERRORS.labels("reload").inc()
                log.exception("rules.reload_error", rules_dir=str(self.rules_dir))

    async def poll(self) -> bool | None:
        """One check: None if nothing changed, True if new rules are in force, False if refused."""
        signature = await asyncio.to_thread(folder_signature, self.rules_dir)
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            rules = await asyncio.to_thread(load_rules, self.rules_dir, self.settings)
        except ConfigError as exc:
            self.last_issues = list(exc.issues)
            metrics.RULES_RELOADS.labels("refused").inc()
            for issue in exc.issues:
                log.error("rules.reload_refused", issue=str(issue), file=issue.file, line=issue.line)
            log.warning("rules.kept_last_good", rules_dir=str(self.rules_dir), errors=len(exc.issues))
            return False
        self.router.rules = rules  # one reference assignment: atomic for every reader
        self.last_issues = []
        if self.settings is not None:
            from whazing_gateway.config import last_good

            await asyncio.to_thread(last_good.save, self.settings)
        metrics.RULES_RELOADS.labels("ok").inc()
        log.info("rules.reloaded", rules_dir=str(self.rules_dir), summary=rules.summary())
        if self.on_reload is not None:
            self.on_reload(rules)
        return True
