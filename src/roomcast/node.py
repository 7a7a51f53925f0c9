"""The node: one roomcast process's core, where broker traffic arrives and commands run.

It owns the local rooms, the topic registry, the command and event buses and the broker, and
knows no web framework: transports hand it connections (see session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from .auth import IdentityResolver
from .brokers import Broker, HistoryPage, Publication, Signal, from_url
from .codes import CloseCode, ErrorCode
from .commands import CommandBus, KickMember, PublishToRoom, SendToMember
from .errors import MemberNotFound
from .events import EventBus, MemberLeft, MessagePublished
from .limits import ConnectionLimits
from .log import log_event, redact_url
from .metrics import Metrics
from .protocol import message_prefix, presence_frame
from .registry import TopicRegistry
from .rooms import LocalRooms, Member, MemberHandle
from .settings import Settings

__all__ = ["Node"]


_REPAIR_ROUNDS = 10
"""History reads one repair may take before the room's members are told to reconnect."""


@dataclass(slots=True)
class _Position:
    """How far this node has delivered a room: a live offset that is not `offset + 1`
    (a message lost across a broker reconnect) is noticed and repaired from history."""

    epoch: str
    offset: int
    pending: list[Publication] | None = None
    """Live messages that arrived while a gap is being repaired (None when not repairing)."""


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
        self.broker: Broker = (
            broker
            if broker is not None
            else from_url(
                settings.broker,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl,
                presence_ttl=settings.presence_ttl,
            )
        )
        self.resolver: IdentityResolver = resolver or _default_resolver(settings)
        self.registry = registry if registry is not None else TopicRegistry(relay=settings.relay)
        self.commands = CommandBus()
        self.events = EventBus()
        self.metrics = Metrics()
        self.rooms = LocalRooms()
        """Local members by room: written only by :meth:`attach` and :meth:`detach`."""
        self.connections: dict[str, MemberHandle] = {}
        """Open connections by connection id: written only by :meth:`open` and :meth:`closed`."""
        self.limits = ConnectionLimits.from_settings(settings)
        self.accepting = True
        self._subscriptions: dict[str, asyncio.Future[None]] = {}
        self._positions: dict[str, _Position] = {}
        self._started = False
        self._start_lock = asyncio.Lock()
        self._broker_up = asyncio.Event()
        """Set while the broker says it is available (`on_broker_state`)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publishing = 0
        self._published: asyncio.Future[None] | None = None
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
                log_event(
                    "node.started", node_id=self.node_id, broker=redact_url(self.settings.broker)
                )

    async def shutdown(
        self, code: CloseCode = CloseCode.SERVICE_RESTART, timeout: float | None = None
    ) -> None:
        """Stop accepting, leave presence, let frames being handled finish, close every
        connection with `code`, let publishes in flight finish, disconnect the broker.

        Each step waits a bounded share of `timeout` (default `settings.shutdown_timeout`).
        """
        if not self.accepting:
            return
        self.accepting = False
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_timeout if timeout is None else timeout
        deadline = loop.time() + budget

        def share(part: float) -> float:
            return max(0.0, min(deadline - loop.time(), budget * part))

        sessions = list(self.connections.values())
        if sessions:
            # Presence first, so that every node announces the leaves now, not after a lease.
            await _wait_all([s.leave("shutdown") for s in sessions], share(0.3))
            await _wait_all([s.wait_idle() for s in sessions if s.dispatching], share(0.3))
            for session in sessions:
                session.close(code, ErrorCode.UNAVAILABLE, "server shutting down", frame=False)
            wait = share(0.2)
            await _wait_all([s.connection_closed(wait) for s in sessions], wait)
        if self._publishing:
            self._published = loop.create_future()
            await _wait_all([asyncio.shield(self._published)], share(0.5))
        await self.events.drain(share(1.0))
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

    # connections and rooms on this node: the node alone writes its indexes and gauges

    def open(self, connection_id: str, handle: MemberHandle) -> None:
        """Count a connection that was admitted (it may be in no room yet)."""
        self.connections[connection_id] = handle
        self.metrics.connections.inc()

    def closed(self, connection_id: str) -> None:
        """Forget a connection that has left every room."""
        if self.connections.pop(connection_id, None) is not None:
            self.metrics.connections.dec()

    async def attach(self, member: Member, *, share: bool = False) -> None:
        """Put `member` into its local room (beside the user's other connections there with
        `share`) and make sure the node hears that room.

        Raises:
            BrokerUnavailable: the subscription failed (the member stays attached: the caller
                detaches it as it leaves).
        """
        self.rooms.add(member, share=share)
        self.metrics.rooms.set(len(self.rooms))
        await self.ensure_subscribed(member.room)

    async def detach(self, member: Member) -> None:
        """Take `member` out of its local room; unsubscribe when nobody is left in it."""
        self.rooms.remove(member)
        self.metrics.rooms.set(len(self.rooms))
        await self.release_room(member.room)

    async def ensure_subscribed(self, room: str) -> None:
        """Subscribe this node to `room` once; concurrent joiners wait for the same call."""
        pending = self._subscriptions.get(room)
        if pending is None:
            pending = self._subscriptions[room] = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(room)
                await self._track(room)
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
            self._positions.pop(room, None)
            try:
                await self.broker.unsubscribe(room)
            except Exception:
                log_event("broker.unsubscribe_failed", level=30, room=room, exc_info=True)

    # BrokerListener: where broker traffic arrives

    async def _track(self, room: str) -> None:
        """Learn where a newly subscribed room stands, so that a gap after it is noticed."""
        if room not in self._positions:
            page = await self.broker.history(room, None, 0)
            self._positions.setdefault(room, _Position(page.epoch, page.offset))

    def on_publication(self, publication: Publication) -> None:
        """Deliver a room message to the local members it is for, in offset order; a gap
        (or another epoch) is repaired from history before anything after it is delivered."""
        local = self.rooms.get(publication.room)
        if local is None:
            return
        position = self._positions.get(publication.room)
        if position is not None and publication.epoch:
            if position.pending is not None:
                position.pending.append(publication)
                return
            if publication.epoch != position.epoch or publication.offset > position.offset + 1:
                position.pending = [publication]
                self.spawn(self._repair(publication.room, position))
                return
            if publication.offset <= position.offset:
                return
            position.offset = publication.offset
        self._deliver(publication)

    def _deliver(self, publication: Publication) -> None:
        local = self.rooms.get(publication.room)
        if local is None:
            return
        if publication.to is None:
            self.metrics.frames_out.inc(local.fan_out(publication.offset, publication.frame))
        else:
            for member in local.all_of(publication.to):
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
        if signal.kind == "replace":
            # The newer connection already took the username's place in the local room, so the
            # replaced one is found by its connection id, not by its name.
            handle = self.connections.get(signal.connection_id)
            replaced = None if handle is None else handle.membership(signal.room)
            if replaced is not None and replaced.username == signal.username and handle:
                self.spawn(handle.remove(replaced, "replaced"))
            return
        if signal.kind == "kick":
            for member in local.all_of(signal.username):
                if member.handle is not None:
                    self.spawn(member.handle.remove(member, "kicked"))

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        """Announce the members of a dead node as gone (this node was chosen to do it)."""
        local = self.rooms.get(room)
        for username in usernames:
            if local is not None:
                local.broadcast(presence_frame("leave", room, username), exclude=username)
            self.events.publish(MemberLeft(room, username, "", node_id, "node_lost"))
            log_event("presence.lost", room=room, username=username, node_id=node_id)

    async def broker_available(self) -> None:
        """Return once the broker is available (at once when it is)."""
        if not self.broker.available:
            await self._broker_up.wait()

    def on_broker_state(self, available: bool) -> None:
        """Log broker availability changes; once back, repair every room from history (what
        was published while this node could not hear it)."""
        if available:
            self._broker_up.set()
        else:
            self._broker_up.clear()
        log_event(
            "broker.available" if available else "broker.unavailable",
            level=20 if available else 40,
            node_id=self.node_id,
        )
        if available:
            for room, position in self._positions.items():
                if position.pending is None:
                    position.pending = []
                    self.spawn(self._repair(room, position))

    async def _repair(self, room: str, position: _Position) -> None:
        """Deliver the messages after `position` from history, then the live ones held
        meanwhile; when history cannot fill the gap, the room's members must reconnect."""
        log_event("room.repair", room=room, node_id=self.node_id, after=position.offset)
        try:
            page: HistoryPage | None = None
            for _ in range(_REPAIR_ROUNDS):
                page = await self.broker.history(room, position.offset)
                if self._positions.get(room) is not position:
                    return
                if page.epoch != position.epoch or not page.complete:
                    self._history_lost(room, page)
                    return
                for publication in page.publications:
                    if publication.offset == position.offset + 1:
                        position.offset = publication.offset
                        self._deliver(publication)
                pending = position.pending or []
                for index, publication in enumerate(pending):
                    if publication.offset <= position.offset and publication.epoch == (
                        position.epoch
                    ):
                        continue
                    if (
                        publication.epoch != position.epoch
                        or publication.offset != position.offset + 1
                    ):
                        position.pending = pending[index:]
                        break
                    position.offset = publication.offset
                    self._deliver(publication)
                else:
                    position.pending = None
                    return
            if page is not None and self._positions.get(room) is position:
                self._history_lost(room, page)  # the gap keeps moving: start the room afresh
        except Exception:
            # Unavailable again: the reconnect (or the next live message) repairs once more.
            position.pending = None
            log_event("room.repair_failed", level=30, room=room, exc_info=True)

    def _history_lost(self, room: str, page: HistoryPage) -> None:
        """The room's history is gone (another epoch, or trimmed past the gap): its local
        members cannot get a gap-free order, so they are told to reconnect and resume."""
        log_event("room.history_lost", level=30, room=room, node_id=self.node_id, epoch=page.epoch)
        self._positions[room] = _Position(page.epoch, page.offset)
        local = self.rooms.get(room)
        for member in local.all() if local is not None else ():
            handle = member.handle
            if handle is not None:
                handle.close(
                    CloseCode.BROKER_UNAVAILABLE,
                    ErrorCode.UNAVAILABLE,
                    "the room's history was lost: reconnect to resume",
                )
                self.spawn(handle.leave("history_lost"))

    # commands

    async def _publish(
        self, room: str, topic: str, payload: Any, sender: str, to: str | None
    ) -> int:
        prefix = message_prefix(topic, payload, room, sender, to)
        self._publishing += 1
        try:
            publication = await self.broker.publish(room, prefix, to)
        except Exception:
            self.metrics.broker_errors.inc()
            raise
        finally:
            self._publishing -= 1
            published = self._published
            if not self._publishing and published is not None and not published.done():
                published.set_result(None)
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
            raise MemberNotFound(f"{command.username!r} is not connected to room {command.room!r}")
        return await self._publish(
            command.room, command.topic, command.payload, command.sender, command.username
        )

    async def _kick_member(self, command: KickMember) -> None:
        if not await self.broker.has_member(command.room, command.username):
            raise MemberNotFound(f"{command.username!r} is not connected to room {command.room!r}")
        await self.broker.signal(
            Signal(
                "kick", command.room, command.username, node_id=self.node_id, reason=command.reason
            )
        )

    # queries

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages of `room` after `since`."""
        return await self.broker.history(room, since, limit)


async def _wait_all(awaitables: list[Any], timeout: float) -> None:
    """Run `awaitables` concurrently; return when all are done or after `timeout` seconds."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def _default_resolver(settings: Settings) -> IdentityResolver:
    # PyJWT and cryptography are imported only by a node that was not given a resolver.
    from .jwt import resolver_from_settings

    return resolver_from_settings(settings)
