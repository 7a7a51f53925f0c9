"""Which first reads `roomcast serve` hands to the WebSocket handshake without h11: a whole
upgrade request head and nothing else; and the header names it lowers for the scope."""

from __future__ import annotations

from roomcast.transports.uvicorn import _lowercase_names, _whole_upgrade

HEAD = (
    b"GET /api/v1/ws?username=a&roomID=r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: AbCdEfGhIjKlMnOpQrStUw==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_whole_upgrade_head_is_taken() -> None:
    assert _whole_upgrade(HEAD)
    assert _whole_upgrade(HEAD.replace(b"Upgrade: websocket", b"UPGRADE: WebSocket"))


def test_anything_else_goes_to_h11() -> None:
    assert not _whole_upgrade(HEAD[:-2])  # not complete yet
    assert not _whole_upgrade(HEAD + b"\x81\x80")  # bytes after the head
    assert not _whole_upgrade(b"POST" + HEAD[3:])
    assert not _whole_upgrade(HEAD.replace(b"keep-alive, Upgrade", b"keep-alive"))
    assert not _whole_upgrade(HEAD.replace(b"Upgrade: websocket\r\n", b""))
    assert not _whole_upgrade(HEAD.replace(b"Upgrade: websocket", b"Upgrade:websocket"))
    assert not _whole_upgrade(HEAD.replace(b"\r\n\r\n", b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"))


def test_names_are_lowered_and_values_kept() -> None:
    lowered = _lowercase_names(HEAD)
    assert lowered.startswith(b"GET /api/v1/ws?username=a&roomID=r HTTP/1.1\r\nhost: x\r\n")
    assert b"\r\nsec-websocket-key: AbCdEfGhIjKlMnOpQrStUw==\r\n" in lowered
    assert b"\r\nconnection: keep-alive, Upgrade\r\n" in lowered
    assert lowered.endswith(b"\r\n\r\n")
    assert len(lowered) == len(HEAD)
