"""What every route module of the stand-in shares: Express-like JSON answers, the error and
CORS middlewares, the bearer check, body and multipart readers.

Route modules import from here and from `core`; none imports another route module, and
`app.build_app` is the one place that puts them together.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import structlog
from aiohttp import BodyPartReader, web

from whazing_standin import auth
from whazing_standin.core import STANDIN_KEY, Standin, dumps
from whazing_standin.services import ServiceError

log = structlog.get_logger(__name__)

# The `cors` middleware's defaults, as the real backend uses it (`app.use(cors())`).
CORS_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"
SOCKET_IO_PATH = "/socket.io/"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def error(message: str, status: int) -> web.Response:
    return json_response({"error": message}, status)


def preflight(request: web.Request) -> web.Response:
    """`cors()` answering an OPTIONS: 204, any origin, its default methods, the asked headers."""
    resp = web.Response(status=204)
    resp.headers["Access-Control-Allow-Origin"] = "*"
    resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    resp.headers["Vary"] = "Access-Control-Request-Headers"
    asked = request.headers.get("Access-Control-Request-Headers")
    if asked:
        resp.headers["Access-Control-Allow-Headers"] = asked
    return resp  # cors() also sets Content-Length: 0; aiohttp, per RFC 9110, sends none on a 204


@web.middleware
async def cors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Like Express's `cors()` with its defaults, on every route but socket.io's (which the real
    server answers before Express sees it, with its own CORS options)."""
    if request.path.startswith(SOCKET_IO_PATH):
        return await handler(request)
    if request.method == "OPTIONS":
        return preflight(request)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        exc.headers["Access-Control-Allow-Origin"] = "*"
        raise
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """AppError handling: `{"error": "<code>"}` with the error's status."""
    try:
        return await handler(request)
    except auth.AuthError as exc:
        return error(exc.message, exc.status)
    except ServiceError as exc:
        return error(exc.code, exc.status)
    except (ValueError, TypeError, KeyError) as exc:
        log.info("standin.bad_request", path=request.path, error=repr(exc))
        return error("ERR_BAD_REQUEST", 400)


def standin_of(request: web.Request) -> Standin:
    return request.app[STANDIN_KEY]


def principal(request: web.Request) -> auth.Principal:
    return auth.principal_from_header(request.headers.get("Authorization"))


async def body_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.json()
    return data if isinstance(data, dict) else {}


def opt_int(v: Any) -> int | None:
    return None if v in (None, "", "null") else int(v)


def media_type(content_type: str) -> str:
    major = (content_type or "application/octet-stream").split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


async def read_send_form(st: Standin, request: web.Request, file_field: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """JSON or multipart; the `file_field` parts are kept in memory and served under /public/."""
    if not (request.content_type or "").startswith("multipart/"):
        return await body_json(request), []
    fields: dict[str, Any] = {}
    files: list[tuple[str, str]] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.filename and part.name == file_field:
            content = await part.read()
            name = f"{len(st.media) + 1:04d}-{part.filename}"
            ctype = part.headers.get("Content-Type") or mimetypes.guess_type(part.filename)[0] or ""
            st.media[name] = (ctype, bytes(content))
            files.append((name, ctype))
        elif part.filename:
            await part.read()  # a file under another field name: not a media of this call
        elif part.name:
            fields[part.name] = await part.text()
    return fields, files
