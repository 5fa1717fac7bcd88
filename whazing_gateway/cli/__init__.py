"""`whazing-gateway`: run, check, schema, replay, deliveries, demo.

Each subcommand lives beside the stage it drives; this module only parses and dispatches,
importing lazily so `check` does not pay for mitmproxy.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whazing-gateway", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the gateway (mitmproxy in reverse mode with the addon)")
    run.add_argument("--config", default="gateway.yaml", help="main config file (default: gateway.yaml)")
    run.add_argument("--web", action="store_true", help="start mitmweb's flow viewer instead of mitmdump")
    run.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                     help="extra mitmproxy option (repeatable)")

    check = sub.add_parser("check", help="validate gateway.yaml and the rules; exit 1 on any error")
    check.add_argument("--config", default="gateway.yaml")

    schema = sub.add_parser("schema", help="print the JSON Schema of gateway.yaml or of rules files (for editors)")
    schema.add_argument("kind", nargs="?", choices=["gateway", "rules"], default="gateway")

    replay = sub.add_parser("replay", help="dry run: what a saved capture would send, sending nothing")
    replay.add_argument("capture", help="a mitmproxy capture (mitmdump -w FILE)")
    replay.add_argument("--config", default="gateway.yaml")
    replay.add_argument("--json", action="store_true", help="one JSON object per line (default: also JSON, indented)")

    dl = sub.add_parser("deliveries", help="inspect and replay deliveries and dead letters")
    dl.add_argument("--config", default="gateway.yaml", help="main config file (before or after the action)")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    for name, helptext in (("list", "list deliveries"), ("purge", "delete finished or dead deliveries"),
                           ("retry", "send dead or pending deliveries again now")):
        a = dl_sub.add_parser(name, help=helptext)
        a.add_argument("ids", nargs="*", help="delivery ids (webhook-id)")
        a.add_argument("--target")
        a.add_argument("--type", dest="event_type")
        a.add_argument("--status", choices=["pending", "delivered", "dead"])
        a.add_argument("--since", help="ISO time or unix seconds")
        a.add_argument("--until", help="ISO time or unix seconds")
        a.add_argument("--limit", type=int, default=100)
        a.add_argument("--json", action="store_true")
        if name == "purge":
            a.add_argument("--yes", action="store_true",
                           help="no question: needed to purge with no filter when not on a terminal")
    show = dl_sub.add_parser("show", help="one delivery with every attempt")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    test = dl_sub.add_parser("test", help="queue Whazing's test body for TARGET (signed, sent by the worker)")
    test.add_argument("target", help="a target name of the rules")
    test.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                      help="wait up to SECONDS for the outcome (exit 1 unless delivered)")
    test.add_argument("--json", action="store_true")
    targets = dl_sub.add_parser("targets", help="per target: healthy / failing / paused, next probe, held")
    targets.add_argument("--json", action="store_true")

    _config_after_action(dl_sub)

    demo = sub.add_parser("demo", help="stand-in Whazing + gateway + a printing receiver + the scenario")
    demo.add_argument("--port", type=int, default=8080, help="gateway listen port")
    demo.add_argument("--web", action="store_true", help="use the flow viewer")
    demo.add_argument("--keep", action="store_true", help="keep running after the scenario")
    return p


def _config_after_action(actions) -> None:
    """Every `deliveries` action also takes --config after it (as docs/delivery.md says);
    SUPPRESS keeps the value given before the action, or the default, when it is not repeated."""
    for parser in actions.choices.values():
        if "--config" not in parser._option_string_actions:
            parser.add_argument("--config", default=argparse.SUPPRESS, help="main config file (default: gateway.yaml)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        from whazing_gateway import __version__

        sys.stdout.write(f"whazing-gateway {__version__}\n")
        return 0
    if args.command == "run":
        from whazing_gateway.edge.runner import run_command

        return run_command(args)
    if args.command == "check":
        from whazing_gateway.config import check_command

        return check_command(args)
    if args.command == "schema":
        from whazing_gateway.config.schema import schema_command

        return schema_command(args)
    if args.command == "replay":
        from whazing_gateway.cli.replay import replay_command

        return replay_command(args)
    if args.command == "deliveries":
        from whazing_gateway.outbox.admin import deliveries_command

        return deliveries_command(args)
    if args.command == "demo":
        try:
            import whazing_standin.server  # noqa: F401  (the stand-in itself: PyJWT)
            from whazing_standin.demo import demo_command
        except ImportError as exc:  # the stand-in and PyJWT are not part of a production install
            sys.stderr.write(f"the demo needs the Whazing stand-in ({exc.name} is missing): "
                             "pip install 'whazing-gateway[demo]'\n")
            return 1
        return demo_command(args)
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
