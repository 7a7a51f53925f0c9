"""`roomcast connect`, `publish`, `rooms` and `top`: the client side of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from ._errors import ApiError
from ._http import HttpApi

__all__ = ["add_client_commands", "run_client_command"]

DEFAULT_URL = "http://127.0.0.1:8000"


def add_client_commands(commands: Any) -> None:
    """Add `connect`, `publish`, `rooms` and `top` to the `roomcast` subcommands."""
    connect = commands.add_parser(
        "connect",
        help="chat in a room from the terminal",
        description="Join a room and chat: each line typed is sent to the room (topic chat); "
        "/to NAME TEXT sends to one member, /who lists the members, /quit leaves. "
        "With input from a pipe, every line is sent, then the client leaves.",
    )
    connect.add_argument("url", metavar="URL", help="the server, ws://HOST:PORT")
    connect.add_argument("--room", required=True, help="the room id")
    connect.add_argument("--username", required=True, help="your name in the room")
    connect.add_argument(
        "--token",
        default=os.environ.get("ROOMCAST_TOKEN"),
        help="a JWT when the server requires one (env ROOMCAST_TOKEN)",
    )
    for name, text in (
        ("publish", "publish a message through the HTTP API; prints its offset"),
        ("rooms", "list the rooms and their members through the HTTP API"),
        ("top", "watch the cluster's nodes, rooms and closes, refreshed in place (q quits)"),
    ):
        sub = commands.add_parser(name, help=text, description=text + ".")
        sub.add_argument(
            "--url",
            metavar="URL",
            default=os.environ.get("ROOMCAST_URL") or DEFAULT_URL,
            help=f"the server's HTTP URL (env ROOMCAST_URL; default {DEFAULT_URL})",
        )
        sub.add_argument(
            "--api-key",
            metavar="KEY",
            default=os.environ.get("ROOMCAST_API_KEY"),
            help="the server's API key (env ROOMCAST_API_KEY)",
        )
        if name == "publish":
            sub.add_argument("--room", required=True, help="the room id")
            sub.add_argument("--topic", required=True, help="the message topic")
            sub.add_argument(
                "--payload",
                required=True,
                metavar="JSON",
                help='the payload as JSON, e.g. \'{"text": "hi"}\'',
            )
            sub.add_argument("--to", default=None, help="send to this member only")
        elif name == "top":
            sub.add_argument(
                "--interval",
                type=float,
                default=1.0,
                metavar="SECONDS",
                help="seconds between refreshes (default 1)",
            )
        else:
            sub.add_argument("--json", action="store_true", help="print the raw JSON answer")


def run_client_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | None:
    """Run `connect`, `publish` or `rooms`; None for any other command."""
    if args.command == "connect":
        from ._terminal import run_terminal

        try:
            return asyncio.run(
                run_terminal(args.url, room=args.room, username=args.username, token=args.token)
            )
        except ValueError as exc:
            parser.exit(2, f"roomcast connect: error: {exc}\n")
        except KeyboardInterrupt:
            return 130
    if args.command not in ("publish", "rooms", "top"):
        return None
    prog = f"roomcast {args.command}"
    try:
        api = HttpApi(args.url, api_key=args.api_key)
    except ValueError as exc:
        parser.exit(2, f"{prog}: error: {exc}\n")
    if args.command == "top":
        from ._top import run_top

        if not args.interval > 0:
            parser.exit(2, f"{prog}: error: --interval must be > 0\n")
        return run_top(api, args.interval)
    try:
        if args.command == "publish":
            try:
                payload = json.loads(args.payload)
            except ValueError as exc:
                parser.exit(2, f"{prog}: error: --payload is not valid JSON: {exc}\n")
            print(api.publish(args.room, args.topic, payload, to=args.to))
        else:
            rooms = api.rooms()
            if args.json:
                print(json.dumps({"rooms": rooms}))
            for room in [] if args.json else rooms:
                print(f"{room['roomID']}: {', '.join(room['members'])}")
    except ApiError as exc:
        sys.stderr.write(f"{prog}: error: {exc.message}\n")
        return 1
    return 0
