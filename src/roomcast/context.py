"""The context a topic handler receives for one frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .commands import CommandBus, PublishToRoom, SendToMember
from .events import EventBus
from .protocol import FrameId, server_frame

if TYPE_CHECKING:
    from .rooms import Member

__all__ = ["Context"]


@dataclass(slots=True)
class Context:
    """One client frame as a handler sees it, with ways to answer.

    Attributes:
        topic: the frame's topic.
        payload: the frame's payload (any JSON value but null).
        id: the frame's `id`, or None.
        to: the frame's `to`, or None.
        member: the sender's membership of the frame's room (username, room, connection id,
            claims).
        commands: the node's command bus (`PublishToRoom`, `SendToMember`, `KickMember`).
        events: the node's event bus.
        offset: the offset of the last message the frame's handlers published through
            :meth:`publish` or :meth:`send_to`, or None; the frame's `ack` carries it.
        key: the frame's idempotency `key`, or None. The client libraries put one on every
            frame with an `id` and resend it after a reconnect; a handler publishes at most
            once per key by passing it on: ``await ctx.publish(topic, payload, key=ctx.key)``.
    """

    topic: str
    payload: Any
    id: FrameId | None
    to: str | None
    member: Member
    commands: CommandBus
    events: EventBus
    offset: int | None = None
    key: str | None = None

    @property
    def username(self) -> str:
        """The sender's username."""
        return self.member.username

    @property
    def room(self) -> str:
        """The sender's room."""
        return self.member.room

    def reply(self, topic: str, payload: Any) -> None:
        """Send a frame to the sender's connection only (no offset, not retained)."""
        self.member.connection.send(server_frame(topic, payload))

    async def publish(self, topic: str, payload: Any, *, key: str | None = None) -> int:
        """Publish to the sender's room, `from` the sender; returns the offset.

        With `key`, a repeat within 300 seconds publishes nothing and returns the first
        offset (see `PublishToRoom`)."""
        self.offset = await self.commands.send(
            PublishToRoom(self.member.room, topic, payload, sender=self.member.username, key=key)
        )
        return self.offset

    async def broadcast(self, topic: str, payload: Any) -> int:
        """The former name of :meth:`publish`, kept for existing handlers."""
        return await self.publish(topic, payload)

    async def send_to(
        self, username: str, topic: str, payload: Any, *, key: str | None = None
    ) -> int:
        """Send to one member of the sender's room, `from` the sender; returns the offset
        (`key` as for :meth:`publish`).

        Raises:
            MemberNotFound: when that member is connected nowhere.
        """
        self.offset = await self.commands.send(
            SendToMember(
                self.member.room, username, topic, payload, sender=self.member.username, key=key
            )
        )
        return self.offset
