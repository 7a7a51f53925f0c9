"""Send commands to a roomcast cluster from a process that holds no connections.

A web request handler or a background job publishes to rooms, messages one member or kicks one
through the same broker the servers share::

    async with roomcast.Publisher("redis://127.0.0.1:6379/0") as publisher:
        await publisher.publish("r1", "news", {"text": "hello"})
        await publisher.send(SendToMember("r1", "alice", "note", 1))

It runs the same command handlers as a server node (`Node`), with a broker that holds no
lease, no presence and no subscription.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import Any, TypeVar

from .brokers import Broker, from_url, is_shared
from .commands import Command, KickMember, PublishToRoom, SendToMember
from .errors import ConfigError
from .node import Node
from .protocol import validate_key, validate_name, validate_topic
from .settings import Settings

__all__ = ["Publisher"]

R = TypeVar("R")


class Publisher:
    """Sends `PublishToRoom`, `SendToMember` and `KickMember` through a shared broker.

    Args:
        broker: a `redis://HOST:PORT/DB` URL (the one the servers use), or a broker instance.
        settings: the servers' settings; `history_size`, `history_ttl` and the room classes
            apply to what this publisher publishes, so they should match the servers'.
    """

    def __init__(self, broker: str | Broker, *, settings: Settings | None = None) -> None:
        if isinstance(broker, str):
            if not is_shared(broker):
                raise ConfigError(
                    f"a Publisher needs a shared broker (redis://HOST:PORT/DB), got {broker!r}"
                )
            if settings is None:
                settings = Settings(
                    broker=broker, node_id=f"publisher-{socket.gethostname()}-{os.getpid()}"
                )
            else:
                settings = settings.replace(broker=broker)
            instance = from_url(
                broker,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl,
                presence_ttl=settings.presence_ttl,
                presence=False,
                classes=settings.resolve_classes(),
            )
        else:
            instance = broker
        self.node = Node(settings or Settings(), broker=instance)

    async def start(self) -> None:
        """Connect (done on first use otherwise)."""
        await self.node.start()

    async def close(self) -> None:
        """Disconnect from the broker."""
        await self.node.shutdown()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, command: Command[R]) -> R:
        """Run a command (as `Roomcast.send` does on a server) and return its result.

        Raises:
            MemberNotFound: the addressed member is connected nowhere in the cluster.
            BrokerUnavailable: the broker cannot be reached (the command was not carried out).
            BrokerTimeout: the broker stopped answering after a publish was sent to it (it
                may or may not have been published).
        """
        if not self.node.started:
            await self.node.start()
        return await self.node.commands.send(command)

    async def publish(self, room: str, topic: str, payload: Any, *, key: str | None = None) -> int:
        """Publish to every member of `room`; returns the message's offset.

        With `key` (1-128 characters), a retry after `BrokerTimeout` publishes at most once:
        a repeat within 300 seconds returns the first one's offset (see `PublishToRoom`).
        """
        return await self.send(
            PublishToRoom(
                validate_name(room, "roomID"),
                validate_topic(topic),
                payload,
                key=None if key is None else validate_key(key),
            )
        )

    async def send_to(self, room: str, username: str, topic: str, payload: Any) -> int:
        """Send to member `username` of `room` wherever it is connected; returns the offset."""
        return await self.send(
            SendToMember(
                validate_name(room, "roomID"),
                validate_name(username, "username"),
                validate_topic(topic),
                payload,
            )
        )

    async def kick(self, room: str, username: str, reason: str = "kicked") -> None:
        """Disconnect member `username` of `room` (close code 4499) wherever it is."""
        await self.send(
            KickMember(validate_name(room, "roomID"), validate_name(username, "username"), reason)
        )
