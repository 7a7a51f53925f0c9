"""Structured log lines: one per connection lifecycle event, never a payload or a token."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable

import orjson

from tests.harness import RECV_TIMEOUT, ROOT, Client, LogReader, ServerProcess


def fields(line: str) -> dict[str, str]:
    """The key=value fields of a text log line (quoted values unquoted)."""
    out: dict[str, str] = {}
    for key, quoted, bare in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', line):
        out[key] = orjson.loads(f'"{quoted}"') if quoted else bare
    return out


async def lines_with(server: ServerProcess, event: str, count: int) -> list[str]:
    """Wait (bounded) until `count` log lines of `event` were written; return them."""
    assert server.log is not None
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            found = [line for line in server.log.lines if f" {event} " in line + " "]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)  # polling a pipe reader, bounded


async def test_lifecycle_lines_and_no_payload_or_token(
    start_server: Callable[..., ServerProcess],
) -> None:
    """joined, left and refused are each one line with room, username and connection_id;
    the payloads and tokens clients send never reach the log."""
    server = start_server()
    secret_payload = "payload-" + os.urandom(8).hex()
    secret_token = "token-" + os.urandom(8).hex()
    alice = await Client.connect(server.ws_url, "alice", "logroom", token=secret_token)
    welcome = (await alice.join())["payload"]
    bob = await Client.connect(
        server.ws_url, "bob", "logroom", headers={"Authorization": f"Bearer {secret_token}"}
    )
    await bob.join()
    await alice.send({"topic": "chat", "payload": {"text": secret_payload}, "id": 1})
    await alice.send({"topic": "chat", "payload": secret_payload, "to": "nobody", "id": 2})
    await alice.send('{"topic": "chat", "payload": "' + secret_payload + '"')  # not JSON
    await alice.send({"topic": "$bad", "payload": secret_payload})
    await alice.send({"topic": "ping", "payload": secret_payload})
    await alice.recv_topic("pong")
    with server.http() as http:
        http.post("/api/v1/rooms/logroom/messages", json={"topic": "t", "payload": secret_payload})
    dup = await Client.connect(server.ws_url, "alice", "logroom", token=secret_token)
    assert (await dup.closed())[0] == 4409
    await alice.close()
    await bob.close()

    joined = await lines_with(server, "connection.joined", 2)
    left = await lines_with(server, "connection.left", 2)
    refused = await lines_with(server, "connection.refused", 1)
    assert len(joined) == 2
    assert len(left) == 2
    assert len(refused) == 1
    alice_joined = [fields(line) for line in joined if "username=alice" in line]
    assert len(alice_joined) == 1
    assert alice_joined[0]["room"] == "logroom"
    assert alice_joined[0]["connection_id"] == welcome["connectionId"]
    alice_left = [fields(line) for line in left if "username=alice" in line]
    assert len(alice_left) == 1
    assert alice_left[0]["connection_id"] == welcome["connectionId"]
    assert alice_left[0]["room"] == "logroom"
    refusal = fields(refused[0])
    assert refusal["room"] == "logroom"
    assert refusal["username"] == "alice"
    assert refusal["connection_id"]
    assert refusal["connection_id"] != welcome["connectionId"]
    assert refusal["close_code"] == "4409"

    assert server.log is not None
    text = "\n".join(server.log.lines)
    assert secret_payload not in text
    assert secret_token not in text


async def test_refusal_of_bad_username_is_logged_escaped(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A refused username with control characters is logged on one line, escaped."""
    server = start_server()
    client = await Client.connect(server.ws_url, "evil\nforged line", "r1")
    assert (await client.closed())[0] == 4400
    (line,) = await lines_with(server, "connection.refused", 1)
    assert fields(line)["close_code"] == "4400"
    assert server.log is not None
    assert not any(line.startswith("forged line") for line in server.log.lines)


def spawn(*args: str) -> tuple[subprocess.Popen[bytes], LogReader]:
    """Start `roomcast serve --port 0 *args` (its ready line is not the harness's text one)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    return proc, LogReader(proc.stderr)


async def test_json_log_format() -> None:
    """With --log-format json every line is a JSON object with event and fields."""
    proc, log = spawn("--log-format", "json")
    try:
        url = log.wait_for(r'"event":"roomcast.ready","url":"(http://[^"]+)"').group(1)
        client = await Client.connect(url.replace("http", "ws") + "/api/v1/ws", "alice", "r1")
        connection_id = (await client.join())["payload"]["connectionId"]
        await client.close()
        await asyncio.to_thread(log.wait_for, '"event":"connection.left"', RECV_TIMEOUT)
    finally:
        proc.terminate()
        proc.wait(10)
        log.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
    records = [orjson.loads(line) for line in log.lines if line != "<eof>"]
    (joined,) = [r for r in records if r["event"] == "connection.joined"]
    assert joined["room"] == "r1"
    assert joined["username"] == "alice"
    assert joined["connection_id"] == connection_id
    assert joined["level"] == "info"
    assert any(r["event"] == "node.stopped" for r in records)
