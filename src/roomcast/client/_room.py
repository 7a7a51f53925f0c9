"""A room handle: one of the rooms a client's connection is in (protocol v1.1, section 7)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from ._errors import ClientError
from ._frames import Frame, FrameHandler, HistoryPage

__all__ = ["Room"]

H = TypeVar("H", bound=FrameHandler)


class _Connection(Protocol):
    """What a room needs of its client (:class:`roomcast.client.Client`)."""

    @property
    def connected(self) -> bool: ...

    async def send(
        self,
        topic: str,
        payload: Any,
        to: str | None = None,
        *,
        room: str | None = None,
        echo: bool = True,
    ) -> None: ...

    async def request(
        self,
        topic: str,
        payload: Any,
        to: str | None = None,
        *,
        timeout: float | None = 10.0,
        room: str | None = None,
        echo: bool = True,
    ) -> int | None: ...

    async def history(
        self,
        *,
        before: int | None = None,
        limit: int | None = None,
        room: str | None = None,
        timeout: float | None = 10.0,
    ) -> HistoryPage: ...

    def _drop_room(self, room: Room) -> None: ...

    def _wake_dispatcher(self) -> None: ...


class Room:
    """One room of a client's connection, from ``room = await client.join("r2")``, or the
    URL's room (``client.first_room``).

    It has its own handlers, members, offset and epoch; the client joins it again after
    every reconnect, resuming from its offset, until :meth:`leave` (or a kick). Frames of a
    joined room that arrive before the room has a handler for their topic (the backlog a join
    replays) wait, and go to the first handler registered for that topic, in order; those of
    the URL's room go to the client's handlers and iteration instead.
    """

    def __init__(
        self,
        client: _Connection,
        room_id: str,
        *,
        backlog: int | None,
        since: int | None,
        epoch: str | None,
        max_waiting: int,
        keeps_early: bool = True,
    ) -> None:
        self.id = room_id
        self._keeps_early = keeps_early
        self._client = client
        self._backlog = backlog
        self._offset = since
        self._epoch = epoch
        self._members: list[str] = []
        self._handlers: dict[str, list[FrameHandler]] = {}
        self._waiting: deque[Frame] = deque(maxlen=max_waiting)
        self._due: list[tuple[Frame, FrameHandler]] = []
        self._joined = asyncio.Event()
        self._refused: BaseException | None = None
        self._retries = 0
        """Joins in a row answered `unavailable` after a reconnect (their backoff)."""
        self._on_recovery_failed: (
            Callable[[Room, dict[str, Any]], Awaitable[None] | None] | None
        ) = None
        self.left = False
        """Whether the room was left (:meth:`leave`, or the server removed the connection)."""

    @property
    def members(self) -> list[str]:
        """The room's members as this client knows them (`joined`, then presence frames)."""
        return list(self._members)

    @property
    def offset(self) -> int | None:
        """The offset of the last room message seen (or the room's offset at join)."""
        return self._offset

    @property
    def epoch(self) -> str | None:
        """The epoch of the room's history that `offset` belongs to."""
        return self._epoch

    def on(self, topic: str) -> Callable[[H], H]:
        """Register a handler of this room's frames of `topic` (`"*"`: every topic)."""

        def register(handler: H) -> H:
            self.add_handler(topic, handler)
            return handler

        return register

    def add_handler(self, topic: str, handler: FrameHandler) -> None:
        """Register `handler` for `topic`; frames of that topic that waited go to it first."""
        self._handlers.setdefault(topic, []).append(handler)
        keep: deque[Frame] = deque(maxlen=self._waiting.maxlen)
        for frame in self._waiting:
            if topic == "*" or frame.topic == topic:
                self._due.append((frame, handler))
            else:
                keep.append(frame)
        self._waiting = keep
        if self._due:
            self._client._wake_dispatcher()

    def remove_handler(self, topic: str, handler: FrameHandler) -> None:
        """Unregister a handler; unknown handlers are ignored."""
        handlers = self._handlers.get(topic, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            self._handlers.pop(topic, None)

    async def publish(
        self, topic: str, payload: Any, to: str | None = None, *, echo: bool = True
    ) -> None:
        """Send a frame to this room, or to its member `to`; waits while reconnecting.
        `echo=False`: not delivered back to this connection. It has no `id`: use
        :meth:`request` for a publish that is acknowledged and, across reconnects, neither
        lost nor duplicated."""
        await self._client.send(topic, payload, to, room=self.id, echo=echo)

    async def request(
        self,
        topic: str,
        payload: Any,
        to: str | None = None,
        *,
        timeout: float | None = 10.0,
        echo: bool = True,
    ) -> int | None:
        """Send a frame to this room and wait for the answer, as :meth:`Client.request`
        (with an idempotency key, resent after a reconnect until it is answered)."""
        return await self._client.request(
            topic, payload, to, timeout=timeout, room=self.id, echo=echo
        )

    async def history(
        self, *, before: int | None = None, limit: int | None = None, timeout: float | None = 10.0
    ) -> HistoryPage:
        """A page of this room's retained messages, as :meth:`Client.history`."""
        return await self._client.history(before=before, limit=limit, room=self.id, timeout=timeout)

    async def presence(self, *, timeout: float | None = 10.0) -> list[str]:
        """Ask the server for this room's members, cluster-wide."""
        await self._client.request("presence", {"roomID": self.id}, timeout=timeout)
        return self.members

    async def leave(self, *, timeout: float | None = 10.0) -> None:
        """Leave the room: nothing more of it is delivered, and it is not joined again."""
        self._client._drop_room(self)
        if self._client.connected:
            # not in the room any more, or the connection dropped: left either way
            with contextlib.suppress(ClientError):
                await self._client.request("room.leave", {"roomID": self.id}, timeout=timeout)

    # for the client

    def _join_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"roomID": self.id}
        if self._epoch is not None and self._offset is not None:
            payload.update(since=self._offset, epoch=self._epoch)
        elif self._backlog:
            payload["backlog"] = self._backlog
        return payload

    def _on_joined(self, payload: Any) -> bool | None:
        """Take a `joined` frame's state; returns its `recovered` (None on a first join)."""
        resumed = self._epoch is not None and self._offset is not None
        recovered = payload.get("recovered") if resumed else None
        self._members = [str(m) for m in payload.get("members", [])]
        offset = payload.get("offset")
        if recovered is not True and isinstance(offset, int):
            # a backlog replays messages up to the join's offset: let them through once
            backlog = 0 if resumed else (self._backlog or 0)
            self._offset = max(0, offset - backlog)
            self._epoch = str(payload.get("epoch"))
        self._retries = 0
        self._joined.set()
        return None if recovered is None else bool(recovered)

    def _accept(self, frame: Frame) -> bool:
        """Update the room's state from one of its frames; False for a frame seen already."""
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        if frame.sender is None:
            username = str(payload.get("username"))
            if frame.topic == "presence.join" and username not in self._members:
                self._members.append(username)
            elif frame.topic == "presence.leave" and username in self._members:
                self._members.remove(username)
            elif frame.topic == "presence" and isinstance(payload.get("members"), list):
                self._members = [str(m) for m in payload["members"]]
        if frame.offset is not None:
            if self._offset is not None and frame.offset <= self._offset:
                return False
            self._offset = frame.offset
        return True

    def _targets(self, frame: Frame) -> list[FrameHandler]:
        """The handlers of `frame`, or none after keeping it for a later handler."""
        handlers = self._handlers.get(frame.topic, []) + self._handlers.get("*", [])
        if not handlers and self._keeps_early:
            self._waiting.append(frame)
        return handlers

    def _take_due(self) -> list[tuple[Frame, FrameHandler]]:
        due, self._due = self._due, []
        return due

    async def _wait_joined(self, timeout: float | None) -> None:
        async with asyncio.timeout(timeout):
            await self._joined.wait()
        if self._refused is not None:
            raise self._refused
