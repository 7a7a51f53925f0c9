"""Which first reads `roomcast serve` hands to the WebSocket handshake without h11: a whole
upgrade request head and nothing else; the header names it lowers for the scope; and which
heads it parses itself (as websockets would) rather than through websockets' parser."""

from __future__ import annotations

import pytest
from websockets.http11 import Request
from websockets.streams import StreamReader

from roomcast.transports.uvicorn import _lowercase_names, _parse_head, _whole_upgrade

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


def websockets_parse(head: bytes) -> Request:
    """The request as websockets' own parser reads `head`."""
    reader = StreamReader()
    reader.feed_data(head)
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("websockets wanted more")


@pytest.mark.parametrize(
    "head",
    [
        HEAD,
        HEAD.replace(b"Host: x", b"Host:   x  \t"),  # whitespace around a value
        HEAD.replace(b"Host: x", b"Host: x\r\nX-Empty:\r\nX-Latin: caf\xe9\r\nHost: y"),
        HEAD.replace(b"?username=a&roomID=r", b"?username=%C3%A9&roomID=r%20s#frag"),
    ],
)
def test_a_plain_head_is_read_as_websockets_reads_it(head: bytes) -> None:
    ours = _parse_head(head)
    assert ours is not None
    theirs = websockets_parse(head)
    assert ours.path == theirs.path
    assert list(ours.headers.raw_items()) == list(theirs.headers.raw_items())


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"?username=a", "?username=é".encode()),  # not ASCII
        HEAD.replace(b"Host: x", b"Ho st: x"),  # not a token
        HEAD.replace(b"Host: x", b"Host: x\r\n folded"),  # obsolete line folding
        HEAD.replace(b"Host: x", b"Host: x\x00"),
        HEAD.replace(b"Host: x", b"Content-Length: 0"),
        HEAD.replace(b"Host: x", b"transfer-encoding: chunked"),
        HEAD.replace(b"Host: x", b"\r\n".join([b"X-A: b"] * 129)),  # too many
        HEAD.replace(b"Host: x", b"X-Long: " + b"a" * 8200),  # too long for one line
    ],
)
def test_anything_unusual_is_left_to_websockets(head: bytes) -> None:
    assert _parse_head(head) is None
