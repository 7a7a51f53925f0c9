"""Commands (work to do) and the command bus: one handler per command type.

A command runs on the node where it is sent; its effect reaches other nodes through the broker,
so the same call works on one node and in a cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from .brokers.base import Publication
from .protocol import SERVER_SENDER

__all__ = [
    "Command",
    "CommandBus",
    "KickMember",
    "PublishEphemeral",
    "PublishToRoom",
    "SendToMember",
    "SendWsMessage",
]

R = TypeVar("R")
C = TypeVar("C", bound="Command[Any]")


@dataclass(frozen=True, slots=True)
class Command(Generic[R]):
    """Base of every command; `R` is what sending it returns."""


@dataclass(frozen=True, slots=True)
class PublishToRoom(Command[int]):
    """Publish a message to every member of `room`; returns its offset.

    `exclude` names a connection that does not get it (its sender's, for `"echo": false`).
    With `key` (1-128 characters), a second publish to the room with the same key within 300
    seconds, from anywhere in the cluster (frames, the HTTP API and commands share the room's
    keys), publishes nothing and returns the first one's offset.
    """

    room: str
    topic: str
    payload: Any
    sender: str = SERVER_SENDER
    exclude: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SendToMember(Command[int]):
    """Send a message to member `username` of `room`, wherever it is connected; returns its offset.

    Raises `MemberNotFound` when the member is connected nowhere. `key` works as for
    :class:`PublishToRoom` (in the same room's keys).
    """

    room: str
    username: str
    topic: str
    payload: Any
    sender: str = SERVER_SENDER
    exclude: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class PublishEphemeral(Command[Publication | None]):
    """Deliver a message of an ephemeral topic to `room` (or to its member `to`): no offset,
    not retained, not replayed (docs/protocol.md, section 10).

    Answers None. With `key`, a repeat of a key published to the room within the
    idempotency window delivers nothing and answers the first publish's publication
    (`duplicate` set; `offset` 0 when that one was ephemeral too).

    Raises `MemberNotFound` when `to` is given and connected nowhere (and `key` was not
    published within the window).
    """

    room: str
    topic: str
    payload: Any
    sender: str = SERVER_SENDER
    to: str | None = None
    exclude: str | None = None
    key: str | None = None


SendWsMessage = SendToMember
"""The name this command had in the system roomcast replaces."""


@dataclass(frozen=True, slots=True)
class KickMember(Command[None]):
    """Disconnect member `username` of `room` wherever it is (close code 4499).

    Raises `MemberNotFound` when the member is connected nowhere.
    """

    room: str
    username: str
    reason: str = "kicked"


class CommandBus:
    """Routes each command to the one handler registered for its type."""

    def __init__(self) -> None:
        self._handlers: dict[type[Command[Any]], Callable[[Any], Awaitable[Any]]] = {}

    def register(self, command_type: type[C], handler: Callable[[C], Awaitable[Any]]) -> None:
        """Make `handler` the handler of `command_type`.

        Raises:
            ValueError: when that type already has a handler.
        """
        if command_type in self._handlers:
            raise ValueError(f"{command_type.__name__} already has a handler")
        self._handlers[command_type] = handler

    async def send(self, command: Command[R]) -> R:
        """Run `command` through its handler and return the handler's result.

        Raises:
            LookupError: when no handler is registered for the command's type.
        """
        handler = self._handlers.get(type(command))
        if handler is None:
            raise LookupError(f"no handler registered for {type(command).__name__}")
        return cast(R, await handler(command))
