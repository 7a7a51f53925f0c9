"""`roomcast connect`: a line-based terminal client of one room."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Any, TextIO

import orjson

from . import _prompt_toolkit
from ._client import Client
from ._errors import ClientClosed, ClientError, RequestError
from ._frames import Frame, Welcome
from ._policy import ClientState

__all__ = ["HELP", "Terminal", "run_terminal"]

HELP = """\
type a line to send it to the room; commands:
  /to NAME TEXT   send TEXT to member NAME only
  /who            list the room's members
  /help           show this help
  /quit           leave (so does end of input)"""


class Terminal:
    """Reads lines, sends them, prints what arrives; see :data:`HELP`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._client: Client | None = None
        self._joined = False
        self.failed = False
        """Whether a line could not be sent (refused by the server, or a bad command)."""

    @property
    def client(self) -> Client:
        """The client this terminal drives."""
        if self._client is None:
            raise RuntimeError("attach() a client first")
        return self._client

    def attach(self, client: Client) -> None:
        """Drive `client` (built with this terminal's `on_state` and `on_recovery_failed`)."""
        self._client = client
        client.add_handler("*", self.show)

    def say(self, line: str, *, error: bool = False) -> None:
        """Print one line now."""
        if error and line.startswith("!"):
            self.failed = True
        stream = self.err if error else self.out
        stream.write(line + "\n")
        stream.flush()

    def show(self, frame: Frame) -> None:
        """Print one frame from the server."""
        payload = frame.payload
        if frame.topic in ("presence.join", "presence.leave") and isinstance(payload, dict):
            verb = "joined" if frame.topic == "presence.join" else "left"
            self.say(f"* {payload.get('username')} {verb}")
        elif frame.topic == "error" and isinstance(payload, dict):
            self.say(f"! {payload.get('code')}: {payload.get('message')}", error=True)
        elif frame.sender is not None:
            who = frame.sender if frame.to is None else f"{frame.sender} -> {frame.to}"
            text = payload.get("text") if isinstance(payload, dict) else None
            # a chat message is shown by its text (the demo page adds the time it was sent)
            if frame.topic == "chat" and isinstance(text, str):
                self.say(f"[{frame.room}] {who}: {text}")
            else:
                self.say(f"[{frame.room}] {who} ({frame.topic}): {_json(payload)}")
        else:
            self.say(f"{frame.topic}: {_json(payload)}")

    def on_state(self, state: ClientState) -> None:
        """Print connection changes after the first join."""
        if state is ClientState.RECONNECTING:
            info = self.client.last_close
            why = info.describe() if info else "connection lost"
            self.say(f"* disconnected: {why}; reconnecting", error=True)
        elif state is ClientState.CONNECTED and self._joined:
            welcome = self.client.welcome
            recovered = ", nothing missed" if welcome and welcome.recovered else ""
            self.say(f"* reconnected{recovered}", error=True)
        elif state is ClientState.CONNECTED:
            self._joined = True

    def on_recovery_failed(self, welcome: Welcome) -> None:
        """Say that messages may have been missed."""
        self.say("* messages sent while disconnected could not be recovered", error=True)

    async def command(self, line: str) -> bool:
        """Run one input line; returns False on `/quit`."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        client = self.client
        try:
            if line.startswith("/"):
                name, _, rest = line.partition(" ")
                if name == "/quit":
                    return False
                if name == "/who":
                    members = await client.presence()
                    self.say(f"* members: {', '.join(members)}")
                elif name == "/to":
                    to, _, text = rest.strip().partition(" ")
                    if not to or not text.strip():
                        self.say("! usage: /to NAME TEXT", error=True)
                    else:
                        await client.request("chat", {"text": text.strip()}, to=to)
                        if to != client.username:  # the server echoes only room messages
                            self.say(f"[{client.room}] {client.username} -> {to}: {text.strip()}")
                elif name == "/help":
                    self.say(HELP)
                else:
                    self.say(f"! unknown command {name}; /help lists them", error=True)
            else:
                await client.request("chat", {"text": line})
        except RequestError as exc:
            self.say(f"! {exc.wire_code}: {exc.message}", error=True)
        except ClientClosed:
            raise
        except ClientError as exc:
            self.say(f"! not sent: {exc.message}", error=True)
        return True


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class _PipeLines:
    """Lines of a stream read by a daemon thread (started at the first read), so that a read
    blocked on a terminal never delays the exit; None at the end of input."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[str | None] | None = None

    async def __call__(self) -> str | None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            threading.Thread(
                target=self._read,
                args=(asyncio.get_running_loop(), self._queue),
                daemon=True,
                name="roomcast-stdin",
            ).start()
        return await self._queue.get()

    def _read(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: loop closed
            for line in iter(self._stream.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_terminal(
    url: str,
    *,
    room: str,
    username: str,
    token: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Chat in `room` as `username` until `/quit` or end of input; returns the exit status
    (0, or 1 when the server refused or ended the connection for good, or, with input from a
    pipe, when a line could not be sent).

    In a terminal, with prompt_toolkit installed, the line being typed stays below the
    messages that arrive meanwhile."""
    if stdin is None and out is None and err is None and _prompt_toolkit.usable():
        async with _prompt_toolkit.line_editor("> ") as read:
            # sys.stdout and sys.stderr now print above the prompt
            terminal = Terminal(sys.stdout, sys.stderr)
            return await _chat(terminal, url, room, username, token, read, piped=False)
    stream = stdin or sys.stdin
    terminal = Terminal(out or sys.stdout, err or sys.stderr)
    piped = not stream.isatty()
    return await _chat(terminal, url, room, username, token, _PipeLines(stream), piped=piped)


async def _chat(
    terminal: Terminal,
    url: str,
    room: str,
    username: str,
    token: str | None,
    read: _prompt_toolkit.LineReader,
    *,
    piped: bool,
) -> int:
    client = Client(
        url,
        username=username,
        room=room,
        token=token,
        on_state=terminal.on_state,
        on_recovery_failed=terminal.on_recovery_failed,
    )
    terminal.attach(client)
    try:
        welcome = await client.connect()
    except ClientClosed as exc:
        terminal.say(f"roomcast connect: error: {exc.message}", error=True)
        return 1
    terminal.say(
        f"* joined {welcome.room} as {welcome.username}; "
        f"members: {', '.join(welcome.members)}; /help for commands"
    )
    closed = asyncio.ensure_future(client.wait_closed())
    quit_ = False
    try:
        while True:
            line_task = asyncio.ensure_future(read())
            await asyncio.wait({line_task, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not line_task.done():
                line_task.cancel()
                break
            line = line_task.result()
            if line is None or not await terminal.command(line):
                quit_ = True
                break
    except ClientClosed:
        pass
    finally:
        if not closed.done():
            await client.close()
        info = await closed
    if quit_:
        return 1 if piped and terminal.failed else 0
    terminal.say(f"* disconnected: {info.describe()}", error=True)
    return 1
