"""The seam between the core and a transport: a connection that takes text and a close code.

A transport wraps its socket in an object satisfying :class:`Connection`. `send` never blocks:
fan-out calls it once per member with the same string, so it must only queue. :class:`Outbox`
is the queue that transports without a synchronous write (ASGI) put in front of their socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

__all__ = ["Connection", "Outbox", "send_later_to_all"]


class Connection(Protocol):
    """What the core needs of one client connection."""

    def send(self, data: str) -> None:
        """Queue one text frame; never blocks. Ignored once the connection is closing."""

    def send_later(self, data: str) -> None:
        """Queue one text frame that may wait a few milliseconds to share its write with the
        frames after it (presence); it keeps its place among them. A transport without such
        a window sends it as :meth:`send` does."""

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued are written; never blocks."""

    def abort(self, code: int, reason: str = "") -> None:
        """Close at once, dropping queued frames (a slow consumer)."""

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet written."""


def send_later_to_all(connections: list[Connection], data: str) -> None:
    """`send_later(data)` on each of `connections` (a room's presence frame), in one call of
    their transport when the first one's class has a `send_later_to_all` of its own (which
    takes connections of any class): a join is one frame for every member of its room."""
    together = getattr(type(connections[0]), "send_later_to_all", None)
    if together is not None:
        together(connections, data)
        return
    for connection in connections:
        connection.send_later(data)


_CLOSE = object()
# Every outbox's queue until its first frame: shared and always empty, because a deque costs
# a 0.5 KiB block and most connections, written to directly, never queue anything.
_NO_QUEUE: deque[str | object] = deque(maxlen=0)


async def _write_nothing(data: str) -> None:
    """A detached outbox's writer."""


async def _close_nothing(code: int, reason: str) -> None:
    """A detached outbox's closer."""


def _nothing() -> None:
    """A detached outbox's overflow callback."""


class Outbox:
    """A bounded, byte-counted queue of text frames drained by one writer task.

    When the queued bytes exceed `max_bytes`, `on_overflow` is called once (the session closes
    the connection with 4408): a member that cannot keep up never delays the others.

    Args:
        write: sends one text frame on the socket (may wait for the peer).
        close: sends the close frame.
        max_bytes: bytes queued before `on_overflow` fires.
        on_overflow: called once when the queue overflows.
    """

    __slots__ = (
        "_close",
        "_closing",
        "_on_demand",
        "_on_overflow",
        "_queue",
        "_size",
        "_waiter",
        "_write",
        "allowance",
        "max_bytes",
        "task",
    )

    def __init__(
        self,
        write: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        max_bytes: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._write = write
        self._close = close
        self._on_overflow = on_overflow
        self.max_bytes = max_bytes
        # Bytes allowed above `max_bytes` for now (a replay); 0 once drained below it. While
        # it is not 0, frames go through the queue, which notices the drain.
        self.allowance = 0
        self._queue = _NO_QUEUE
        self._size = 0
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None
        self._on_demand = False
        self.task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        """Characters queued and not yet written (bytes for ASCII text)."""
        return self._size

    def detach(self) -> None:
        """Let go of the callbacks once the connection is done (they are usually its owner's
        methods: a reference cycle the garbage collector would have to find)."""
        self._write = _write_nothing
        self._close = _close_nothing
        self._on_overflow = _nothing

    @property
    def closing(self) -> bool:
        """Whether close or abort was called."""
        return self._closing

    @property
    def idle(self) -> bool:
        """Whether the writer is parked with nothing queued: a frame written to the socket
        directly now cannot overtake one queued earlier."""
        return (
            (self._waiter is not None or (self.task is None and self._on_demand))
            and not self._queue and not self._closing and not self.allowance
        )  # fmt: skip

    def start(self) -> None:
        """Start the writer task."""
        self.task = asyncio.get_running_loop().create_task(self._run())

    def start_on_demand(self) -> None:
        """Start the writer task when the first frame is queued: a connection whose frames
        are all written directly never holds a task (a task per idle connection is memory)."""
        self._on_demand = True

    def send(self, data: str) -> None:
        """Queue `data`; fires `on_overflow` when the queue grows past `max_bytes`."""
        if self._closing:
            return
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        queue.append(data)
        self._size += len(data)
        if self._size > self.max_bytes + self.allowance:
            self._on_overflow()
            return
        self._wake()

    def allow(self, extra: int) -> None:
        """Let the queue hold `extra` more bytes until it drains below `max_bytes` again: a
        replay of retained messages (bounded by the history) must not count as a slow
        consumer."""
        self.allowance += extra

    def close(self, code: int, reason: str = "") -> None:
        """Write what is queued, then the close frame."""
        if self._closing:
            return
        self._closing = True
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        queue.append(_CLOSE)
        queue.append((code, reason))
        self._wake()

    def abort(self, code: int, reason: str = "") -> None:
        """Drop what is queued and send the close frame as soon as the socket takes it."""
        self._queue.clear()
        self._size = 0
        self._closing = False
        self.close(code, reason)
        task = self.task
        if task is not None and not task.done() and self._waiter is None:
            # The writer is blocked on a write that may never finish (the peer stopped
            # reading): restart it, so that the close goes out now. Transports cancel a write
            # only where it has written nothing (uvicorn waits for `writable` before writing).
            task.cancel()
            self.start()

    def _wake(self) -> None:
        if self.task is None and self._on_demand:
            self.start()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            queue = self._queue  # still _NO_QUEUE when started before the first frame
            while queue:
                item = queue.popleft()
                if item is _CLOSE:
                    code, reason = cast(tuple[int, str], queue.popleft())
                    with contextlib.suppress(Exception):
                        await self._close(code, reason)
                    return
                text = cast(str, item)
                self._size -= len(text)
                if self.allowance and self._size <= self.max_bytes:
                    self.allowance = 0
                try:
                    await self._write(text)
                except Exception:
                    queue.clear()
                    self._size = 0
                    return
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_closed(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the writer to finish."""
        if self.task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
