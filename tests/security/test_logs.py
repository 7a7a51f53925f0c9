"""Issue 14 items 9 and 10: logged values cannot carry terminal escapes, refusals cannot flood
the log, and the WebSocket layer's lines take roomcast's format."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable

import orjson

from tests.harness import RECV_TIMEOUT, Client, ServerProcess
from tests.integration.test_logging import spawn


async def _wait_for_line(server: ServerProcess, text: str) -> list[str]:
    """Wait (bounded) until a log line holds `text`; the lines so far."""
    assert server.log is not None
    await asyncio.to_thread(server.log.wait_for, re.escape(text), RECV_TIMEOUT)
    return list(server.log.lines)


async def test_control_characters_are_escaped_in_the_log(server: ServerProcess) -> None:
    """A topic with ESC, BEL and NUL, published through the API, is logged escaped."""
    topic = "\x1b[2Jclear\x07\x00"
    with server.http() as http:
        response = http.post("/api/v1/rooms/esc-room/messages", json={"topic": topic, "payload": 1})
    assert response.status_code == 202
    lines = await _wait_for_line(server, "api.published")
    line = next(line for line in lines if "api.published" in line)
    assert not any(c in line for c in "\x1b\x07\x00")
    assert "\\x1b[2Jclear\\x07\\x00" in line


async def test_refusals_are_logged_once_per_interval_with_a_count(
    start_server: Callable[..., ServerProcess],
) -> None:
    """200 refused frames: every one gets its error frame, the log gets one line for the
    first and, when the connection leaves, one with the count of the others."""
    server = start_server("--rate-limit", "off")
    client = await Client.connect(server.ws_url, "noisy", "noisy-room")
    await client.join()
    for _ in range(200):
        client.ws.protocol.send_text(b"not json")
    client.ws.send_data()
    for _ in range(200):
        assert (await client.recv())["payload"]["code"] == "invalid_json"
    await client.close()
    lines = await _wait_for_line(server, "unlogged=199")
    assert len([line for line in lines if " frame.rejected " in line]) == 2


async def test_invalid_utf8_logs_no_traceback_and_json_stays_json() -> None:
    """Under --log-format json, frames that are not UTF-8 (1007) add no traceback and no
    line outside the format: every line of the log is one JSON object."""
    proc, log = spawn("--log-format", "json")
    try:
        url = log.wait_for(r'"event":"roomcast.ready","url":"(http://[^"]+)"').group(1)
        for _ in range(3):
            client = await Client.connect(url.replace("http", "ws") + "/api/v1/ws", "u", "utf")
            await client.join()
            client.ws.protocol.send_text(b'{"topic":"chat","payload":"\xff"}')
            client.ws.send_data()
            assert (await client.closed())[0] == 1007
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(15)
        log.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
    assert status == 0
    lines = [line for line in log.lines if line != "<eof>"]
    assert lines
    for line in lines:
        assert isinstance(orjson.loads(line), dict), line
    assert not any("Traceback" in line for line in lines)


async def test_http_layer_lines_take_roomcasts_format() -> None:
    """A request the HTTP layer cannot parse makes uvicorn log a warning: under --log-format
    json it is a JSON line like roomcast's own (event `uvicorn.error.log`)."""
    proc, log = spawn("--log-format", "json")
    try:
        url = log.wait_for(r'"event":"roomcast.ready","url":"(http://[^"]+)"').group(1)
        port = int(url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.to_thread(log.wait_for, "Invalid HTTP request", RECV_TIMEOUT)
        writer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
    (line,) = [line for line in log.lines if "Invalid HTTP request" in line]
    record = orjson.loads(line)
    assert record["event"] == "uvicorn.error.log"
    assert record["level"] == "warning"
