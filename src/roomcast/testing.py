"""Helpers for an application's own tests: its roomcast in-process, clients without a network,
tokens.

```python
from roomcast.testing import TestServer

async def test_shout() -> None:
    async with TestServer(app.rc) as server:
        alice = await server.connect("alice", "lobby")
        await alice.send("shout", {"text": "hi"})
        assert (await alice.receive_topic("shout"))["payload"] == {"text": "HI"}
```

A [`TestServer`][roomcast.testing.TestServer] starts the application's
[`Roomcast`][roomcast.Roomcast] and talks to it through its ASGI interface, exactly as an ASGI
server would, but over in-memory queues: the handlers, commands, events, identity resolvers and
the memory broker all run as in production, on the test's own event loop.
[`make_token`][roomcast.testing.make_token] signs the JWTs a server configured with
`jwt_secret` accepts. See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jwt as pyjwt
import orjson

if TYPE_CHECKING:
    from .app import Roomcast

__all__ = ["ClientClosed", "TestClient", "TestServer", "make_token"]

TIMEOUT = 5.0
"""Seconds a test client waits for a frame (or for the server to close) by default."""

_WS_PATH = "/api/v1/ws"


class ClientClosed(AssertionError):
    """The server closed the test client's connection while a frame was awaited.

    Attributes:
        code: the close code (4401, 4403, 4409, ...).
        reason: the close reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server with {code} {reason!r}")
        self.code = code
        self.reason = reason


class TestClient:
    """One in-memory WebSocket connection to a test server, as a browser would hold.

    Made by [`TestServer.connect`][roomcast.testing.TestServer.connect]; frames are dicts in the
    wire format (`{"topic", "payload", ...}`, docs/protocol.md).

    Attributes:
        welcome: the server's first frame: `welcome` (joined) or `error` (refused).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, task_name: str) -> None:
        self._name = task_name
        self._inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._held: collections.deque[dict[str, Any]] = collections.deque()
        self._accepted = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.welcome: dict[str, Any] = {}

    # the ASGI side

    async def _receive(self) -> dict[str, Any]:
        return await self._inbound.get()

    async def _send(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._accepted.set()
        elif kind == "websocket.send":
            text = message.get("text")
            frame = orjson.loads(text if text is not None else message.get("bytes") or b"")
            self._frames.put_nowait(frame)
        elif kind == "websocket.close" and self._close is None:
            self._close = (int(message.get("code", 1000)), str(message.get("reason") or ""))
            self._frames.put_nowait(None)
            # A real peer answers the close frame; the server then sees the disconnect.
            self._inbound.put_nowait({"type": "websocket.disconnect", **self._close_event()})

    def _close_event(self) -> dict[str, Any]:
        code, reason = self._close or (1000, "")
        return {"code": code, "reason": reason}

    # the test's side

    @property
    def closed(self) -> tuple[int, str] | None:
        """The close code and reason once the server has closed the connection, else None."""
        return self._close

    async def send(
        self, topic: str, payload: Any = None, *, id: int | str | None = None, **fields: Any
    ) -> None:
        """Send one frame: `topic`, `payload`, an optional `id` (for an ack) and any other
        field of the contract (`to`, `roomID`, ...)."""
        frame: dict[str, Any] = {"topic": topic, "payload": payload, **fields}
        if id is not None:
            frame["id"] = id
        await self.send_raw(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        """Send `text` as one text frame, as it is (to test what malformed input gets)."""
        self._inbound.put_nowait({"type": "websocket.receive", "text": text})

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame from the server.

        Raises:
            ClientClosed: the server closed the connection (its code and reason).
            TimeoutError: no frame within `timeout` seconds.
        """
        if self._held:
            return self._held.popleft()
        async with asyncio.timeout(timeout):
            frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)  # every later receive raises too
            code, reason = self._close or (1006, "")
            raise ClientClosed(code, reason)
        return frame

    async def receive_topic(self, topic: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of `topic`, dropping the frames of other topics before it."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                if frame.get("topic") == topic:
                    return frame

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Wait until the server closes the connection, dropping frames; its code and reason."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.receive(timeout)
                except ClientClosed as closed:
                    return closed.code, closed.reason

    async def join(
        self, room: str, *, id: int | str = "join", timeout: float = TIMEOUT, **fields: Any
    ) -> dict[str, Any]:
        """Join another room on this connection (protocol v1.1 `room.join`, with any of
        `since`, `epoch`, `backlog`); returns the `joined` frame once the `ack` has come.
        Other frames that arrive meanwhile (a replay, other rooms' messages) are kept for
        `receive`, in order.

        Raises:
            AssertionError: the server refused the join (its `error` frame).
        """
        await self.send("room.join", {"roomID": room, **fields}, id=id)
        joined: dict[str, Any] | None = None
        for frame in await self._answer("room.join", room, id, timeout):
            if frame.get("topic") == "joined" and frame.get("room") == room and joined is None:
                joined = frame
            else:
                self._held.append(frame)
        if joined is None:
            raise AssertionError(f"room.join {room!r}: an ack without a joined frame")
        return joined

    async def leave(self, room: str, *, id: int | str = "leave", timeout: float = TIMEOUT) -> None:
        """Leave one room (protocol v1.1 `room.leave`) and wait for its `ack`.

        Raises:
            AssertionError: the server refused (e.g. `not_joined`).
        """
        await self.send("room.leave", {"roomID": room}, id=id)
        self._held.extend(await self._answer("room.leave", room, id, timeout))

    async def _answer(
        self, what: str, room: str, id: int | str, timeout: float
    ) -> list[dict[str, Any]]:
        """The frames up to the `ack` of frame `id` (not included); raise on its `error`."""
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                topic, payload = frame.get("topic"), frame.get("payload")
                if topic == "error" and isinstance(payload, dict) and payload.get("id") == id:
                    self._held.extend(frames)
                    raise AssertionError(f"{what} {room!r} refused: {payload}")
                if topic == "ack" and payload == {"id": id}:
                    return frames
                frames.append(frame)

    async def close(self, code: int = 1000, timeout: float = TIMEOUT) -> None:
        """Close from the client's side and wait (bounded) until the server has let go."""
        if self._close is None:
            self._inbound.put_nowait({"type": "websocket.disconnect", "code": code, "reason": ""})
        if self._task is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)


class TestServer:
    """An application's [`Roomcast`][roomcast.Roomcast], started in-process, with test clients.

    `async with TestServer(rc) as server` starts the node (its broker, usually memory://) and
    shuts it down at the end, after closing every client still connected.

    Args:
        app: the application's Roomcast instance (handlers and subscribers registered on it).
        client_address: the IP address the connections come from (per-IP limits).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: Roomcast, *, client_address: str = "127.0.0.1") -> None:
        self.app = app
        self.client_address = client_address
        self._clients: list[TestClient] = []
        self._ports = iter(range(40000, 65536))

    async def __aenter__(self) -> TestServer:
        await self.app.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        await self.app.shutdown()

    async def connect(
        self,
        username: str | None,
        room: str | None,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        joined: bool = True,
        timeout: float = TIMEOUT,
    ) -> TestClient:
        """Open a connection to `GET /api/v1/ws?username=...&roomID=...` and read the first frame.

        Args:
            username: the `username` query parameter (None to leave it out, e.g. with a token).
            room: the `roomID` query parameter; None opens a connection in no room (protocol
                v1.1), which joins rooms with [`TestClient.join`][roomcast.testing.TestClient.join].
            token: a JWT, sent as the `token` query parameter.
            headers: request headers (`cookie`, `origin`, `authorization`, ...).
            query: further query parameters (`since`, `epoch`, ...).
            joined: require a `welcome`; with False, a refusal is returned too (its `error`
                frame in `TestClient.welcome`, its close code in `closed`).
            timeout: seconds to wait for the first frame.

        Raises:
            ClientClosed: `joined` is true and the server refused the connection.
        """
        params = dict(query or {})
        if room is not None:
            params["roomID"] = room
        if username is not None:
            params["username"] = username
        if token is not None:
            params["token"] = token
        client = TestClient(f"roomcast-test-{username or 'anonymous'}")
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("testserver", 80),
            "client": (self.client_address, next(self._ports)),
            "root_path": "",
            "path": _WS_PATH,
            "raw_path": _WS_PATH.encode(),
            "query_string": urlencode(params).encode(),
            "headers": [
                (b"host", b"testserver"),
                *(
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in (headers or {}).items()
                ),
            ],
            "subprotocols": [],
            "extensions": {},
            "state": {},
        }
        client._inbound.put_nowait({"type": "websocket.connect"})
        client._task = asyncio.create_task(
            self.app(scope, client._receive, client._send), name=client._name
        )
        self._clients.append(client)
        try:
            client.welcome = await client.receive(timeout)
        except ClientClosed:
            if joined:
                raise
            return client
        if joined and client.welcome.get("topic") != "welcome":
            closed = await client.wait_closed(timeout)
            raise ClientClosed(*closed)
        return client


def make_token(
    secret: str,
    subject: str,
    *,
    rooms: Sequence[str] | None = None,
    publish: Sequence[str] | None = None,
    expires_in: float = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A JWT that a server with `jwt_secret=secret` accepts (docs/security.md).

    Args:
        secret: the server's HMAC secret (`Settings.jwt_secret`).
        subject: the `sub` claim: the member's username.
        rooms: the `rooms` claim (room ids or patterns such as `team-*`); None grants all.
        publish: the `publish` claim (topics the member may send); None allows all.
        expires_in: seconds until `exp`; negative for a token already expired.
        audience: the `aud` claim, when the server checks one.
        issuer: the `iss` claim, when the server checks one.
        algorithm: HS256, HS384 or HS512.
        claims: any further claims.
    """
    body: dict[str, Any] = {"sub": subject, "exp": int(time.time() + expires_in), **claims}
    if rooms is not None:
        body["rooms"] = list(rooms)
    if publish is not None:
        body["publish"] = list(publish)
    if audience is not None:
        body["aud"] = audience
    if issuer is not None:
        body["iss"] = issuer
    return pyjwt.encode(body, secret, algorithm=algorithm)
