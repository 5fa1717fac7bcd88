"""`python -m whazing_standin [--host 127.0.0.1] [--port 3000] [--no-auth-error-quirk]`."""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from whazing_standin.server import start_standin

log = structlog.get_logger(__name__)


async def _serve(args: argparse.Namespace) -> None:
    server = await start_standin(args.host, args.port, auth_error_quirk=not args.no_auth_error_quirk,
                                 backend_url=args.backend_url)
    sys.stdout.write(f"whazing stand-in listening on {server.url}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m whazing_standin", description="Whazing backend stand-in")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--backend-url", default=None, help="base of media URLs (default: the listen URL)")
    p.add_argument("--no-auth-error-quirk", action="store_true",
                   help="do not send the 44 'authentication error' after a valid CONNECT")
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
