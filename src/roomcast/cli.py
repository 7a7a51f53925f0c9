"""The `roomcast` command: `roomcast serve` runs the standalone server; `connect`, `publish`
and `rooms` are clients of a running one."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .client._cli import add_client_commands, run_client_command
from .errors import ConfigError
from .settings import OPTIONS, Settings

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser that remembers its flags, for close-match suggestions; the
    subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: list[str] = []
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.extend(action.option_strings)
        return action

    def unrecognized(self, extras: Sequence[str]) -> str:
        """The error for `extras`, which this parser does not know, naming the closest flags."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        for extra in extras:
            flag = extra.split("=", 1)[0]
            match = difflib.get_close_matches(flag, self.flags, n=1) if flag[:1] == "-" else []
            if match:
                message += f"; {flag}: did you mean {match[0]}?"
        return message


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every `roomcast` subcommand."""
    parser = _Parser(prog="roomcast", description="Room-based real-time messaging over WebSocket.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the roomcast server. Every flag also reads ROOMCAST_<FLAG> "
        "from the environment (e.g. ROOMCAST_BROKER).",
    )
    for opt in OPTIONS:
        serve.add_argument(
            f"--{opt.flag}",
            dest=opt.name,
            metavar=opt.metavar,
            help=opt.help,
            nargs=None if opt.const is None else "?",
            const=opt.const,
        )
    add_client_commands(commands)
    for sub in commands.choices.values():
        sub.set_defaults(subparser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `roomcast` console script; returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # The subcommand answers, with its own usage, rather than the top-level parser.
        args.subparser.error(args.subparser.unrecognized(extras))
    if args.command == "serve":
        try:
            settings = Settings.from_sources({opt.name: getattr(args, opt.name) for opt in OPTIONS})
        except ConfigError as exc:
            parser.exit(2, f"roomcast serve: error: {exc.message}\n")
        from .server import serve

        try:
            serve(settings)
        except ConfigError as exc:
            # What only building the server finds (a key file that cannot be read or parsed).
            parser.exit(2, f"roomcast serve: error: {exc.message}\n")
        return 0
    status = run_client_command(parser, args)
    if status is not None:
        return status
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
