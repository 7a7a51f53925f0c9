"""The `roomcast` command: `roomcast serve` runs the standalone server; `connect`, `publish`
and `rooms` are clients of a running one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .client._cli import add_client_commands, run_client_command
from .errors import ConfigError
from .settings import OPTIONS, Settings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `roomcast` subcommand."""
    parser = argparse.ArgumentParser(
        prog="roomcast", description="Room-based real-time messaging over WebSocket."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the roomcast server. Every flag also reads ROOMCAST_<FLAG> "
        "from the environment (e.g. ROOMCAST_BROKER).",
    )
    for opt in OPTIONS:
        serve.add_argument(f"--{opt.flag}", dest=opt.name, metavar=opt.metavar, help=opt.help)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `roomcast` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = Settings.from_sources({opt.name: getattr(args, opt.name) for opt in OPTIONS})
        except ConfigError as exc:
            parser.exit(2, f"roomcast serve: error: {exc.message}\n")
        from .server import serve

        serve(settings)
        return 0
    status = run_client_command(parser, args)
    if status is not None:
        return status
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
