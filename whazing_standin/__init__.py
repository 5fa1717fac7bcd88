"""A stand-in for the Whazing backend: same routes, JSON shapes and socket.io pushes, in memory.

Public entry points (imported lazily, so `whazing_standin.seed` stays light):
`start_standin`, `StandinServer`, `play_day`, `ScenarioLog`, `TolerantAsyncClient`.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "start_standin": "whazing_standin.server",
    "StandinServer": "whazing_standin.server",
    "play_day": "whazing_standin.scenario",
    "ScenarioLog": "whazing_standin.scenario",
    "TolerantAsyncClient": "whazing_standin.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
