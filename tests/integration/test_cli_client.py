"""`roomcast connect` (through a pipe and a pseudo-terminal), `roomcast publish` and
`roomcast rooms`, run as a user runs them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

import pyte
import pytest

from roomcast.cli import main
from roomcast.client import Client, HttpApi
from tests.harness import ROOT, ServerProcess, free_port
from tests.integration.client_support import Collector

StartServer = Callable[..., ServerProcess]
WAIT = 10.0
COLUMNS, ROWS = 100, 60


def roomcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `roomcast ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


class Terminal:
    """`roomcast connect` in a subprocess: its stdin a pipe, or all of it a pseudo-terminal
    read through a terminal emulator (`output` is then the screen, line by line)."""

    def __init__(self, server: ServerProcess, username: str, *, tty: bool = False) -> None:
        args = [
            sys.executable,
            "-m",
            "roomcast",
            "connect",
            server.url.replace("http", "ws"),
            "--room",
            "r1",
            "--username",
            username,
        ]
        self.output = ""
        self._changed = threading.Condition()
        self._screen: pyte.Screen | None = None
        if tty:
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            self._screen = pyte.Screen(COLUMNS, ROWS)
            self._stream = pyte.ByteStream(self._screen)
            # the emulator does not answer cursor position requests
            env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
            self.proc = subprocess.Popen(
                args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env
            )
            os.close(slave)
            self._master: int | None = master
            self._readers = [threading.Thread(target=self._read_fd, args=(master,), daemon=True)]
        else:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            self._master = None
            assert self.proc.stdout is not None
            self._readers = [
                threading.Thread(
                    target=self._read_fd, args=(self.proc.stdout.fileno(),), daemon=True
                )
            ]
        for reader in self._readers:
            reader.start()

    def _read_fd(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:  # a pseudo-terminal's master reads EIO once the child is gone
                data = b""
            with self._changed:
                if not data:
                    self.output += "<eof>"
                    self._changed.notify_all()
                    return
                if self._screen is not None:
                    self._stream.feed(data)
                    lines = [line.rstrip() for line in self._screen.display]
                    self.output = "\n".join(lines).rstrip("\n") + "\n"
                else:
                    self.output += data.decode(errors="replace").replace("\r\n", "\n")
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait until the output matches `pattern`."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (match := regex.search(self.output)):
                left = deadline - time.monotonic()
                if left <= 0 or self.output.endswith("<eof>"):
                    raise AssertionError(f"{pattern!r} not in output:\n{self.output}")
                self._changed.wait(left)
        return match

    def type(self, text: str) -> None:
        """Send input, as typed (pseudo-terminal) or written to the pipe."""
        if self._master is not None:
            os.write(self._master, text.encode())
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def end_input(self) -> None:
        """Close the pipe (end of input)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the exit status."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
        elif self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def terminal(server: ServerProcess, username: str, *, tty: bool = False):  # type: ignore[no-untyped-def]
    term = Terminal(server, username, tty=tty)
    try:
        yield term
    finally:
        term.stop()


async def test_connect_through_a_pipe(server: ServerProcess) -> None:
    """Piped lines are sent (to the room, /to one member), /who answers, errors are shown,
    incoming messages are printed, and end of input leaves with status 1 because lines were
    refused."""
    seen = Collector()
    async with Client(server.url, username="alice", room="r1") as alice:
        alice.on("chat")(seen)
        with terminal(server, "carol") as carol:
            await asyncio.to_thread(carol.wait_for, r"^\* joined r1 as carol; members: ")
            await alice.send("chat", {"text": "hi carol"})
            await asyncio.to_thread(carol.wait_for, r"^\[r1\] alice: hi carol$")
            carol.type("hello\n/to alice psst\n/who\n/to nobody x\n/bogus\n\n")
            carol.end_input()
            assert await asyncio.to_thread(carol.wait) == 1
            out = carol.output
        assert "[r1] carol: hello\n" in out
        assert "[r1] carol -> alice: psst\n" in out
        assert "* members: alice, carol\n" in out or "* members: carol, alice\n" in out
        assert "! member_not_found: " in out
        assert "! unknown command /bogus" in out
        frames = await seen.wait(3)
        assert [(f.sender, f.payload["text"], f.to) for f in frames] == [
            ("alice", "hi carol", None),
            ("carol", "hello", None),
            ("carol", "psst", "alice"),
        ]


async def test_connect_in_a_pseudo_terminal(server: ServerProcess) -> None:
    """In a terminal: presence and API messages are printed as they come; a typed line is
    sent; /quit leaves with status 0."""
    seen = Collector()
    with terminal(server, "carol", tty=True) as carol:
        await asyncio.to_thread(carol.wait_for, r"^\* joined r1 as carol")
        async with Client(server.url, username="bob", room="r1") as bob:
            bob.on("chat")(seen)
            await asyncio.to_thread(carol.wait_for, r"^\* bob joined$")
            await asyncio.to_thread(HttpApi(server.url).publish, "r1", "news", {"n": 1})
            await asyncio.to_thread(carol.wait_for, r'^\[r1\] \$server \(news\): \{"n":1\}$')
            carol.type("typed in a terminal\n")
            frames = await seen.wait(1)
            assert (frames[0].sender, frames[0].payload) == (
                "carol",
                {"text": "typed in a terminal"},
            )
            carol.type("/quit\n")
            assert await asyncio.to_thread(carol.wait) == 0


async def test_connect_pipe_exits_nonzero_when_one_line_is_refused(server: ServerProcess) -> None:
    """One refused line among accepted ones (a `to` nobody) makes the piped run exit 1;
    the same lines without it exit 0."""
    for lines, status in (("a\n/to ghost y\nb\n", 1), ("a\nb\n", 0)):
        with terminal(server, "dave") as dave:
            await asyncio.to_thread(dave.wait_for, r"^\* joined r1 as dave")
            dave.type(lines)
            dave.end_input()
            assert await asyncio.to_thread(dave.wait) == status, dave.output
            assert "[r1] dave: b\n" in dave.output
            assert ("! member_not_found" in dave.output) == (status == 1)


async def test_connect_in_a_terminal_redraws_the_line_being_typed(server: ServerProcess) -> None:
    """A message that arrives while a line is half typed is printed above it, and the
    half-typed line stays on the prompt, where typing goes on."""
    with terminal(server, "carol", tty=True) as carol:
        await asyncio.to_thread(carol.wait_for, r"^>$")
        carol.type("hel")
        await asyncio.to_thread(carol.wait_for, r"^> hel$")
        await asyncio.to_thread(HttpApi(server.url).publish, "r1", "chat", {"text": "hi carol"})
        await asyncio.to_thread(carol.wait_for, r"^\[r1\] \$server: hi carol\n> hel$")
        carol.type("lo\r")
        await asyncio.to_thread(carol.wait_for, r"^\[r1\] carol: hello\n>$")
        carol.type("/quit\r")
        assert await asyncio.to_thread(carol.wait) == 0


async def test_connect_refused_and_kicked_exit_nonzero(server: ServerProcess) -> None:
    """A refused join and a kick both end `roomcast connect` with status 1 and the reason."""
    async with Client(server.url, username="alice", room="r1"):
        with terminal(server, "alice") as refused:
            assert await asyncio.to_thread(refused.wait) == 1
            assert "roomcast connect: error:" in refused.output
            assert "already connected" in refused.output
    with terminal(server, "carol") as carol:
        await asyncio.to_thread(carol.wait_for, r"^\* joined r1 as carol")
        await asyncio.to_thread(HttpApi(server.url).kick, "r1", "carol")
        assert await asyncio.to_thread(carol.wait) == 1
        assert "* disconnected: " in carol.output
        assert "4499" in carol.output


async def test_connect_survives_a_server_restart(start_server: StartServer) -> None:
    """The terminal client says it lost the connection, reconnects to the restarted server,
    says that history was lost, and keeps sending."""
    first = start_server()
    with terminal(first, "carol") as carol:
        await asyncio.to_thread(carol.wait_for, r"^\* joined r1 as carol")
        first.signal(signal.SIGTERM)
        await asyncio.to_thread(carol.wait_for, r"^\* disconnected: .*1012.*; reconnecting$")
        await asyncio.to_thread(first.wait)
        await asyncio.to_thread(start_server, "--port", str(first.port))
        await asyncio.to_thread(carol.wait_for, r"^\* reconnected$", 20)
        await asyncio.to_thread(carol.wait_for, r"could not be recovered")
        carol.type("after the restart\n")
        carol.end_input()
        assert await asyncio.to_thread(carol.wait) == 0
        assert "[r1] carol: after the restart\n" in carol.output


async def test_publish_prints_the_offset(server: ServerProcess) -> None:
    """`roomcast publish` prints the offset; the message reaches the room (and `--to` one
    member); an absent member is an error with status 1."""
    seen = Collector()
    async with Client(server.url, username="alice", room="r1") as alice:
        alice.on("chat")(seen)
        done = await asyncio.to_thread(
            roomcast,
            "publish",
            "--url",
            server.url,
            "--room",
            "r1",
            "--topic",
            "chat",
            "--payload",
            '{"text": "hey"}',
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "1\n", "")
        done = await asyncio.to_thread(
            roomcast,
            "publish",
            "--url",
            server.url,
            "--room",
            "r1",
            "--topic",
            "chat",
            "--payload",
            "[1, 2]",
            "--to",
            "alice",
        )
        assert (done.returncode, done.stdout) == (0, "2\n")
        frames = await seen.wait(2)
        assert [(f.sender, f.payload, f.to) for f in frames] == [
            ("$server", {"text": "hey"}, None),
            ("$server", [1, 2], "alice"),
        ]
        done = await asyncio.to_thread(
            roomcast,
            "publish",
            "--url",
            server.url,
            "--room",
            "r1",
            "--topic",
            "chat",
            "--payload",
            "1",
            "--to",
            "nobody",
        )
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.startswith("roomcast publish: error: HTTP 404: member_not_found: ")


async def test_rooms_lists_rooms_and_members(server: ServerProcess) -> None:
    """`roomcast rooms` prints one line per room with its members, or JSON with --json."""
    async with (
        Client(server.url, username="alice", room="r1"),
        Client(server.url, username="bob", room="r1"),
        Client(server.url, username="carol", room="r2"),
    ):
        done = await asyncio.to_thread(roomcast, "rooms", "--url", server.url)
        assert done.returncode == 0, done.stderr
        assert sorted(done.stdout.splitlines()) == ["r1: alice, bob", "r2: carol"]
        done = await asyncio.to_thread(
            roomcast, "rooms", "--json", env={"ROOMCAST_URL": server.url}
        )
        rooms = {r["roomID"]: sorted(r["members"]) for r in json.loads(done.stdout)["rooms"]}
        assert rooms == {"r1": ["alice", "bob"], "r2": ["carol"]}


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `roomcast ARGS` in this process; returns the status, stdout and stderr."""
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_api_key_and_environment(
    start_server: StartServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the API key the commands fail with 401 and status 1; ROOMCAST_API_KEY and
    ROOMCAST_URL are honoured."""
    server = start_server("--api-key", "k3y")
    status, out, err = run_main(capsys, "rooms", "--url", server.url)
    assert (status, out) == (1, "")
    assert err.startswith("roomcast rooms: error: HTTP 401: unauthenticated: ")
    monkeypatch.setenv("ROOMCAST_URL", server.url)
    monkeypatch.setenv("ROOMCAST_API_KEY", "k3y")
    assert run_main(capsys, "publish", "--room", "r1", "--topic", "t", "--payload", "{}") == (
        0,
        "1\n",
        "",
    )
    assert run_main(capsys, "rooms") == (0, "", "")


def test_usage_and_network_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad JSON is a usage error (status 2); an unreachable server is status 1."""
    url = f"http://127.0.0.1:{free_port()}"
    status, _, err = run_main(
        capsys, "publish", "--url", url, "--room", "r1", "--topic", "t", "--payload", "{x"
    )
    assert status == 2
    assert "--payload is not valid JSON" in err
    status, _, err = run_main(capsys, "rooms", "--url", url)
    assert status == 1
    assert err.startswith(f"roomcast rooms: error: cannot reach {url}: ")
    status, _, err = run_main(capsys, "rooms", "--url", "ftp://example")
    assert status == 2
    assert "not an HTTP URL" in err
    status, _, err = run_main(
        capsys, "connect", url.replace("http", "ws"), "--room", "r1", "--username", "a"
    )
    assert status == 1
    assert "cannot connect" in err
