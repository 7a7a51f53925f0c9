"""Every example of the Python guide in docs/clients.md is the file it names, and runs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from roomcast.client import Client, HttpApi
from tests.harness import ROOT, ServerProcess
from tests.integration.client_support import Collector

StartServer = Callable[..., ServerProcess]
DOC = Path(ROOT) / "docs" / "clients.md"
BLOCK = re.compile(r"(?:<!-- (example|output): (\S+) -->\n)?```(\w*)\n(.*?)```", re.DOTALL)
WAIT = 15.0


def python_section() -> str:
    text = DOC.read_text()
    start = text.index("\n## Python client\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def blocks() -> list[tuple[str | None, str | None, str, str]]:
    """(marker kind, marker target, language, code) of each fenced block of the section."""
    return [(m[1], m[2], m[3], m[4]) for m in BLOCK.finditer(python_section())]


def example(name: str) -> str:
    return next(code for kind, target, _, code in blocks() if kind == "example" and target == name)


def output_of(name: str) -> str:
    return next(code for kind, target, _, code in blocks() if kind == "output" and target == name)


def test_every_example_is_marked_and_matches_its_file() -> None:
    """Each python or sh block is a marked example; an example file's block is the file."""
    found = blocks()
    assert len(found) >= 6
    for kind, target, lang, code in found:
        if lang == "text":
            continue
        assert kind == "example", f"unmarked {lang} block:\n{code}"
        assert target is not None
        if target != "shell":
            assert code == (Path(ROOT) / target).read_text(), f"{target} differs from the doc"


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_chat_example_prints_what_the_doc_shows(server: ServerProcess) -> None:
    """examples/client_chat.py prints exactly the output shown in the guide."""
    done = run_example("examples/client_chat.py", server.url.replace("http", "ws"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == output_of("examples/client_chat.py")


async def test_follow_example(server: ServerProcess) -> None:
    """examples/client_follow.py prints presence and messages until a `stop` message."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/client_follow.py",
        server.url.replace("http", "ws"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(WAIT):
            assert await proc.stdout.readline() == b"state: connecting\n"
            assert await proc.stdout.readline() == b"state: connected\n"
            async with Client(server.url, username="bob", room="lobby"):
                assert await proc.stdout.readline() == b"presence.join bob\n"
            assert await proc.stdout.readline() == b"presence.leave bob\n"
            api = HttpApi(server.url)
            await asyncio.to_thread(api.publish, "lobby", "news", {"headline": "hi"})
            await asyncio.to_thread(api.publish, "lobby", "stop", {})
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert rest.decode() == "1 $server news: {'headline': 'hi'}\nstate: closed\n"


def test_tokens_example(start_server: StartServer) -> None:
    """examples/client_tokens.py outlives its first token on one connection."""
    secret = "docs-example-secret-long-enough-for-hs256-0123456789"
    server = start_server("--jwt-secret", secret, "--jwt-leeway", "0")
    done = run_example(
        "examples/client_tokens.py",
        server.url.replace("http", "ws"),
        env={"ROOMCAST_JWT_SECRET": secret},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "still connected: True - tokens issued: 2\noffset: 1\n"


def test_http_api_example(server: ServerProcess) -> None:
    """examples/client_http_api.py publishes, lists, reads history and reports an error."""
    done = run_example("examples/client_http_api.py", server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "published at offset 1",
        "rooms: []",
        "lobby members: []",
        "history: [{'headline': 'roomcast is up'}]",
        "refused: 404 member_not_found",
    ]


async def test_shell_example(server: ServerProcess) -> None:
    """The shell example runs as written (with the test server's address)."""
    seen = Collector()
    script = example("shell").replace("ws://127.0.0.1:8000", server.url.replace("http", "ws"))
    env = {
        **os.environ,
        "ROOMCAST_URL": server.url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    async with Client(server.url, username="alice", room="lobby") as alice:
        alice.on("chat")(seen)
        done = await asyncio.to_thread(
            subprocess.run,
            ["sh", "-e", "-c", script],
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=ROOT,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        frames = await seen.wait(2)
    assert [(f.sender, f.payload["text"]) for f in frames] == [
        ("deploybot", "deploy finished"),
        ("$server", "build 42 is green"),
    ]
    lines = done.stdout.splitlines()
    assert lines[-2:] == [
        "not delivered",
        json.dumps({"rooms": [{"roomID": "lobby", "members": ["alice"]}]}),
    ]
    assert "roomcast publish: error: HTTP 404: member_not_found" in done.stderr
