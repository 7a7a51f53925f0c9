"""Which first reads `roomcast serve` hands to the WebSocket handshake without h11: a whole
upgrade request head and nothing else; the header names it lowers for the scope; and which
heads it parses itself (as websockets would) rather than through websockets' parser, and which
requests it accepts itself (as websockets would)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from roomcast.transports.uvicorn import (
    _accept_plain,
    _lowercase_names,
    _parse_head,
    _whole_upgrade,
    handshake_protocol,
)

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


def answers(head: bytes) -> tuple[Response | None, Response, ServerProtocol, ServerProtocol]:
    """The plain accept's answer and websockets' own, with each side's state after it."""
    ours, theirs = ServerProtocol(), ServerProtocol()
    plain = _accept_plain(ours, websockets_parse(head))
    return plain, theirs.accept(websockets_parse(head)), ours, theirs


def undated(response: Response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.raw_items() if k != "Date")


@pytest.mark.parametrize(
    "head",
    [
        HEAD,
        HEAD.replace(b"keep-alive, Upgrade", b"UPGRADE"),
        HEAD.replace(b"Upgrade: websocket", b"Upgrade: WebSocket"),
        HEAD.replace(b"Host: x", b"Host: x\r\nOrigin: http://x\r\nSec-WebSocket-Extensions: a"),
    ],
)
def test_a_plain_request_is_accepted_as_websockets_accepts_it(head: bytes) -> None:
    plain, theirs, ours_conn, their_conn = answers(head)
    assert plain is not None
    assert (plain.status_code, plain.reason_phrase) == (theirs.status_code, theirs.reason_phrase)
    # The same headers; the dates may fall on either side of a second.
    assert undated(plain) == undated(theirs)
    assert parsedate_to_datetime(plain.headers["Date"]).tzinfo is not None
    for name in ("accept_called", "origin", "extensions", "subprotocol", "handshake_exc"):
        assert getattr(ours_conn, name) == getattr(their_conn, name), name


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"keep-alive, Upgrade", b"keep-alive"),  # 426 from websockets
        HEAD.replace(b"keep-alive, Upgrade", b", Upgrade"),  # lenient list: websockets decides
        HEAD.replace(b"Upgrade: websocket", b"Upgrade: websocket, h2c"),
        HEAD.replace(b"AbCdEfGhIjKlMnOpQrStUw==", b"AbCdEfGhIjKlMnOpQrStU==="),
        HEAD.replace(b"AbCdEfGhIjKlMnOpQrStUw==", b"c2hvcnQ="),
        HEAD.replace(b"Version: 13", b"Version: 8"),
        HEAD.replace(b"Host: x", b"Host: x\r\nSec-WebSocket-Key: AbCdEfGhIjKlMnOpQrStUw=="),
        HEAD.replace(b"Host: x", b"Host: x\r\nOrigin: a\r\nOrigin: b"),
        HEAD.replace(b"Host: x", b"Host: x\r\nSec-WebSocket-Protocol: chat"),
    ],
)
def test_anything_else_is_accepted_or_refused_by_websockets(head: bytes) -> None:
    plain, _, ours_conn, _ = answers(head)
    assert plain is None
    assert not ours_conn.accept_called


def test_a_server_that_checks_origins_is_left_to_websockets() -> None:
    assert _accept_plain(ServerProtocol(origins=[None]), websockets_parse(HEAD)) is None


class FakeTransport:
    """What the first-read protocol asks of a transport."""

    def __init__(self) -> None:
        self.protocol: Any = None
        self.written = b""
        self.closed = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _app(scope: Any, receive: Any, send: Any) -> None: ...


@pytest.mark.parametrize(("ws", "upgraded"), [("websockets-sansio", True), ("none", False)])
async def test_a_whole_upgrade_head_goes_to_the_websocket_protocol_if_there_is_one(
    ws: str, upgraded: bool
) -> None:
    """With uvicorn's `ws="none"` an upgrade goes to h11 (which refuses it), like any
    request."""
    config = uvicorn.Config(_app, ws=ws, log_config=None)
    config.load()
    state = ServerState()
    first_read = handshake_protocol(5.0)(config, state, {})
    transport = FakeTransport()
    first_read.connection_made(transport)
    assert first_read in state.connections
    first_read.data_received(HEAD)
    assert first_read not in state.connections
    assert isinstance(transport.protocol, WebSocketsSansIOProtocol) is upgraded
    assert isinstance(transport.protocol, H11Protocol) is not upgraded
    transport.protocol.connection_lost(None)
