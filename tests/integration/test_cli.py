"""PROTOCOL section 6: `roomcast serve` flags, ROOMCAST_* variables and the ready line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.harness import READY, ROOT, Client, ServerProcess

BAD_FLAGS = {
    "unknown flag": (["--bogus"], "--bogus"),
    "port not a number": (["--port", "abc"], "--port"),
    "port too high": (["--port", "70000"], "port"),
    "unknown broker": (["--broker", "foo://"], "broker"),
    "bad on-duplicate": (["--on-duplicate", "x"], "on-duplicate"),
    "negative history-size": (["--history-size", "-1"], "history-size"),
    "workers with memory": (["--workers", "2"], "redis://"),
    "bad relay": (["--relay", "maybe"], "--relay"),
    "flag without value": (["--port"], "--port"),
    "negative presence-window": (["--presence-window", "-0.01"], "presence-window"),
    "presence-window over 1 s": (["--presence-window", "2"], "presence-window"),
    "infinite history-ttl": (["--history-ttl", "inf"], "--history-ttl"),
    "history-ttl not a number (NaN)": (["--history-ttl", "nan"], "--history-ttl"),
    "history-ttl past ten years": (["--history-ttl", "1e20"], "history-ttl"),
    "NaN presence-ttl": (["--presence-ttl", "nan"], "--presence-ttl"),
    # Read only as the server is built: still exit 2 and a message, not a traceback.
    "missing jwt-public-key file": (
        ["--jwt-public-key", "/nonexistent/key.pem"],
        "--jwt-public-key",
    ),
    "jwt-public-key not a key": (["--jwt-public-key", __file__], "--jwt-public-key"),
}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m roomcast` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(("args", "mention"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flag_exits_nonzero_with_message(args: list[str], mention: str) -> None:
    """A bad flag exits with status 2 and an error on stderr naming what was wrong."""
    result = run_cli("serve", *args)
    assert result.returncode == 2
    assert "error" in result.stderr
    assert mention in result.stderr
    assert "Traceback" not in result.stderr
    assert READY.search(result.stderr) is None


def test_bad_environment_value_names_the_variable() -> None:
    """A bad ROOMCAST_* value exits with status 2 and names the variable."""
    result = run_cli("serve", env={"ROOMCAST_HISTORY_SIZE": "lots"})
    assert result.returncode == 2
    assert "ROOMCAST_HISTORY_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_usage() -> None:
    """`roomcast` without a command exits non-zero with the usage."""
    result = run_cli()
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_help_lists_every_flag() -> None:
    """`roomcast serve --help` lists the contract's flags and exits 0."""
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--broker",
        "--node-id",
        "--jwt-secret",
        "--jwt-public-key",
        "--api-key",
        "--allowed-origins",
        "--history-size",
        "--history-ttl",
        "--max-message-size",
        "--on-duplicate",
        "--workers",
    ):
        assert flag in result.stdout


def test_ready_line(start_server: Callable[..., ServerProcess]) -> None:
    """The server logs one ready line with its URL, and the URL answers."""
    server = start_server("--node-id", "n-ready")
    assert server.log is not None
    ready = [line for line in server.log.lines if "roomcast.ready" in line]
    assert len(ready) == 1
    assert "node_id=n-ready" in ready[0]
    assert f"url=http://127.0.0.1:{server.port}" in ready[0]
    assert httpx.get(f"{server.url}/healthz", timeout=5).json()["node"] == "n-ready"


async def test_env_max_message_size_is_honoured(
    start_server: Callable[..., ServerProcess],
) -> None:
    """ROOMCAST_MAX_MESSAGE_SIZE sets the frame limit (1009 above it)."""
    server = start_server(env={"ROOMCAST_MAX_MESSAGE_SIZE": "200"})
    client = await Client.connect(server.ws_url, "alice", "r1")
    await client.join()
    await client.send({"topic": "t", "payload": "x" * 100})
    assert (await client.recv())["payload"] == "x" * 100
    await client.send({"topic": "t", "payload": "x" * 300})
    code, _ = await client.closed()
    assert code == 1009


async def test_env_values_and_flag_precedence(start_server: Callable[..., ServerProcess]) -> None:
    """ROOMCAST_* variables are read (node id, on-duplicate, relay); a flag wins over one."""
    server = start_server(
        "--node-id",
        "from-flag",
        env={
            "ROOMCAST_NODE_ID": "from-env",
            "ROOMCAST_RELAY": "false",
            "ROOMCAST_ON_DUPLICATE": "replace",
        },
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        assert (await http.get("/healthz")).json()["node"] == "from-flag"
    old = await Client.connect(server.ws_url, "alice", "r1")
    await old.join()
    new = await Client.connect(server.ws_url, "alice", "r1")
    await new.join()
    assert (await old.closed())[0] == 4409
    await new.send({"topic": "chat", "payload": 1})
    assert (await new.recv())["payload"]["code"] == "unknown_topic"
    await new.close()


def test_env_api_key_is_honoured(start_server: Callable[..., ServerProcess]) -> None:
    """ROOMCAST_API_KEY turns the API key check on."""
    server = start_server(env={"ROOMCAST_API_KEY": "k1"})
    with server.http() as http:
        assert http.get("/api/v1/rooms").status_code == 401
        assert http.get("/api/v1/rooms", headers={"authorization": "Bearer k1"}).status_code == 200


def test_version() -> None:
    """`roomcast --version` prints the package's version and exits 0."""
    from roomcast import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"roomcast {__version__}"


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (["serve", "--prot", "8001"], "usage: roomcast serve", "--prot: did you mean --port?"),
        (["serve", "--brokr=memory://"], "usage: roomcast serve", "did you mean --broker?"),
        (["rooms", "--jsn"], "usage: roomcast rooms", "--jsn: did you mean --json?"),
    ],
)
def test_misspelt_flag_is_answered_by_the_subcommand(
    args: list[str], usage: str, hint: str
) -> None:
    """A misspelt flag gets the subcommand's usage, its error and the closest flag; status 2."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(usage)
    prog = " ".join(usage.split()[1:3])
    assert f"{prog}: error: unrecognized arguments: {' '.join(args[1:])}" in result.stderr
    assert hint in result.stderr


def test_unrelated_argument_gets_no_hint() -> None:
    """An argument like no flag is refused without a suggestion."""
    result = run_cli("serve", "stray")
    assert result.returncode == 2
    assert "roomcast serve: error: unrecognized arguments: stray\n" in result.stderr
    assert "did you mean" not in result.stderr


def test_connect_loads_no_server_stack(shared_server: ServerProcess) -> None:
    """`roomcast connect` imports no Starlette, uvicorn, Redis or Prometheus client."""
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "roomcast",
            "connect",
            shared_server.ws_url.split("/api/")[0],
            "--room",
            "imports",
            "--username",
            "alice",
        ],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[imports] alice: hello" in result.stdout
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "websockets" in imported
    assert imported.isdisjoint({"starlette", "uvicorn", "redis", "prometheus_client"})
