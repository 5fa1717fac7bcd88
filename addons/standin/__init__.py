"""A stand-in for the Whazing backend: same routes, JSON shapes and socket.io pushes, in memory.

Public entry points (imported lazily, so `addons.standin.seed` stays light):
`start_standin`, `StandinServer`, `play_day`, `ScenarioLog`, `TolerantAsyncClient`.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "start_standin": "addons.standin.server",
    "StandinServer": "addons.standin.server",
    "play_day": "addons.standin.scenario",
    "ScenarioLog": "addons.standin.scenario",
    "TolerantAsyncClient": "addons.standin.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
