"""The node: one roomcast process's core, where commands run.

It owns the local rooms and the open connections (and alone writes them: `open`/`closed`,
`attach`/`detach`), the topic registry, the command and event buses and the broker, and knows
no web framework: transports hand it connections (admission.py, session.py). What the broker
brings arrives in delivery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .auth import IdentityResolver
from .brokers import (
    Broker,
    DeferredPublish,
    HistoryPage,
    ImmediatePublish,
    Publication,
    Signal,
    WebhookOutbox,
    from_url,
)
from .codes import CloseCode, ErrorCode
from .commands import CommandBus, KickMember, PublishEphemeral, PublishToRoom, SendToMember
from .delivery import Delivery
from .errors import ConfigError, MemberNotFound
from .events import EventBus, MessagePublished, RoomOccupied, RoomVacated
from .limits import ConnectionLimits
from .log import log_event, redact_url
from .metrics import Metrics
from .protocol import SERVER_SENDER, ephemeral_frame, message_frame, message_prefix
from .registry import TopicRegistry
from .rooms import LocalRooms, Member, MemberHandle
from .settings import Settings
from .stats import StatsPublisher

if TYPE_CHECKING:
    from .proxy import Proxy
    from .webhooks import Webhooks

__all__ = ["Node"]


class Node:
    """The core of one roomcast node.

    Args:
        settings: the node's configuration.
        broker: the broker to use; built from `settings.broker` when None.
        resolver: resolves identities; the JWT resolver when `settings` configure a key,
            else the anonymous one.
        registry: the topic registry; a new one (relaying per `settings.relay`) when None.
        ephemeral_topics: the ephemeral topics of a room (docs/protocol.md, section 10);
            its room class's `ephemeral_topics` when None.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | None = None,
        resolver: IdentityResolver | None = None,
        registry: TopicRegistry | None = None,
        ephemeral_topics: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.classes = settings.resolve_classes()
        """The room classes: :meth:`RoomClasses.resolve` gives a room's settings."""
        self.ephemeral_topics: Callable[[str], frozenset[str]] = (
            ephemeral_topics or self._class_ephemeral_topics
        )
        """The ephemeral topics of a room (its class's, unless given): relayed without an
        offset, never retained."""
        self.broker: Broker = (
            broker
            if broker is not None
            else from_url(
                settings.broker,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl,
                presence_ttl=settings.presence_ttl,
                classes=self.classes,
            )
        )
        self._publish_now = (
            self.broker.publish_now if isinstance(self.broker, ImmediatePublish) else None
        )
        self._publish_soon = (
            self.broker.publish_soon if isinstance(self.broker, DeferredPublish) else None
        )
        self.metrics = Metrics()
        self.proxy: Proxy | None = None
        """The backend proxy's calls, with any `--proxy-*-url` (proxy.py)."""
        if settings.proxy_connect_url or settings.proxy_join_url or settings.proxy_publish_url:
            from .proxy import Proxy

            self.proxy = Proxy(settings, self.metrics)
        self.resolver: IdentityResolver = resolver or _default_resolver(settings, self.proxy)
        self.registry = registry if registry is not None else TopicRegistry(relay=settings.relay)
        self.commands = CommandBus()
        self.events = EventBus()
        self.rooms = LocalRooms()
        """Local members by room: written only by :meth:`attach` and :meth:`detach`."""
        self.connections: dict[str, MemberHandle] = {}
        """Open connections by connection id: written only by :meth:`open` and :meth:`closed`."""
        self.limits = ConnectionLimits.from_settings(settings)
        self.accepting = True
        self._subscriptions: dict[str, asyncio.Future[None]] = {}
        self.delivery = Delivery(
            self.node_id,
            self.broker,
            self.rooms,
            self.connections,
            self.metrics,
            self.events,
            self.spawn,
            self.classes,
        )
        """The node's BrokerListener: where broker traffic arrives (delivery.py)."""
        self._started = False
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._publishing = 0
        self._published: asyncio.Future[None] | None = None
        self.publish_counts: dict[str, int] | None = None
        """Messages published from this node per room, while the stats publisher counts."""
        self.stats = StatsPublisher(self, settings.stats_interval or 1.0)
        self.webhooks: Webhooks | None = None
        """The webhook outbox writer and sender, while the node runs with webhooks on (or
        with subscribers of `RoomOccupied`/`RoomVacated`)."""
        self.commands.register(PublishToRoom, self._publish_to_room)
        self.commands.register(SendToMember, self._send_to_member)
        self.commands.register(PublishEphemeral, self._publish_ephemeral)
        self.commands.register(KickMember, self._kick_member)

    def _class_ephemeral_topics(self, room: str) -> frozenset[str]:
        return self.classes.resolve(room).ephemeral_topics

    # lifecycle

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has completed."""
        return self._started

    async def start(self) -> None:
        """Connect the broker; safe to call more than once."""
        async with self._start_lock:
            if not self._started:
                await self.broker.start(self.node_id, self.delivery)
                self._start_webhooks()
                self._started = True
                if self.settings.stats_interval is not None:
                    self.stats.start()
                log_event(
                    "node.started", node_id=self.node_id, broker=redact_url(self.settings.broker)
                )

    def _start_webhooks(self) -> None:
        """Webhooks (and the cluster-wide room events) need the broker's outbox; nothing
        runs when neither `--webhook-url` nor a room event subscriber asks for them."""
        events = self.events
        if not (
            self.settings.webhook_url or events.wants(RoomOccupied) or events.wants(RoomVacated)
        ):
            return
        if not isinstance(self.broker, WebhookOutbox):
            raise ConfigError(f"the broker {type(self.broker).__name__} has no webhook outbox")
        from .webhooks import Webhooks

        self.webhooks = Webhooks(self.node_id, self.settings, self.broker, events, self.metrics)
        self.webhooks.start()

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
        if self.webhooks is not None:
            await self.webhooks.stop(share(0.5))
            self.webhooks = None
        await self.events.drain(share(1.0))
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                await self.proxy.close()
        await self.stats.stop()
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

    async def broker_available(self) -> None:
        """Return once the broker is available (at once when it is)."""
        if not self.broker.available:
            await self.delivery.broker_up.wait()

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
                await self.delivery.track(room)
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
            self.delivery.forget(room)
            try:
                await self.broker.unsubscribe(room)
            except Exception:
                log_event("broker.unsubscribe_failed", level=30, room=room, exc_info=True)

    # commands

    async def publish(
        self,
        room: str,
        topic: str,
        payload: Any,
        *,
        sender: str = SERVER_SENDER,
        to: str | None = None,
        exclude: str | None = None,
        key: str | None = None,
    ) -> Publication:
        """Publish to `room` (or to its member `to`): the one path of every room message
        with an offset, which the commands `PublishToRoom` and `SendToMember` take too.
        `exclude` names a connection that does not get it (`"echo": false`).

        Returns the publication; for a `key` published already within the idempotency
        window, the first one's offset with `duplicate` set (nothing was published).

        Raises:
            MemberNotFound: `to` is connected nowhere in the cluster.
            BrokerUnavailable: nothing was published.
            BrokerTimeout: the broker stopped answering: it may or may not have been.
        """
        prefix = message_prefix(topic, payload, room, sender, to)
        if to is not None and (seen := await self._find_member(room, to, key)) is not None:
            offset, epoch = seen
            frame = message_frame(prefix, offset)
            duplicate = Publication(room, offset, frame, to, epoch, duplicate=True)
            return self._published_one(duplicate, topic, payload, sender)
        self._publishing += 1
        try:
            publication = await self.broker.publish(room, prefix, to, exclude, key=key)
        except Exception:
            self.metrics.broker_errors.inc()
            raise
        finally:
            self._publish_ended()
        return self._published_one(publication, topic, payload, sender)

    def publish_soon(
        self,
        room: str,
        topic: str,
        payload: Any,
        *,
        sender: str = SERVER_SENDER,
        exclude: str | None = None,
        key: str | None = None,
        then: Callable[[asyncio.Future[Publication]], None] | None = None,
    ) -> asyncio.Future[Publication]:
        """:meth:`publish` to the whole room, under way when it returns: its publication, or
        its error, comes in the future (the broker's `DeferredPublish` when it has it, else
        :meth:`publish` as a task). `then` is called with it once it is done and counted
        (one callback, where adding one to the future would make two)."""
        publish_soon = self._publish_soon
        if publish_soon is None:
            task = asyncio.get_running_loop().create_task(
                self.publish(room, topic, payload, sender=sender, exclude=exclude, key=key)
            )
            if then is not None:
                task.add_done_callback(then)
            return task
        prefix = message_prefix(topic, payload, room, sender)
        self._publishing += 1
        try:
            future = publish_soon(room, prefix, None, exclude, key=key)
        except BaseException:
            self._publish_ended()
            self.metrics.broker_errors.inc()
            raise
        future.add_done_callback(partial(self._published_soon, topic, payload, sender, then))
        return future

    def _published_soon(
        self,
        topic: str,
        payload: Any,
        sender: str,
        then: Callable[[asyncio.Future[Publication]], None] | None,
        future: asyncio.Future[Publication],
    ) -> None:
        self._publish_ended()
        if future.cancelled():
            pass
        elif future.exception() is not None:
            self.metrics.broker_errors.inc()
        else:
            self._published_one(future.result(), topic, payload, sender)
        if then is not None:
            then(future)

    def _publish_ended(self) -> None:
        self._publishing -= 1
        published = self._published
        if not self._publishing and published is not None and not published.done():
            published.set_result(None)

    def publish_now(
        self,
        room: str,
        topic: str,
        payload: Any,
        *,
        sender: str = SERVER_SENDER,
        exclude: str | None = None,
        key: str | None = None,
    ) -> Publication | None:
        """:meth:`publish` to the whole room, done before returning when the broker publishes
        synchronously (`ImmediatePublish`: `memory://`); None, with nothing done, when it
        does not (then :meth:`publish` it)."""
        publish_now = self._publish_now
        if publish_now is None:
            return None
        prefix = message_prefix(topic, payload, room, sender)
        try:
            publication = publish_now(room, prefix, None, exclude, key=key)
        except Exception:
            self.metrics.broker_errors.inc()
            raise
        return self._published_one(publication, topic, payload, sender)

    def _published_one(
        self, publication: Publication, topic: str, payload: Any, sender: str
    ) -> Publication:
        """Count a publication and tell the event bus (a duplicate is only counted)."""
        if publication.duplicate:
            self.metrics.duplicates.inc()
            return publication
        self.metrics.publications.inc()
        room = publication.room
        counts = self.publish_counts
        if counts is not None:
            counts[room] = counts.get(room, 0) + 1  # a plain dict: half a Counter's cost
        if self.events.wants(MessagePublished):
            self.events.publish(
                MessagePublished(room, topic, payload, sender, publication.offset, publication.to)
            )
        return publication

    async def _publish_to_room(self, command: PublishToRoom) -> int:
        publication = await self.publish(
            command.room,
            command.topic,
            command.payload,
            sender=command.sender,
            exclude=command.exclude,
            key=command.key,
        )
        return publication.offset

    async def _send_to_member(self, command: SendToMember) -> int:
        publication = await self.publish(
            command.room,
            command.topic,
            command.payload,
            sender=command.sender,
            to=command.username,
            exclude=command.exclude,
            key=command.key,
        )
        return publication.offset

    async def _publish_ephemeral(self, command: PublishEphemeral) -> Publication | None:
        room, to, key = command.room, command.to, command.key
        frame = ephemeral_frame(command.topic, command.payload, room, command.sender, to)
        seen = None if to is None else await self._find_member(room, to, key)
        if seen is None:
            try:
                seen = await self.broker.publish_ephemeral(
                    room, frame, to, command.exclude, key=key
                )
            except Exception:
                self.metrics.broker_errors.inc()
                raise
        if seen is None:
            return None
        self.metrics.duplicates.inc()
        offset, epoch = seen
        return Publication(room, offset, frame, to, epoch, duplicate=True)

    async def _find_member(
        self, room: str, username: str, key: str | None = None
    ) -> tuple[int, str] | None:
        """Raises `MemberNotFound` when `username` is connected to `room` on no node, unless
        `key` was published to the room within the idempotency window: then the first
        publish's offset and epoch (a repeat whose member left since is still a repeat).

        A room that keeps no member entries (a class without presence, under `share`) lists
        nobody: there the message goes to wherever the member is, and nothing is raised.
        """
        if (
            self.classes.resolve(room).tracked
            and self.rooms.find(room, username) is None
            and not (await self.broker.has_member(room, username))
        ):
            seen = None if key is None else await self.broker.seen_key(room, key)
            if seen is None:
                raise MemberNotFound(f"{username!r} is not connected to room {room!r}")
            return seen
        return None

    async def _kick_member(self, command: KickMember) -> None:
        if self.classes.resolve(command.room).tracked and not await self.broker.has_member(
            command.room, command.username
        ):
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

    async def history_before(
        self, room: str, before: int | None, limit: int, reader: str
    ) -> tuple[str, list[Publication]]:
        """`(epoch, messages)`: at most `limit` retained messages of `room` with an offset
        below `before` (None: all), the latest of them, oldest first, as member `reader`
        received them (messages `to` another member left out).

        Offsets are dense, so the page is read by offset windows of `limit`, going back
        until `limit` messages are found or nothing older is retained.
        """
        broker = self.broker
        page = await broker.history(room, None, 0)
        epoch, end = page.epoch, page.offset
        if before is not None:
            end = min(end, before - 1)
        found: list[Publication] = []
        while end >= 1 and len(found) < limit:
            start = max(1, end - limit + 1)
            page = await broker.history(room, start - 1, end - start + 1)
            if page.epoch != epoch:
                break  # the history was lost meanwhile: what was found is of the old one
            chunk = [
                p for p in page.publications if p.offset <= end and (p.to is None or p.to == reader)
            ]
            found[:0] = chunk[max(0, len(chunk) - (limit - len(found))) :]
            if not page.complete:
                break  # retention dropped what came before
            end = start - 1
        return epoch, found


async def _wait_all(awaitables: list[Any], timeout: float) -> None:
    """Run `awaitables` concurrently; return when all are done or after `timeout` seconds."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def _default_resolver(settings: Settings, proxy: Proxy | None) -> IdentityResolver:
    if proxy is not None and proxy.connect_url is not None:
        from .proxy import ProxyResolver

        return ProxyResolver(proxy)
    # PyJWT and cryptography are imported only by a node that was not given a resolver.
    from .jwt import resolver_from_settings

    return resolver_from_settings(settings)
