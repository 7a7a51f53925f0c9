"""Events (what happened) and the event bus that application code subscribes to.

Events are published on the node where they happen; a dead node's member-left events are
published once, by the surviving node that removed its members. `RoomOccupied` and
`RoomVacated` are cluster-wide too: published once, by the node whose member event opened or
closed the room's occupancy (webhooks.py decides it, in the broker, beside the outbox).

The same events are what webhooks send (docs/webhooks.md): `webhooks.record` gives each its
JSON form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .log import log_event

__all__ = [
    "Event",
    "EventBus",
    "MemberJoined",
    "MemberLeft",
    "MessagePublished",
    "RoomOccupied",
    "RoomVacated",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event."""

    room: str


@dataclass(frozen=True, slots=True)
class MemberJoined(Event):
    """A member joined `room` (on node `node_id`)."""

    username: str
    connection_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberLeft(Event):
    """A member left `room`; `reason` says why (closed, kicked, replaced, node_lost, ...)."""

    username: str
    connection_id: str
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MessagePublished(Event):
    """A message got offset `offset` in `room`; `to` is set when it was for one member."""

    topic: str
    payload: Any
    sender: str
    offset: int
    to: str | None = None


@dataclass(frozen=True, slots=True)
class RoomOccupied(Event):
    """`room` got its first member, cluster-wide (published once, on node `node_id`)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class RoomVacated(Event):
    """`room` lost its last member, cluster-wide (published once, on node `node_id`)."""

    node_id: str


E = TypeVar("E", bound=Event)
EventSink = Callable[[Event], None]
Subscriber = Callable[[Any], Awaitable[None]]


class EventBus:
    """Delivers each event to every subscriber of its type (and of its base types).

    Subscribers run as tasks, so a slow one never holds up the message path; one that raises
    is logged and the others still run.
    """

    def __init__(self) -> None:
        self._subscribers: dict[type[Event], list[Subscriber]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wants: dict[type[Event], bool] = {}
        self._sink: EventSink | None = None
        self._sink_types: frozenset[type[Event]] = frozenset()

    def tap(self, sink: EventSink | None, types: frozenset[type[Event]] = frozenset()) -> None:
        """Hand every event of `types` to `sink`, synchronously and in publish order, before
        the subscribers (the webhooks outbox: it must see events in the order they
        happened); None removes the tap."""
        self._sink = sink
        self._sink_types = types if sink is not None else frozenset()
        self._wants.clear()

    def subscribe(
        self, event_type: type[E], handler: Callable[[E], Awaitable[None]]
    ) -> Callable[[], None]:
        """Call `handler` for every event of `event_type`; returns a function that unsubscribes."""
        handlers = self._subscribers.setdefault(event_type, [])
        handlers.append(handler)
        self._wants.clear()

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)
                self._wants.clear()

        return unsubscribe

    def on(
        self, event_type: type[E]
    ) -> Callable[[Callable[[E], Awaitable[None]]], Callable[[E], Awaitable[None]]]:
        """Decorator form of :meth:`subscribe`."""

        def register(handler: Callable[[E], Awaitable[None]]) -> Callable[[E], Awaitable[None]]:
            self.subscribe(event_type, handler)
            return handler

        return register

    def wants(self, event_type: type[Event]) -> bool:
        """Whether anything subscribes to `event_type` (lets the hot path skip building it)."""
        wanted = self._wants.get(event_type)
        if wanted is None:
            wanted = self._wants[event_type] = event_type in self._sink_types or any(
                self._subscribers.get(t) for t in event_type.__mro__ if issubclass(t, Event)
            )
        return wanted

    def publish(self, event: Event) -> None:
        """Schedule every subscriber of `event`; returns at once."""
        if self._sink is not None and type(event) in self._sink_types:
            self._sink(event)
        for cls in type(event).__mro__:
            for handler in self._subscribers.get(cls, ()):
                task = asyncio.get_running_loop().create_task(self._run(handler, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Subscriber, event: Event) -> None:
        try:
            await handler(event)
        except Exception:
            log_event(
                "event.subscriber_error",
                level=40,
                event_type=type(event).__name__,
                room=event.room,
                handler=getattr(handler, "__qualname__", repr(handler)),
                exc_info=True,
            )

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for running subscribers to finish."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
