"""`whazing-gateway run`: mitmproxy in reverse mode with the addon, configured from gateway.yaml.

Users never assemble mitmproxy flags: the listen address, upstream, body streaming and the flow
viewer's binding and password all come from gateway.yaml. `--set` passes extra options through.

mitmweb before 11.1 (the 11.0.2 that Python 3.11 gets) has no password option and no
authentication at all (CVE-2025-23217: anyone who reaches it can change options and run code).
There the viewer is bound to 127.0.0.1 whatever `web.host` says, and the start says so plainly.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys

import structlog

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"
UNAUTHENTICATED_VIEWER = (
    "flow viewer: this mitmproxy ({version}) has no password for mitmweb (CVE-2025-23217): the viewer is "
    "UNAUTHENTICATED, so it listens on 127.0.0.1 only{ignored}. Anyone with a shell on this machine can "
    "use it. Use Python 3.12+ (mitmproxy 12) for a password-protected viewer."
)


def viewer_has_auth(opts) -> bool:
    """Whether this mitmweb can protect its viewer (mitmproxy 11.1+ has `web_password`)."""
    return "web_password" in opts


def mitmproxy_options(settings, web: bool, web_auth: bool = True) -> dict:
    """The mitmproxy options a gateway runs with (pure: tested without starting a proxy).

    `web_auth` False (mitmweb without authentication): the viewer is forced onto loopback and no
    password option is set (that mitmweb would refuse it)."""
    opts = {
        "mode": [f"reverse:{settings.upstream}"],
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        # A sidecar in front of Whazing serves browsers on public addresses.
        "block_global": False,
        # Above this size bodies are streamed through, not held in memory (and not inspected).
        "stream_large_bodies": settings.stream_large_bodies,
        # Connect upstream when a request arrives, not when a client connects: with the upstream
        # down, mitmproxy then answers `502 Bad Gateway` (eager mode closes the connection empty).
        "connection_strategy": "lazy",
        "whazing_config": str(settings.config_path),
    }
    if web:
        opts.update(web_host=settings.web_host if web_auth else LOOPBACK, web_port=settings.web_port,
                    web_open_browser=False,
                    # The comment column shows each flow's events and deliveries in the list itself.
                    web_columns=["tls", "icon", "path", "method", "status", "size", "time", "comment"])
        if settings.web_password and web_auth:
            opts["web_password"] = settings.web_password
    return opts


def show_on_terminal(text: str) -> bool:
    """Write `text` to the controlling terminal, never to a redirected stderr (the log stream).

    True if a terminal took it: stderr itself when it is a tty, else /dev/tty."""
    try:
        if sys.stderr.isatty():
            sys.stderr.write(text)
            sys.stderr.flush()
            return True
    except (OSError, ValueError):
        pass
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(text)
        return True
    except OSError:  # no controlling terminal (a service, a container without -t)
        return False


def unauthenticated_viewer_warning(settings, version: str) -> str:
    """The line printed at start when the viewer cannot be protected."""
    ignored = []
    if settings.web_host != LOOPBACK:
        ignored.append(f"web.host {settings.web_host} ignored")
    if settings.web_password:
        ignored.append("web.password cannot be enforced")
    return UNAUTHENTICATED_VIEWER.format(version=version, ignored=f" ({'; '.join(ignored)})" if ignored else "")


async def _serve(settings, web: bool, extra: list[str]) -> int:
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster
    from mitmproxy.tools.web.master import WebMaster

    from whazing_gateway.edge.running import running_settings
    from whazing_gateway.edge.addon import Gateway

    opts = options.Options()
    if web:
        master: WebMaster | DumpMaster = WebMaster(opts, with_termlog=False)
    else:
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
    master.addons.add(Gateway())
    web_auth = viewer_has_auth(opts)
    values = mitmproxy_options(settings, web, web_auth)
    opts.update(**values)
    if extra:
        opts.set(*extra)
        if web and not web_auth:
            opts.update(web_host=LOOPBACK)  # not even by --set: nothing would protect it
    settings = running_settings(settings, opts)  # what --set changed is what the log says below
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, master.shutdown)
        except (NotImplementedError, RuntimeError):
            pass
    if web and not web_auth:
        from mitmproxy.version import VERSION

        url = f"http://{LOOPBACK}:{settings.web_port}/"
        sys.stderr.write(unauthenticated_viewer_warning(settings, VERSION) + "\n")
        sys.stderr.flush()
        log.warning("flow viewer", url=url, auth="none: this mitmweb has no authentication; loopback only",
                    mitmproxy=VERSION)
    elif web:
        url = f"http://{settings.web_host}:{settings.web_port}/"
        if settings.web_password:
            log.info("flow viewer", url=url, auth="web.password from gateway.yaml")
        else:
            # The random token goes to the terminal only: never to the log stream, which is
            # stderr too and is often collected (journald, docker logs). No terminal, no token.
            token = secrets.token_hex(16)
            opts.update(web_password=token)
            from whazing_gateway.ops.logs import register_secret

            register_secret(token)
            shown = show_on_terminal(f"flow viewer: {url}?token={token}  (random token; set web.password "
                                     f"in gateway.yaml for a fixed one)\n")
            log.info("flow viewer", url=url,
                     auth="random token, printed on the terminal at start" if shown else
                     "random token NOT shown (no terminal): set web.password in gateway.yaml")
    await master.run()
    return 0


def run_command(args) -> int:
    from whazing_gateway.config import ConfigError, load_settings
    from whazing_gateway.ops.logs import configure_logging

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"cannot read {args.config}: {exc}\n")
        return 1
    configure_logging(settings.log_format, settings.log_level)
    if settings.web_password:
        from whazing_gateway.ops.logs import register_secret

        register_secret(settings.web_password)
    try:
        return asyncio.run(_serve(settings, args.web, args.set))
    except KeyboardInterrupt:
        return 0
