"""`roomcast top`: the admin page's cluster view in a terminal, refreshed in place (Rich)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from ._errors import ApiError
from ._http import HttpApi

__all__ = ["run_top"]

_FATAL = (401, 403, 404)
"""Answers that no retry mends: a wrong key, a key-less API far away, the admin turned off."""


def run_top(api: HttpApi, interval: float = 1.0) -> int:
    """Show the cluster every `interval` seconds until q, Ctrl-C or a fatal answer.

    Returns:
        The exit status: 0 after q or Ctrl-C, 1 when the server refuses (wrong key, admin off).
    """
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        sys.stderr.write("roomcast top: error: needs Rich: pip install 'roomcast[top]'\n")
        return 2
    console = Console()
    keys = sys.stdin if sys.stdin.isatty() else None
    try:
        with _keys_unbuffered(keys), Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                try:
                    view, problem = api.cluster_stats(), None
                except ApiError as exc:
                    if exc.status in _FATAL:
                        live.stop()
                        sys.stderr.write(f"roomcast top: error: {exc.message}\n")
                        return 1
                    view, problem = None, exc.message
                live.update(render(view, api.url, problem), refresh=True)
                if _quit_within(keys, interval):
                    return 0
    except KeyboardInterrupt:
        return 0


@contextlib.contextmanager
def _keys_unbuffered(stream: Any) -> Iterator[None]:
    """Let single key presses through (q) while Ctrl-C still interrupts."""
    if stream is None:
        yield
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_within(stream: Any, seconds: float) -> bool:
    """Wait `seconds` for a key; True when it was q."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stream is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            key = os.read(stream.fileno(), 1)
            if key in (b"q", b"Q", b""):
                return True
    return False


def render(view: dict[str, Any] | None, url: str, problem: str | None = None) -> Any:
    """The screen for one cluster view (None when the server could not be asked)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text.assemble(("roomcast top ", "bold"), (url, "cyan"), "   q or Ctrl-C quits")
    if view is None:
        return Group(header, Text(problem or "no answer yet", style="red"))
    totals = view["totals"]
    summary = Text(
        f"{totals['nodes']} nodes   {totals['connections']} connections   "
        f"{totals['in']} frames in/s   {totals['out']} frames out/s   "
        f"{totals['published']} messages/s"
    )
    nodes = Table("node", "uptime", "connections", "rooms", "in/s", "out/s", "broker")
    nodes.title = "Nodes"
    for node in view["nodes"]:
        broker = Text("ok", "green") if node.get("broker") else Text("unavailable", "bold red")
        nodes.add_row(
            str(node["node"]),
            _duration(float(node.get("uptime", 0))),
            str(node["connections"]),
            str(node["rooms"]),
            str(node["in"]),
            str(node["out"]),
            broker,
        )
    rooms = Table("room", "members", "msg/s", title="Busiest rooms")
    for room in view["rooms"][:10]:
        rooms.add_row(str(room["roomID"]), str(room["members"]), str(room["rate"]))
    closes = Table("code", "closes", title="Server closes by code")
    for code, count in view["disconnects"].items():
        closes.add_row(code, str(count))
    parts: list[Any] = [header, summary, nodes, rooms, closes]
    if problem:
        parts.append(Text(problem, style="red"))
    return Group(*parts)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
