"""The canary of the fast path: what transports/uvicorn.py relies on is in this uvicorn, and
`roomcast serve` falls back to the plain ASGI path when something is missing."""

from __future__ import annotations

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from roomcast.transports import uvicorn as fast
from tests.harness import Client, ServerProcess


def test_installed_uvicorn_has_every_internal_the_fast_path_uses() -> None:
    """Nothing the fast path relies on is missing from the installed uvicorn and websockets."""
    assert fast.missing_internals() == []


def test_server_still_captures_signals_in_a_list() -> None:
    """forget_captured_signals relies on uvicorn.Server's private `_captured_signals` list
    (without it a handled SIGTERM would end the process by the signal)."""
    server = uvicorn.Server(uvicorn.Config(fast.missing_internals, log_config=None))
    assert isinstance(server._captured_signals, list)
    server._captured_signals.append(15)
    fast.forget_captured_signals(server)
    assert server._captured_signals == []


def test_every_overridden_method_exists_in_uvicorn() -> None:
    """Each method WebSocketProtocol overrides is still a method of uvicorn's class (an
    override of a method uvicorn no longer calls would silently do nothing)."""
    own = {
        name
        for name, value in vars(fast.WebSocketProtocol).items()
        if callable(value) and not name.startswith("_")
    }
    added = {
        "handshake_deadline",
        "hold",
        "hold_more",
        "hold_more_all",
        "flush",
        "discard",
        "write_frame",
        "receive_directly",
        "receive_head",
    }
    for name in own - added:
        assert callable(getattr(WebSocketsSansIOProtocol, name, None)), name


def test_a_missing_method_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """missing_internals names a method that has gone."""
    monkeypatch.delattr(WebSocketsSansIOProtocol, "keepalive_timeout")
    assert fast.missing_internals() == ["WebSocketsSansIOProtocol.keepalive_timeout"]


def test_a_missing_attribute_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """missing_internals names an instance attribute that uvicorn no longer sets."""
    original = WebSocketsSansIOProtocol.__init__

    def init(self: WebSocketsSansIOProtocol, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        del self.pending_ping_payload

    monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", init)
    assert fast.missing_internals() == ["WebSocketsSansIOProtocol().pending_ping_payload"]


def test_text_frame_encodes_every_length_class() -> None:
    """The one encoder of the direct path writes RFC 6455 headers for 7-, 16- and 64-bit
    lengths."""
    assert fast.text_frame("hi") == b"\x81\x02hi"
    assert fast.text_frame("x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert fast.text_frame("x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


async def test_missing_internal_warns_once_and_serves_plain_path() -> None:
    """With an internal missing, the server logs one warning naming it and still serves the
    protocol (welcome, relay, ack) on the plain ASGI path."""
    server = ServerProcess(["--port", "0"], module="tests.contract.uvicorn_without_internals")
    server.start()
    try:
        assert server.log is not None
        warnings = [line for line in server.log.lines if "transport.fast_path_unavailable" in line]
        assert len(warnings) == 1
        assert "WebSocketsSansIOProtocol.send_500_response" in warnings[0]
        alice = await Client.connect(server.ws_url, "alice", "canary")
        assert (await alice.join())["topic"] == "welcome"
        await alice.send({"topic": "chat", "payload": "hi", "id": 1})
        assert (await alice.recv())["payload"] == "hi"
        assert (await alice.recv())["topic"] == "ack"
        await alice.close()
    finally:
        server.stop()
