"""The node: one roomcast process's core, where broker traffic arrives and commands run.

It owns the local rooms, the topic registry, the command and event buses and the broker, and
knows no web framework: transports hand it connections (see session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from .auth import AnonymousResolver, IdentityResolver
from .brokers import Broker, HistoryPage, Publication, Signal, create_broker
from .codes import CloseCode, ErrorCode
from .commands import CommandBus, KickMember, PublishToRoom, SendToMember
from .errors import MemberNotFound
from .events import EventBus, MemberLeft, MessagePublished
from .log import log_event
from .metrics import Metrics
from .protocol import message_prefix, presence_frame
from .registry import TopicRegistry
from .rooms import LocalRooms
from .settings import Settings

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Node"]


class Node:
    """The core of one roomcast node.

    Args:
        settings: the node's configuration.
        broker: the broker to use; built from `settings.broker` when None.
        resolver: resolves identities; the JWT resolver when `settings` configure a key,
            else the anonymous one.
        registry: the topic registry; a new one (relaying per `settings.relay`) when None.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | None = None,
        resolver: IdentityResolver | None = None,
        registry: TopicRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.broker: Broker = broker if broker is not None else create_broker(settings)
        self.resolver: IdentityResolver = resolver or _default_resolver(settings)
        self.registry = registry if registry is not None else TopicRegistry(relay=settings.relay)
        self.commands = CommandBus()
        self.events = EventBus()
        self.metrics = Metrics()
        self.rooms = LocalRooms()
        self.sessions: dict[str, Session] = {}
        self.accepting = True
        self._subscriptions: dict[str, asyncio.Future[None]] = {}
        self._started = False
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.commands.register(PublishToRoom, self._publish_to_room)
        self.commands.register(SendToMember, self._send_to_member)
        self.commands.register(KickMember, self._kick_member)

    # lifecycle

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has completed."""
        return self._started

    async def start(self) -> None:
        """Connect the broker; safe to call more than once."""
        async with self._start_lock:
            if not self._started:
                await self.broker.start(self.node_id, self)
                self._started = True
                log_event("node.started", node_id=self.node_id, broker=_safe_url(self.settings))

    async def shutdown(self, code: CloseCode = CloseCode.SERVICE_RESTART) -> None:
        """Stop accepting, close every connection with `code`, leave presence, disconnect."""
        if not self.accepting:
            return
        self.accepting = False
        sessions = list(self.sessions.values())
        for session in sessions:
            session.close(code, ErrorCode.UNAVAILABLE, "server shutting down", frame=False)
        timeout = self.settings.shutdown_timeout
        if sessions:
            await asyncio.wait(
                [asyncio.ensure_future(s.leave("shutdown")) for s in sessions],
                timeout=timeout / 2,
            )
            await asyncio.wait(
                [asyncio.ensure_future(s.connection_closed(timeout / 4)) for s in sessions],
                timeout=timeout / 4,
            )
        await self.events.drain(timeout / 4)
        if self._started:
            with contextlib.suppress(Exception):
                await self.broker.close()
            self._started = False
        log_event("node.stopped", node_id=self.node_id, connections=len(sessions))

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # rooms on this node

    async def ensure_subscribed(self, room: str) -> None:
        """Subscribe this node to `room` once; concurrent joiners wait for the same call."""
        pending = self._subscriptions.get(room)
        if pending is None:
            pending = self._subscriptions[room] = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(room)
            except BaseException as exc:
                del self._subscriptions[room]
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: the joiner re-raises it below
                raise
            pending.set_result(None)
        await asyncio.shield(pending)

    async def release_room(self, room: str) -> None:
        """Unsubscribe from `room` once no local member is left in it."""
        if self.rooms.get(room) is None and self._subscriptions.pop(room, None) is not None:
            try:
                await self.broker.unsubscribe(room)
            except Exception:
                log_event("broker.unsubscribe_failed", level=30, room=room, exc_info=True)

    # BrokerListener: where broker traffic arrives

    def on_publication(self, publication: Publication) -> None:
        """Deliver a room message to the local members it is for."""
        local = self.rooms.get(publication.room)
        if local is None:
            return
        if publication.to is None:
            self.metrics.frames_out.inc(local.fan_out(publication.offset, publication.frame))
        else:
            member = local.members.get(publication.to)
            if member is not None:
                member.deliver(publication.offset, publication.frame)
                self.metrics.frames_out.inc()

    def on_signal(self, signal: Signal) -> None:
        """Apply a presence change or a close order to local members."""
        local = self.rooms.get(signal.room)
        if local is None:
            return
        if signal.kind in ("join", "leave"):
            frame = presence_frame(signal.kind, signal.room, signal.username)
            self.metrics.frames_out.inc(local.broadcast(frame, exclude=signal.username))
            return
        member = local.members.get(signal.username)
        if member is None:
            return
        session = self.sessions.get(member.connection_id)
        if session is None:
            return
        if signal.kind == "kick":
            session.close(CloseCode.KICKED, ErrorCode.KICKED, "kicked by the server")
            self.spawn(session.leave("kicked"))
        elif signal.kind == "replace" and member.connection_id == signal.connection_id:
            session.close(
                CloseCode.DUPLICATE, ErrorCode.DUPLICATE, "replaced by a newer connection"
            )
            self.spawn(session.leave("replaced"))

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        """Announce the members of a dead node as gone (this node was chosen to do it)."""
        local = self.rooms.get(room)
        for username in usernames:
            if local is not None:
                local.broadcast(presence_frame("leave", room, username), exclude=username)
            self.events.publish(MemberLeft(room, username, "", node_id, "node_lost"))
            log_event("presence.lost", room=room, username=username, node_id=node_id)

    def on_broker_state(self, available: bool) -> None:
        """Log broker availability changes."""
        log_event("broker.available" if available else "broker.unavailable",
                  level=20 if available else 40, node_id=self.node_id)

    # commands

    async def _publish(
        self, room: str, topic: str, payload: Any, sender: str, to: str | None
    ) -> int:
        prefix = message_prefix(topic, payload, room, sender, to)
        try:
            publication = await self.broker.publish(room, prefix, to)
        except Exception:
            self.metrics.broker_errors.inc()
            raise
        self.metrics.publications.inc()
        if self.events.wants(MessagePublished):
            self.events.publish(
                MessagePublished(room, topic, payload, sender, publication.offset, to)
            )
        return publication.offset

    async def _publish_to_room(self, command: PublishToRoom) -> int:
        return await self._publish(
            command.room, command.topic, command.payload, command.sender, None
        )

    async def _send_to_member(self, command: SendToMember) -> int:
        if self.rooms.find(command.room, command.username) is None and not (
            await self.broker.has_member(command.room, command.username)
        ):
            raise MemberNotFound(
                f"{command.username!r} is not connected to room {command.room!r}"
            )
        return await self._publish(
            command.room, command.topic, command.payload, command.sender, command.username
        )

    async def _kick_member(self, command: KickMember) -> None:
        if not await self.broker.has_member(command.room, command.username):
            raise MemberNotFound(
                f"{command.username!r} is not connected to room {command.room!r}"
            )
        await self.broker.signal(
            Signal("kick", command.room, command.username, node_id=self.node_id,
                   reason=command.reason)
        )

    # queries

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages of `room` after `since`."""
        return await self.broker.history(room, since, limit)


def _default_resolver(settings: Settings) -> IdentityResolver:
    if settings.auth_enabled:
        from .jwt import JwtResolver

        return JwtResolver.from_settings(settings)
    return AnonymousResolver()


def _safe_url(settings: Settings) -> str:
    """The broker URL without a password."""
    url = settings.broker
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
