"""The one place the stand-in's aiohttp app is put together: middlewares, socket.io and every
route module (REST, SPA, external API, control API)."""

from __future__ import annotations

from aiohttp import web

from whazing_standin import control, external, routes, spa
from whazing_standin.core import STANDIN_KEY, Standin
from whazing_standin.http_helpers import cors_middleware, error_middleware

ROUTE_MODULES = (routes, spa, external, control)


def build_app(standin: Standin) -> web.Application:
    """REST routes, the SPA's routes, external API, control API and socket.io at /socket.io/."""
    app = web.Application(middlewares=[cors_middleware, error_middleware], client_max_size=64 * 1024 * 1024)
    app[STANDIN_KEY] = standin
    standin.sio.attach(app, socketio_path="socket.io")
    for module in ROUTE_MODULES:
        module.add_routes(app)
    return app
