"""The asyncio client: one member of one room, reconnecting and resuming on its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from ..protocol import is_builtin
from ._errors import ClientClosed, ClientError, ConnectionLost, RequestError, RequestTimeout
from ._frames import Frame, FrameHandler, HistoryPage, Welcome, parse_frame, parse_welcome
from ._policy import Backoff, ClientState, Reconnect, reconnect_rule
from ._room import Room

__all__ = [
    "Client",
    "CloseInfo",
    "FrameHandler",
    "RecoveryCallback",
    "StateCallback",
    "TokenProvider",
]

logger = logging.getLogger("roomcast.client")

WS_PATH = "/api/v1/ws"
_REFRESH_AT = 0.8
MAX_REFUSED_TOKENS = 3
"""Tokens refused (4401) in a row, with no connection welcomed between them, after which a
client that was connected gives up (a provider that keeps handing out a token the server
refuses); the first connection gets one fresh token."""

TokenProvider = Callable[[], Awaitable[str | None]]
"""An async callable returning a fresh token, or None when there is none to give."""
StateCallback = Callable[[ClientState], Awaitable[None] | None]
"""Called with the new state on every state change."""
RecoveryCallback = Callable[[Welcome], Awaitable[None] | None]
"""Called when a reconnect could not replay the missed messages (`recovered` is false)."""

H = TypeVar("H", bound=FrameHandler)
_Item = Frame | tuple[Frame, Room] | Callable[[], Awaitable[None] | None] | None


@dataclass(slots=True)
class _Pending:
    """A frame with an `id` waiting for its `ack` or `error`."""

    future: asyncio.Future[Any]
    frame: dict[str, Any]
    resend: bool
    """Whether it is sent again after a reconnect and on a `timeout` error (a publish, with
    its key); frames of built-in topics fail with `ConnectionLost` instead."""
    sent_on: ClientConnection | None = None
    """The connection it was last written to."""
    answered: bool = False
    """Whether its ack resolves with the answer frame that precedes it (`room.history`)."""
    uncertain: int = 0
    """`timeout` and later `unavailable` answers so far: its outcome is unknown, so it is sent
    again until an `ack` (or another error) says what became of it."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended.

    Attributes:
        code: the close code the server sent, or None when the network failed (no close frame,
            connection refused, handshake or keepalive timeout).
        reason: the close reason, or a description of the network error.
        error_code: the `code` of the `error` frame sent just before the close, if any.
        error_message: that frame's `message`, if any.
    """

    code: int | None
    reason: str
    error_code: str | None = None
    error_message: str | None = None

    def describe(self) -> str:
        """A one-line human description."""
        what = self.error_message or self.reason or "connection lost"
        return what if self.code is None else f"{what} (close code {self.code})"


class Client:
    """A member of one room (or of several, protocol v1.1: :meth:`join` gives a :class:`Room`
    handle for each other room): send, receive, request, presence, with automatic reconnect.

    The client follows the close-code table of the protocol: it stays closed after 1000,
    1007, 1008, 1009, 4400, 4403, 4409 and 4499; after 4401 it asks `token_provider` for a fresh
    token (and stays closed without one); it reconnects at once (with jitter) after 1001 and
    1012, and after an exponential backoff with jitter otherwise. When it reconnects it sends
    the last offset and epoch it saw, so every room message reaches the application once and
    in order; when the server cannot replay them, `on_recovery_failed` is called.

    Every frame sent with an `id` (:meth:`request`) carries an idempotency `key`, unique to
    this client, so a publish is neither lost nor duplicated across a reconnect: a request
    not yet answered when the connection drops is sent again, with the same key and in
    order, once the client has reconnected and resumed its rooms, and so is one answered by an
    `error` with code `timeout` (its outcome was unknown); the server publishes a key at most
    once (protocol section 10), and the resumed room replays the message when the first attempt
    had published it. Frames without an `id` (:meth:`send`) are not resent.

    The URL's `room` is a :class:`Room` handle too (:attr:`first_room`, listed in
    :attr:`rooms`); `members`, `offset` and `epoch` of the client are its.

    Frames reach the application either through handlers (`client.on("chat")`), called one
    at a time in arrival order, or through `async for frame in client` / `await recv()` for
    every frame of a topic with no handler. Until iteration starts, the last `max_queue`
    unhandled frames are kept; once it has started, none are dropped.

    Args:
        url: the server: a URL whose path ends in `/api/v1/ws` is used as it is, any other
            is a base to which `/api/v1/ws` is added (`ws://HOST:PORT`, `ws://HOST/rt` for an
            app mounted at `/rt`); `http(s)://` is accepted too.
        username: the member's name in the room.
        room: the room id; None opens the connection in no room (protocol v1.1), to
            :meth:`join` rooms on it.
        token: a JWT, sent as `Authorization: Bearer`.
        token_provider: an async callable returning a token; called before the first
            connection when `token` is None, again whenever the server answers 4401, and, for
            a JWT with `exp`, at 80 % of its remaining lifetime to send the fresh token in-band
            (`auth.refresh`) so that the connection is not closed at `exp`.
        since: resume from this offset on the first connection (needs `epoch`).
        epoch: the epoch `since` belongs to.
        backlog: replay the room's last N retained messages after the first welcome, before
            live ones (not with `since`; reconnects resume instead).
        on_state: called with each new :class:`ClientState`.
        on_recovery_failed: called with the welcome when missed messages could not be replayed:
            the application should reload its state.
        reconnect: set False to never reconnect.
        backoff: the reconnect delays.
        max_attempts: give up after this many failed reconnect attempts in a row (None: never).
        ping_interval: seconds between WebSocket pings (None turns keepalive off).
        ping_timeout: seconds to wait for the pong before the connection counts as dead.
        open_timeout: seconds allowed for the handshake and the welcome frame.
        close_timeout: seconds allowed for the closing handshake.
        max_queue: unhandled frames kept before iteration starts.
        headers: extra HTTP headers for the handshake.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str,
        room: str | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        since: int | None = None,
        epoch: str | None = None,
        backlog: int | None = None,
        on_state: StateCallback | None = None,
        on_recovery_failed: RecoveryCallback | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        max_queue: int = 1000,
        headers: dict[str, str] | None = None,
    ) -> None:
        if (since is None) != (epoch is None):
            raise ValueError("since and epoch go together")
        if backlog is not None and (since is not None or room is None or backlog < 0):
            raise ValueError("backlog is a non-negative count, with room and without since")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url = _ws_url(url)
        self.username = username
        self.room = room
        self._token = token
        self._token_provider = token_provider
        self._on_state = on_state
        self._on_recovery_failed = on_recovery_failed
        self._reconnect = reconnect
        self._backoff = backoff or Backoff()
        self._max_attempts = max_attempts
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_queue = max_queue
        self._headers = dict(headers or {})
        self._rng = random.Random()

        self._state = ClientState.IDLE
        self._changed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._welcome: Welcome | None = None
        self._last_close: CloseInfo | None = None
        self._final: CloseInfo | None = None
        self._ids = itertools.count(1)
        self._keys = secrets.token_urlsafe(12)
        """The start of this client's idempotency keys (the frame id follows)."""
        self._pending: dict[str | int, _Pending] = {}
        self._presence_pending = 0
        self._resends: set[asyncio.Task[None]] = set()
        """Resends and re-joins waiting for their delay (cancelled when the client closes)."""
        self._last_answer: Frame | None = None
        """The last `room.history` answer: the ack that follows resolves with it."""
        self._handlers: dict[str, list[FrameHandler]] = {}
        self._rooms: dict[str, Room] = {}
        self._url_room: Room | None = None
        if room is not None:
            self._url_room = self._rooms[room] = Room(
                self,
                room,
                backlog=backlog,
                since=since,
                epoch=epoch,
                max_waiting=max_queue,
                keeps_early=False,
            )
        self._incoming: asyncio.Queue[_Item] = asyncio.Queue()
        self._inbox: deque[Frame] = deque()
        self._inbox_ready = asyncio.Event()
        self._iterating = False
        self._drained = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._first: asyncio.Future[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._dispatch_task: asyncio.Task[None] | None = None

    # public state

    @property
    def state(self) -> ClientState:
        """The current :class:`ClientState`."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the client is joined right now."""
        return self._state is ClientState.CONNECTED

    @property
    def first_room(self) -> Room | None:
        """The handle of the URL's `room` (None without one); it stays the same object across
        reconnects, and is `left` once the connection was taken out of it."""
        return self._url_room

    @property
    def members(self) -> list[str]:
        """The room's members as this client knows them (welcome, then presence frames)."""
        return [] if self._url_room is None else self._url_room.members

    @property
    def welcome(self) -> Welcome | None:
        """The welcome of the current (or last) connection."""
        return self._welcome

    @property
    def offset(self) -> int | None:
        """The offset of the last room message seen (or the room's offset at join)."""
        return None if self._url_room is None else self._url_room.offset

    @property
    def epoch(self) -> str | None:
        """The epoch of the room's history that `offset` belongs to."""
        return None if self._url_room is None else self._url_room.epoch

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms the client is in and has not left, by id: the URL's room (while the
        connection is in it) and those joined with :meth:`join`."""
        return dict(self._rooms)

    @property
    def last_close(self) -> CloseInfo | None:
        """How the most recent connection ended, or None."""
        return self._last_close

    @property
    def close_info(self) -> CloseInfo | None:
        """Why the client closed for good, once it is `CLOSED`."""
        return self._final

    # handlers and iteration

    def on(self, topic: str) -> Callable[[H], H]:
        """Register a handler of `topic` (`"*"` for every topic) as a decorator. It gets the
        frames of every room; a :class:`Room` has handlers of its own.

        Handlers are called one at a time, in the order frames arrive, and may await
        :meth:`request`. An exception in a handler is logged and does not stop the client.
        """

        def register(handler: H) -> H:
            self.add_handler(topic, handler)
            return handler

        return register

    def add_handler(self, topic: str, handler: FrameHandler) -> None:
        """Register `handler` for `topic` (`"*"` for every topic)."""
        self._handlers.setdefault(topic, []).append(handler)

    def remove_handler(self, topic: str, handler: FrameHandler) -> None:
        """Unregister a handler; unknown handlers are ignored."""
        handlers = self._handlers.get(topic, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(topic, None)

    async def recv(self, timeout: float | None = None) -> Frame:
        """The next frame that has no handler.

        Raises:
            ClientClosed: the client is closed and every received frame was returned.
            TimeoutError: no frame came within `timeout` seconds.
        """
        self._iterating = True
        async with asyncio.timeout(timeout):
            while not self._inbox:
                if self._drained:
                    raise self._closed_error()
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
        return self._inbox.popleft()

    def __aiter__(self) -> AsyncIterator[Frame]:
        self._iterating = True
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.recv()
        except ClientClosed:
            raise StopAsyncIteration from None

    # connecting and closing

    async def connect(self) -> Welcome:
        """Connect and join; returns the welcome.

        Later disconnects are repaired in the background; this first connection is tried
        once (plus once more with a fresh token after 4401 when there is a token provider).

        Raises:
            ClientClosed: the server refused the connection or could not be reached.
        """
        if self._state is not ClientState.IDLE:
            raise ClientError(f"connect() was already called (state {self._state})")
        self._first = asyncio.get_running_loop().create_future()
        self._set_state(ClientState.CONNECTING)
        self._dispatch_task = asyncio.create_task(self._dispatch(), name="roomcast-dispatch")
        self._run_task = asyncio.create_task(self._run(), name="roomcast-client")
        try:
            await asyncio.shield(self._first)
        except asyncio.CancelledError:
            # The caller gave up (e.g. a timeout around connect()): do not linger in the
            # background.
            self._first.cancel()
            await self.close()
            raise
        welcome = self._welcome
        if welcome is None:  # cannot happen: the first future is only set after a welcome
            raise ClientError("connected without a welcome")
        return welcome

    async def close(self) -> None:
        """Close the connection with 1000 and stop reconnecting.

        Pending requests fail with :class:`ClientClosed`; frames already received are still
        handed to handlers and to iteration. Calling it again does nothing.
        """
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closed")
        elif self._run_task is not None and self._run_task is not asyncio.current_task():
            # Connecting (a handshake that may hang until its timeout) or waiting to: stop it.
            self._run_task.cancel()
        if self._run_task is None:
            self._finish(CloseInfo(1000, "client closed"))
            self._incoming.put_nowait(None)
        current = asyncio.current_task()
        for task in (self._run_task, self._dispatch_task):
            if task is not None and task is not current and not task.done():
                # asyncio.wait, not a shield: the caller's own cancellation still reaches it.
                await asyncio.wait({task})
        if self._dispatch_task is None:
            self._end_inbox()

    async def wait_closed(self) -> CloseInfo:
        """Wait until the client is closed for good; returns why."""
        while self._final is None:
            changed = self._changed
            await changed.wait()
        task = self._dispatch_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait({task})
        return self._final

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # sending

    async def join(
        self,
        room_id: str,
        *,
        backlog: int | None = None,
        since: int | None = None,
        epoch: str | None = None,
        on_recovery_failed: Callable[[Room, dict[str, Any]], Awaitable[None] | None] | None = None,
        timeout: float | None = 10.0,
    ) -> Room:
        """Join another room on this connection (protocol v1.1) and return its handle.

        `backlog` replays the room's last N retained messages; `since` + `epoch` resume it.
        The client joins the room again after every reconnect, resuming from its own offset;
        when the server cannot replay what was missed, `on_recovery_failed(room, joined)` is
        called. Joining a room joined already (the URL's room included) returns the same
        handle.

        Raises:
            RequestError: the server refused (`forbidden`, `duplicate`, `too_many_rooms`,
                `bad_request`, ...).
            RequestTimeout: not joined within `timeout` seconds.
            ClientClosed: the client is closed.
        """
        if (since is None) != (epoch is None):
            raise ValueError("since and epoch go together")
        if self._final is not None:
            raise self._closed_error()
        room = self._rooms.get(room_id)
        created = room is None
        if room is None:
            room = Room(
                self,
                room_id,
                backlog=backlog,
                since=since,
                epoch=epoch,
                max_waiting=self._max_queue,
            )
            room._on_recovery_failed = on_recovery_failed
            self._rooms[room_id] = room
            ws = self._ws
            if self.connected and ws is not None:
                await self._send_join(ws, room)
        try:
            await room._wait_joined(timeout)
        except TimeoutError:
            if created and not room._joined.is_set():
                # Failed, as the caller is told: not joined again after a reconnect, and left
                # should the server's answer come after all.
                self._drop_room(room)
                ws = self._ws
                if self.connected and ws is not None:
                    with contextlib.suppress(ClientError):
                        await self._write(
                            ws, self._frame("room.leave", {"roomID": room_id}, None, None, None)
                        )
            raise RequestTimeout(f"not joined to {room_id!r} within {timeout} s") from None
        return room

    def _drop_room(self, room: Room) -> None:
        room.left = True
        if self._rooms.get(room.id) is room:
            del self._rooms[room.id]

    def _wake_dispatcher(self) -> None:
        self._incoming.put_nowait(lambda: None)

    async def _send_join(self, ws: ClientConnection, room: Room) -> None:
        """Send `room.join`; a refusal drops the room (and tells its handlers `left`), but
        a room joined before the reconnect whose join found the broker unavailable (or got
        no answer in time) is asked again after a backoff."""
        frame_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        frame = self._frame("room.join", room._join_payload(), None, frame_id, None)
        self._pending[frame_id] = _Pending(future, frame, resend=False)

        def answered(done: asyncio.Future[Any]) -> None:
            self._pending.pop(frame_id, None)
            error = None if done.cancelled() else done.exception()
            if (
                isinstance(error, RequestError)
                and error.wire_code in ("unavailable", "timeout")
                and room._joined.is_set()
            ):
                self._join_later(ws, room)
                return
            if isinstance(error, RequestError):
                room._refused = error
                self._drop_room(room)
                room._joined.set()
                payload = {"roomID": room.id, "reason": error.wire_code}
                self._incoming.put_nowait((Frame("left", payload, room=room.id), room))

        future.add_done_callback(answered)
        with contextlib.suppress(ConnectionLost):  # sent again after the reconnect
            await self._write(ws, frame)

    def _join_later(self, ws: ClientConnection, room: Room) -> None:
        """Send `room.join` of `room` again after a backoff growing with each try, unless
        the connection changed (the reconnect joins it) or the room was left meanwhile."""
        delay = self._backoff.delay(Reconnect.BACKOFF, room._retries, self._rng)
        room._retries += 1

        async def again() -> None:
            await asyncio.sleep(delay)
            if self._ws is ws and self._rooms.get(room.id) is room and not room.left:
                await self._send_join(ws, room)

        self._later(again())

    async def _rejoin(self, ws: ClientConnection) -> None:
        """Join every room again on a new connection, each from its own offset, then send
        again what was not answered on the previous one (in order, with the same keys)."""
        sent: set[str] = set()
        while todo := [
            r for r in self._rooms.values() if r.id not in sent and r is not self._url_room
        ]:
            for room in todo:
                sent.add(room.id)
                await self._send_join(ws, room)
        for entry in list(self._pending.values()):
            if entry.resend and entry.sent_on is not ws and not entry.future.done():
                if entry.sent_on is not None:
                    # Sent on a connection that dropped before its answer: it may have been
                    # published, so an `unavailable` now is retried, as after a `timeout`.
                    entry.uncertain = max(entry.uncertain, 1)
                with contextlib.suppress(ConnectionLost):  # then after the next reconnect
                    await self._write_pending(ws, entry)

    async def send(
        self,
        topic: str,
        payload: Any,
        to: str | None = None,
        *,
        room: str | None = None,
        echo: bool = True,
    ) -> None:
        """Send a frame to the room (the client's, or `room`), or to member `to` only; waits
        while reconnecting. With `echo=False` the message is not delivered back to this
        connection (everyone else, and this user's other connections, still get it).

        Raises:
            ClientClosed: the client is closed.
            ConnectionLost: the connection dropped while sending.
        """
        ws = await self._wait_connected()
        await self._write(ws, self._frame(topic, payload, to, None, room, echo))

    async def request(
        self,
        topic: str,
        payload: Any,
        to: str | None = None,
        *,
        timeout: float | None = 10.0,
        room: str | None = None,
        echo: bool = True,
    ) -> int | None:
        """Send a frame with an `id` and an idempotency `key`, and wait for the server's answer
        (`echo` as :meth:`send`).

        When the connection drops before the answer, the frame is sent again after the
        reconnect (same key, in order with the other unanswered ones, before newer frames),
        and so it is after an `error` with code `timeout`: the server publishes it at most
        once, so the message reaches the room exactly once (protocol section 10). Built-in
        topics (`presence`, `room.*`, ...) are not sent again.

        Returns:
            The offset the `ack` carries (the message's offset when it was relayed; the first
            one's when the key had published already), or None (also for an ephemeral topic,
            which takes no offset).

        Raises:
            RequestError: the server answered with an `error` frame (its code and message).
            RequestTimeout: no answer within `timeout` seconds (waiting to reconnect and
                resending included).
            ConnectionLost: a built-in topic's connection dropped before the answer came.
            ClientClosed: the client is closed.
        """
        result: int | None = await self._request(topic, payload, to, timeout, room, echo=echo)
        return result

    async def history(
        self,
        *,
        before: int | None = None,
        limit: int | None = None,
        room: str | None = None,
        timeout: float | None = 10.0,
    ) -> HistoryPage:
        """A page of a room's retained messages (`room.history`, protocol v1.1): at most
        `limit` (1-100, default 50) messages with offsets below `before` (default: the
        latest), oldest first, as members received them. Page back with `before` set to the
        first message's offset, until a page is empty. The room is `room`, or the client's.

        Raises:
            RequestError: `not_joined` for a room the client is not in, `bad_request` for a
                bad `before` or `limit`.
            RequestTimeout, ConnectionLost, ClientClosed: as :meth:`request`.
        """
        payload: dict[str, Any] = {}
        if room is None and self._url_room is not None:
            room = self._url_room.id
        if room is not None:
            payload["roomID"] = room
        if before is not None:
            payload["before"] = before
        if limit is not None:
            payload["limit"] = limit
        answer = await self._request("room.history", payload, None, timeout, None, answered=True)
        data = answer.payload if isinstance(answer, Frame) else None
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise RequestError("invalid_frame", "the server's history answer is malformed", None)
        messages = tuple(parse_frame(m) for m in data["messages"] if isinstance(m, dict))
        return HistoryPage(str(data.get("epoch", "")), messages)

    async def _request(
        self,
        topic: str,
        payload: Any,
        to: str | None,
        timeout: float | None,
        room: str | None,
        *,
        echo: bool = True,
        answered: bool = False,
    ) -> Any:
        frame_id = next(self._ids)
        presence = topic == "presence"
        resend = not is_builtin(topic)
        try:
            async with asyncio.timeout(timeout):
                ws = await self._wait_connected()
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                frame = self._frame(topic, payload, to, frame_id, room, echo)
                entry = _Pending(future, frame, resend, answered=answered)
                self._pending[frame_id] = entry
                self._presence_pending += presence
                try:
                    if resend:
                        # a frame the connection could not take is sent after the reconnect
                        with contextlib.suppress(ConnectionLost):
                            await self._write_pending(ws, entry)
                    else:
                        await self._write_pending(ws, entry)
                    return await future
                finally:
                    if self._pending.pop(frame_id, None) is not None:
                        self._presence_pending -= presence
        except TimeoutError:
            raise RequestTimeout(f"no answer to {topic!r} within {timeout} s", code=None) from None

    async def presence(self, *, timeout: float | None = 10.0) -> list[str]:
        """Ask the server for the room's members, cluster-wide.

        Raises:
            RequestTimeout, ConnectionLost, ClientClosed: as :meth:`request`.
        """
        first = self._url_room
        if first is None or first.left:
            await self.request("presence", {}, timeout=timeout)  # not_joined
            return []
        return await first.presence(timeout=timeout)

    def _frame(
        self,
        topic: str,
        payload: Any,
        to: str | None,
        frame_id: int | None,
        room: str | None,
        echo: bool = True,
    ) -> dict[str, Any]:
        """A client frame; one with an `id` carries this client's key for that id. A frame
        for the client's own room names it: once that room was left, the server answers
        `not_joined` rather than taking the frame to the connection's next room."""
        if room is None and self._url_room is not None and not is_builtin(topic):
            room = self._url_room.id
        frame = _frame(topic, payload, to, frame_id, room, echo)
        if frame_id is not None:
            frame["key"] = f"{self._keys}-{frame_id}"
        return frame

    async def _write_pending(self, ws: ClientConnection, entry: _Pending) -> None:
        entry.sent_on = ws
        await self._write(ws, entry.frame)

    def _resend(self, entry: _Pending, delay: float) -> None:
        """Send `entry` again after `delay` seconds (its outcome is unknown), or after the
        reconnect when the connection is gone by then."""
        ws = self._ws
        entry.sent_on = None

        async def resend() -> None:
            if delay:
                await asyncio.sleep(delay)
            if self._ws is not ws or ws is None or entry.sent_on is not None:
                return  # the reconnect sent it (or sends it)
            if entry.future.done():
                return
            with contextlib.suppress(ConnectionLost):
                await self._write_pending(ws, entry)

        self._later(resend())

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, held until it ends or the client closes."""
        task = asyncio.get_running_loop().create_task(work)
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    async def _write(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        try:
            await ws.send(orjson.dumps(frame).decode())
        except ConnectionClosed:
            raise ConnectionLost("the connection dropped while sending") from None

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self._final is not None or self._stopping:
                raise self._closed_error()
            if self._state is ClientState.IDLE:
                raise ClientError("call connect() first")
            ws = self._ws
            if self._state is ClientState.CONNECTED and ws is not None:
                return ws
            changed = self._changed
            await changed.wait()

    def _closed_error(self) -> ClientClosed:
        info = self._final or CloseInfo(1000, "client closed")
        return ClientClosed(
            f"the client is closed: {info.describe()}",
            close_code=info.code,
            reason=info.reason,
            wire_code=info.error_code,
        )

    # the connection loop

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        callback = self._on_state
        if callback is not None:
            self._incoming.put_nowait(lambda: callback(state))

    async def _run(self) -> None:
        attempt = 0
        ever_joined = False
        refused_tokens = 0  # in a row, since the last welcome
        final: CloseInfo | None = None
        loop = asyncio.get_running_loop()
        try:
            if self._token is None and self._token_provider is not None:
                final = await self._fetch_token()
            while final is None and not self._stopping:
                started = loop.time()
                info, joined = await self._connect_once()
                self._last_close = info
                if self._stopping:
                    break
                if joined:
                    ever_joined = True
                    refused_tokens = 0
                    # A connection welcomed and then closed at once (a server that rate-limits
                    # or fails) is a failed attempt too: only one that lasted resets backoff.
                    if loop.time() - started >= self._backoff.max_delay:
                        attempt = 0
                rule = reconnect_rule(info.code) if self._reconnect else Reconnect.NEVER
                if rule is Reconnect.NEW_TOKEN:
                    # The first connection gets one fresh token; a working client, a few.
                    refused_tokens += 1
                    if refused_tokens > (MAX_REFUSED_TOKENS if ever_joined else 1):
                        final = info
                        break
                elif not ever_joined:
                    final = info
                    break
                if (
                    rule is Reconnect.NEVER
                    or (self._max_attempts is not None and attempt >= self._max_attempts)
                    or (rule is Reconnect.NEW_TOKEN and self._token_provider is None)
                ):
                    # (4401 without a provider: no new token to come, so no reconnecting.)
                    final = info
                    break
                if ever_joined:
                    self._set_state(ClientState.RECONNECTING)
                if rule is Reconnect.NEW_TOKEN:
                    final = await self._fetch_token(info)
                    if final is not None:
                        break
                delay = self._backoff.delay(rule, attempt, self._rng)
                attempt += 1
                logger.info("reconnecting in %.2f s after %s", delay, info.describe())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        except Exception as exc:
            logger.exception("client loop failed")
            final = CloseInfo(None, f"client error: {exc!r}")
        finally:
            self._finish(final or CloseInfo(1000, "client closed"))
            self._incoming.put_nowait(None)

    async def _fetch_token(self, refused: CloseInfo | None = None) -> CloseInfo | None:
        """Ask the provider for a token; returns why to give up, or None on success."""
        if self._token_provider is None:
            return refused
        try:
            token = await self._token_provider()
        except Exception as exc:
            logger.warning("the token provider failed", exc_info=True)
            return CloseInfo(
                refused.code if refused else None,
                f"the token provider failed: {exc!r}",
                refused.error_code if refused else None,
                refused.error_message if refused else None,
            )
        if token is None:
            return refused or CloseInfo(None, "the token provider gave no token")
        self._token = token
        return None

    def _finish(self, info: CloseInfo) -> None:
        if self._final is not None:
            return
        self._final = info
        error = self._closed_error()
        for task in self._resends:
            task.cancel()
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending.clear()
        for room in self._rooms.values():
            room._refused = error
            room._joined.set()
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
        self._set_state(ClientState.CLOSED)

    def _query_url(self) -> str:
        parts = urlsplit(self.url)
        query = [
            (k, v)
            for k, v in parse_qsl(parts.query)
            if k not in ("username", "roomID", "since", "epoch", "backlog")
        ]
        query += [("username", self.username)]
        first = self._url_room
        if first is not None and not first.left:
            query += [("roomID", first.id)]
            if first.offset is not None and first.epoch is not None:
                query += [("since", str(first.offset)), ("epoch", first.epoch)]
            elif first._backlog:
                query += [("backlog", str(first._backlog))]
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _connect_once(self) -> tuple[CloseInfo, bool]:
        """One connection, from the handshake to its end; returns how it ended and whether
        it got as far as the welcome."""
        headers = dict(self._headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            ws = await websockets.connect(
                self._query_url(),
                additional_headers=headers,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=self._close_timeout,
                compression=None,
                max_size=None,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return CloseInfo(None, f"cannot connect to {self.url}: {exc}"), False
        self._ws = ws
        if self._stopping:  # close() ran while the handshake was in progress
            await ws.close(1000, "client closed")
            self._ws = None
            return CloseInfo(1000, "client closed"), False
        joined = False
        error: tuple[str, str] | None = None
        refresher: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._open_timeout):
                first = _decode(await ws.recv())
                if first is not None and first.topic == "error":
                    # A refusal: one error frame, then the close code.
                    error = _error_of(first)
                    await ws.wait_closed()
                elif first is None or first.topic != "welcome":
                    raise ValueError("the first frame is not a welcome")
                else:
                    welcome = parse_welcome(first.payload)
            if error is None:
                self._on_welcome(welcome, first.payload)
                # every other room before any frame that may be meant for it
                await self._rejoin(ws)
                self._set_state(ClientState.CONNECTED)
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)
                joined = True
                if self._token_provider is not None and _token_expiry(self._token):
                    refresher = asyncio.create_task(self._keep_token_fresh())
                async for raw in ws:
                    frame = _decode(raw)
                    if frame is not None:
                        # An error frame right before the close says why it closed.
                        is_error = frame.topic == "error" and _payload_id(frame) is None
                        error = _error_of(frame) if is_error else None
                        self._handle(frame)
        except ConnectionClosed:
            pass
        except (TimeoutError, ValueError) as exc:
            await ws.close(1002, "no valid welcome frame")
            return CloseInfo(None, f"no valid welcome frame: {exc!r}"), False
        finally:
            self._ws = None
            if refresher is not None:
                refresher.cancel()
            self._drop_pending()
        rcvd = ws.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else None
        reason = rcvd.reason if rcvd is not None else "connection lost"
        return CloseInfo(code, reason, *(error or (None, None))), joined

    async def _keep_token_fresh(self) -> None:
        """Send `auth.refresh` with a token from the provider at 80 % of the current token's
        remaining lifetime, so that the server does not close the connection at `exp`."""
        while self._token_provider is not None:
            expiry = _token_expiry(self._token)
            if expiry is None:
                return
            await asyncio.sleep(max(0.0, (expiry - time.time()) * _REFRESH_AT))
            try:
                token = await self._token_provider()
                if token is None or (_token_expiry(token) or 0.0) <= expiry:
                    return  # nothing fresher: the server's 4401 at exp asks again
                await self.request("auth.refresh", {"token": token}, timeout=self._open_timeout)
            except ClientError as exc:
                # A refused token is followed by 4401, and the reconnect asks the provider.
                logger.info("auth.refresh failed: %s", exc)
                return
            except Exception:
                logger.warning("the token provider failed", exc_info=True)
                return
            self._token = token

    def _drop_pending(self) -> None:
        """The connection ended: requests of built-in topics fail with `ConnectionLost`; the
        others wait to be sent again after the reconnect."""
        error = ConnectionLost("the connection dropped before the answer came")
        for frame_id, entry in list(self._pending.items()):
            if entry.resend:
                continue
            del self._pending[frame_id]
            if not entry.future.done():
                entry.future.set_exception(error)
        self._presence_pending = 0

    def _on_welcome(self, welcome: Welcome, payload: Any) -> None:
        self._welcome = welcome
        first = self._url_room
        if not welcome.room or first is None:
            return  # a connection in no room: each room has its own state
        # A first join, or history that could not be replayed, starts from the room's
        # current offset in its current epoch (as a `joined` frame does for other rooms).
        recovered = first._on_joined(payload)
        if recovered is False and self._on_recovery_failed is not None:
            callback = self._on_recovery_failed
            self._incoming.put_nowait(lambda: callback(welcome))

    def _handle(self, frame: Frame) -> None:
        """Route one frame: answers to requests here, the rest to the dispatcher in order."""
        # Server frames never carry `from`; a relayed message named "ack" is just a message.
        topic = frame.topic if frame.sender is None else ""
        if topic == "room.history":
            self._last_answer = frame  # the answer to history(): its ack comes next
            return
        if topic == "ack" or topic == "error":
            frame_id = _payload_id(frame)
            entry = self._pending.get(frame_id) if frame_id is not None else None
            if entry is not None:
                self._answer(entry, frame, topic)
                return
            if topic == "ack":
                return
        first = self._url_room
        if frame.room is not None:
            room = self._rooms.get(frame.room)
        elif topic == "presence":
            room = first  # a v1 server's answer does not name its room
        else:
            room = None
        if room is None:
            if frame.room is not None and topic != "error":
                return  # a room left meanwhile
            self._incoming.put_nowait(frame)
            return
        if topic == "joined" and isinstance(frame.payload, dict) and room is not first:
            callback = room._on_recovery_failed
            if room._on_joined(frame.payload) is False and callback is not None:
                payload = frame.payload
                self._incoming.put_nowait(lambda: callback(room, payload))
        elif topic == "left":
            # out of the room; the URL's room is then left out of the reconnects
            self._drop_room(room)
        elif topic == "presence" and self._presence_pending:
            room._accept(frame)
            return  # the answer to presence()
        if not room._accept(frame):
            return  # already delivered before a reconnect
        self._incoming.put_nowait(frame if room is first else (frame, room))

    def _rejoining(self, entry: _Pending) -> bool:
        """Whether `entry`'s room is one the client holds, joined again after the reconnect
        (its join may still be on its way, or asked again after `unavailable`)."""
        room = self._rooms.get(str(entry.frame.get("room")))
        return room is not None and not room.left and room is not self._url_room

    def _answer(self, entry: _Pending, frame: Frame, topic: str) -> None:
        """Settle a request with its `ack` or `error`; a `timeout` error (the outcome is
        unknown) sends a resendable request again instead."""
        future = entry.future
        if future.done():
            return
        if topic == "ack":
            if entry.answered:
                future.set_result(self._last_answer)
                return
            offset = frame.payload.get("offset")
            future.set_result(offset if isinstance(offset, int) else None)
            return
        code, message = _error_of(frame)
        if entry.resend and (
            code == "timeout"
            or (code == "unavailable" and entry.uncertain)
            or (code == "not_joined" and entry.uncertain and self._rejoining(entry))
        ):
            # The first attempt may have published: only an answer to the same key can say.
            # `unavailable` (the broker is down meanwhile) is retried after a backoff, and so
            # is `not_joined` of a room being joined again after the reconnect.
            delay = 0.0
            if code != "timeout":
                delay = self._backoff.delay(Reconnect.BACKOFF, entry.uncertain - 1, self._rng)
            entry.uncertain += 1
            self._resend(entry, delay)
            return
        future.set_exception(RequestError(code, message, _payload_id(frame)))

    async def _dispatch(self) -> None:
        """Hand frames to handlers or to the inbox, one at a time, in arrival order."""
        try:
            while True:
                item = await self._incoming.get()
                if item is None:
                    if self._final is not None:
                        break
                    continue
                for room in list(self._rooms.values()):
                    for frame, handler in room._take_due():
                        await _call(handler, frame)
                if isinstance(item, tuple):
                    frame, room = item
                    for handler in self._handlers.get(frame.topic, []) + self._handlers.get(
                        "*", []
                    ):
                        await _call(handler, frame)
                    for handler in room._targets(frame):
                        await _call(handler, frame)
                    continue
                if not isinstance(item, Frame):
                    await _call(item)
                    continue
                handlers = self._handlers.get(item.topic, []) + self._handlers.get("*", [])
                first = self._url_room
                if first is not None and item.room == first.id:
                    handlers += first._targets(item)
                if handlers:
                    for handler in handlers:
                        await _call(handler, item)
                    continue
                if not self._iterating and len(self._inbox) >= self._max_queue:
                    self._inbox.popleft()
                self._inbox.append(item)
                self._inbox_ready.set()
        finally:
            self._end_inbox()

    def _end_inbox(self) -> None:
        self._drained = True
        self._inbox_ready.set()


async def _call(function: Callable[..., Any], *args: Any) -> None:
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("a client callback failed")


def _frame(
    topic: str,
    payload: Any,
    to: str | None,
    frame_id: int | None,
    room: str | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic must be a non-empty string")
    if payload is None:
        raise ValueError("payload must not be None")
    frame: dict[str, Any] = {"topic": topic, "payload": payload}
    if to is not None:
        frame["to"] = to
    if frame_id is not None:
        frame["id"] = frame_id
    if room is not None:
        frame["room"] = room
    if not echo:
        frame["echo"] = False
    return frame


def _decode(raw: str | bytes) -> Frame | None:
    try:
        return parse_frame(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError):
        logger.warning("ignored a frame that is not a JSON object with a topic")
        return None


def _payload_id(frame: Frame) -> str | int | None:
    payload = frame.payload
    frame_id = payload.get("id") if isinstance(payload, dict) else None
    return frame_id if isinstance(frame_id, str | int) else None


def _error_of(frame: Frame) -> tuple[str, str]:
    payload = frame.payload if isinstance(frame.payload, dict) else {}
    return str(payload.get("code", "internal")), str(payload.get("message", ""))


def _token_expiry(token: str | None) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (None for other tokens)."""
    parts = token.split(".") if token else []
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _ws_url(url: str) -> str:
    """The endpoint URL, by the rule both clients follow: a path ending in `/api/v1/ws` is
    kept, any other path is a base to which `/api/v1/ws` is added (`ws://HOST:PORT`,
    `http://HOST:PORT/rt`); `http(s)://` becomes `ws(s)://`; the query is kept."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path.endswith(WS_PATH) else parts.path.rstrip("/") + WS_PATH
    result = urlunsplit(parts._replace(scheme=scheme, path=path, fragment=""))
    try:
        parse_uri(result)
    except InvalidURI as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
    return result
