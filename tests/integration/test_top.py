"""`roomcast top` in a pseudo-terminal against a two-node Redis cluster: both nodes on
screen, refreshed in place, q and Ctrl-C (SIGINT) quit cleanly; a wrong key exits 1."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import ROOT, Client, RedisProcess, ServerProcess, free_port

StartServer = Callable[..., ServerProcess]
KEY = "top-test-key-0123456789"
WAIT = 15.0
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")


class Terminal:
    """`roomcast top` with a pty as its terminal; the screen output is collected."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast", "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        )
        os.close(slave)
        self.output = b""

    def read_until(self, pattern: str, timeout: float = WAIT) -> str:
        """Collect output until `pattern` matches it (bounded); the text so far."""
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        while not regex.search(text := self.screen()):
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._read(0)):
                raise AssertionError(f"no {pattern!r} on screen:\n{text[-3000:]}")
            self._read(left)
        return text

    def screen(self) -> str:
        """Everything written so far, without terminal control sequences."""
        return ANSI.sub("", self.output.decode(errors="replace"))

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # the child closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def exit_code(self) -> int:
        """Wait for the process to end (reading what it still writes); its exit code."""
        deadline = time.monotonic() + WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.proc.wait(1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


@pytest.fixture
def cluster(start_server: StartServer, redis_server: RedisProcess) -> list[ServerProcess]:
    """Two nodes sharing one Redis, with an API key."""
    flags = ("--broker", redis_server.url, "--api-key", KEY)
    return [start_server("--node-id", name, *flags) for name in ("node-one", "node-two")]


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals opened by a test, closed at its end."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


async def test_top_shows_both_nodes_and_quits_on_q(
    cluster: list[ServerProcess], terminals: list[Terminal]
) -> None:
    """Both nodes are listed with their connections, the screen refreshes, and q exits 0."""
    alice = await Client.connect(cluster[1].ws_url, "alice", "lobby")
    await alice.join()
    top = Terminal("--url", cluster[0].url, "--api-key", KEY, "--interval", "0.2")
    terminals.append(top)
    screen = top.read_until(r"node-one.*node-two")
    assert "roomcast top" in screen
    top.read_until(r"node-two[│\s]+\S+[│\s]+1[│\s]")  # node two's one connection
    refreshes = top.output.count(b"roomcast top")
    top.read_until("roomcast top" + ".*roomcast top" * refreshes)  # refreshed in place
    os.write(top.master, b"q")
    assert top.exit_code() == 0
    await alice.close()


def test_top_quits_on_ctrl_c(cluster: list[ServerProcess], terminals: list[Terminal]) -> None:
    """Ctrl-C (SIGINT) ends top with status 0 and no traceback."""
    top = Terminal("--url", cluster[0].url, "--api-key", KEY)
    terminals.append(top)
    top.read_until(r"node-one.*node-two")
    top.proc.send_signal(signal.SIGINT)
    assert top.exit_code() == 0
    assert b"Traceback" not in top.output


def test_top_with_a_wrong_key_exits_1(
    cluster: list[ServerProcess], terminals: list[Terminal]
) -> None:
    """A refused key ends top with status 1 and the server's reason."""
    top = Terminal("--url", cluster[0].url, "--api-key", "wrong")
    terminals.append(top)
    assert top.exit_code() == 1
    assert b"unauthenticated" in top.output


def test_top_shows_an_unreachable_server_until_q(terminals: list[Terminal]) -> None:
    """A server that does not answer is shown as such (and asked again); q still quits."""
    top = Terminal("--url", f"http://127.0.0.1:{free_port()}", "--interval", "0.2")
    terminals.append(top)
    top.read_until("cannot reach")
    os.write(top.master, b"q")
    assert top.exit_code() == 0


def test_top_against_a_server_with_the_admin_off_exits_1(
    server: ServerProcess, terminals: list[Terminal]
) -> None:
    """A server without the admin (no key, no --admin) answers 404: top says so, exits 1."""
    top = Terminal("--url", server.url)
    terminals.append(top)
    assert top.exit_code() == 1
    assert b"404" in top.output
