"""PROTOCOL lines found uncovered by an audit of the running server against the contract."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import Client, ServerProcess


async def test_parser_refusals_send_one_error_frame_before_1009_and_1007(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A frame over --max-message-size (1009) or not UTF-8 (1007) gets one error frame first."""
    server = start_server("--max-message-size", "1024")
    big = await Client.connect(server.ws_url, "alice", "audit-1009")
    await big.join()
    await big.send({"topic": "chat", "payload": "€" * 400})  # 400 characters, 1200 bytes
    code, frames = await big.closed()
    assert code == 1009
    assert [f["topic"] for f in frames] == ["error"]
    assert frames[0]["payload"]["code"] == "message_too_big"
    assert frames[0]["payload"]["message"]

    bad = await Client.connect(server.ws_url, "bob", "audit-1007")
    await bad.join()
    bad.ws.protocol.send_text(b'{"topic":"chat","payload":"\xff\xfe"}')
    bad.ws.send_data()
    code, frames = await bad.closed()
    assert code == 1007
    assert [f["topic"] for f in frames] == ["error"]
    assert frames[0]["payload"]["code"] == "invalid_frame"
    assert frames[0]["payload"]["message"]
