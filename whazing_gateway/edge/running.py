"""The values the gateway really runs with: gateway.yaml, overridden by the proxy's own options.

`whazing-gateway run --set listen_port=N`, `mitmdump -s addons/gateway.py --mode reverse:URL
-p N` and `--set whazing_metrics_port=N` move the proxy or the side port; what the gateway logs,
what /readyz probes and what the services bind must follow, not gateway.yaml. One pure
function computes them, so every reader asks the same question and gets the same answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import pydantic

from whazing_gateway.config.errors import ConfigError, Issue
from whazing_gateway.config.settings import Settings

METRICS_PORT_OPTION = "whazing_metrics_port"
# The mitmproxy options that change a running value (a change to any of them recomputes it).
RUNNING_OPTIONS = frozenset({"mode", "listen_host", "listen_port", METRICS_PORT_OPTION, "web_host", "web_port"})


def add_options(loader: Any) -> None:
    """The gateway's overrides that mitmproxy has no option of its own for."""
    loader.add_option(METRICS_PORT_OPTION, Optional[int], None,
                      "Port of /metrics, /healthz, /readyz (0 = off); default: metrics.port of gateway.yaml.")


def _get(options: Any, name: str) -> Any:
    return options.get(name) if isinstance(options, Mapping) else getattr(options, name, None)


def running_settings(settings: Settings, options: Any) -> Settings:
    """gateway.yaml's settings + mitmproxy's option values -> the settings in force (pure).

    `options` is mitmproxy's `ctx.options` or a mapping of the same names. The proxy listens
    where mitmproxy's mode and `listen_host`/`listen_port` say (a reverse mode's `@port` wins,
    as in mitmproxy), and forwards to the first reverse mode's URL.
    """
    from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

    changes: dict[str, Any] = {}
    specs = [ProxyMode.parse(m) for m in (_get(options, "mode") or [])]
    reverse = next((m for m in specs if isinstance(m, ReverseMode)), None)
    mode = reverse or (specs[0] if specs else None)
    if reverse is not None:
        changes["upstream"] = reverse.data
    if mode is not None:
        port = mode.listen_port(_get(options, "listen_port"))
        if port is not None:
            changes["listen_port"] = port
        host = mode.listen_host(_get(options, "listen_host") or "")
        changes["listen_host"] = host or "0.0.0.0"
    for option, name in ((METRICS_PORT_OPTION, "metrics_port"), ("web_host", "web_host"), ("web_port", "web_port")):
        value = _get(options, option)  # mitmweb's options exist only under `run --web`
        if value is not None:
            changes[name] = value
    changes = {k: v for k, v in changes.items() if getattr(settings, k) != v}
    if not changes:
        return settings
    try:
        return dataclasses.replace(settings, **changes)
    except pydantic.ValidationError as exc:
        raise ConfigError([_issue(e) for e in exc.errors()]) from None


_OPTION_OF = {"upstream": "mode", "listen_port": "listen_port", "listen_host": "listen_host",
              "metrics_port": METRICS_PORT_OPTION, "web_host": "web_host", "web_port": "web_port"}


def _issue(err: Any) -> Issue:
    option = _OPTION_OF.get(str(err["loc"][0]) if err["loc"] else "", "option")
    message = str(err["ctx"]["msg"]) if err["type"] == "wgw" else f"{{key}}: {err['msg']}"
    return Issue("mitmproxy options", 0, message.replace("{key}", f"'{option}'"))
