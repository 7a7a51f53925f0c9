"""One client connection: its frames in (size, rate, parse), their dispatch, acks and errors,
its limits and its close, over the rooms it is in.

Transports get a session from :func:`roomcast.admission.open_session` after the WebSocket
upgrade, call :meth:`Session.receive` for every text frame, then :meth:`Session.leave` when
the socket is gone. Each room of the connection is a membership (membership.py): the session
keeps them and routes every frame to the room it names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from . import membership
from .auth import ConnectRequest, Identity, RefreshingResolver, authorizes_rooms
from .brokers import Publication
from .codes import CloseCode, ErrorCode
from .commands import PublishEphemeral
from .connection import Connection
from .context import Context
from .errors import BrokerUnavailable, FrameError, MemberNotFound, Refused, RoomcastError
from .limits import Admission, Lease, TokenBucket
from .log import log_event
from .node import Node
from .protocol import (
    ClientFrame,
    FrameId,
    JoinRequest,
    RoomID,
    ack_frame,
    error_frame,
    history_frame,
    is_builtin,
    joined_frame,
    left_frame,
    parse_client_frame,
    parse_history,
    parse_join,
    parse_room_payload,
    server_frame,
    welcome_frame,
)
from .rooms import Member

__all__ = ["MAX_RELAYS_IN_FLIGHT", "Session"]

MAX_RELAYS_IN_FLIGHT = 32
"""Relayed frames of one connection that may wait for the broker at once; past that, the
connection's next frame waits (backpressure)."""

REFUSAL_INTERVAL = 1.0
"""Seconds during which further rate-limited frames without an `id` get no error frame of
their own after one did (a flood gets one answer, not one per frame)."""

_OK, _LIMITED, _EXCEEDED = Admission.OK, Admission.LIMITED, Admission.EXCEEDED

REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two `frame.rejected` log lines of one connection; the next line counts
the refusals in between (`unlogged`)."""


class Session:
    """One client connection on this node, in any number of rooms (one membership each).

    Args:
        node: the node it belongs to.
        connection: the transport's connection.
        identity: who it is (the resolver's answer).
        connection_id: this connection's random id.
        lease: its place among the node's connection limits, released when it leaves.
        request: the connect request, kept only when the resolver must be asked again for
            every `room.join` (it has no `authorize` step).
    """

    def __init__(
        self,
        node: Node,
        connection: Connection,
        identity: Identity,
        connection_id: str,
        *,
        lease: Lease | None = None,
        request: ConnectRequest | None = None,
    ) -> None:
        self.node = node
        self.connection = connection
        self.identity = identity
        self.connection_id = connection_id
        # The first room (the earliest joined that the connection is still in) and the
        # others in join order: a connection in one room holds no dict.
        self.member: Member | None = None
        self._more: dict[str, Member] | None = None
        self.closing = False
        self._busy = False
        self._idle: asyncio.Future[None] | None = None
        # With a broker that batches publishes, several default relays of a connection are in
        # flight at once (`_spawn_relay`), so that its frames share the broker's round trips.
        # A publish proxy asks about each frame first: frames then go one after another, so
        # that a slow answer cannot let a later frame of the connection overtake.
        self._pipelined = bool(getattr(node.broker, "batches_publishes", False)) and (
            node.proxy is None or node.proxy.publish_url is None
        )
        # A list, not a deque: an empty deque costs 700 bytes per idle connection.
        self._relays: list[tuple[asyncio.Future[Any], ClientFrame]] = []
        """The relays in flight, in frame order, with their frames (`_spawn_relay`)."""
        self._left: asyncio.Future[None] | None = None
        self._opened = time.monotonic()
        self.bucket = TokenBucket.from_settings(node.settings)
        self.lease = lease
        self._request = request
        self._expiry: asyncio.TimerHandle | None = None
        node.open(connection_id, self)

    def log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """Log `event` with this connection's first room, username and id."""
        member = self.member
        log_event(
            event,
            level=level,
            room=None if member is None else member.room,
            username=self.identity.username,
            connection_id=self.connection_id,
            **fields,
        )

    _log = log

    # memberships

    @property
    def rooms(self) -> list[str]:
        """The rooms this connection is in, the first room first."""
        if self.member is None:
            return []
        return [self.member.room, *(self._more or ())]

    def membership(self, room: str) -> Member | None:
        """This connection's member of `room`, if it is in that room."""
        member = self.member
        if member is not None and member.room == room:
            return member
        return None if self._more is None else self._more.get(room)

    def _count(self) -> int:
        return 0 if self.member is None else 1 + len(self._more or ())

    def _add(self, member: Member) -> None:
        if self.member is None:
            self.member = member
        else:
            if self._more is None:
                self._more = {}
            self._more[member.room] = member

    def _drop(self, member: Member) -> bool:
        """Forget a membership; False when it was not (or no longer) this connection's."""
        more = self._more
        if self.member is member:
            if more:
                self.member = more.pop(next(iter(more)))
            else:
                self.member = None
        elif more is not None and more.get(member.room) is member:
            del more[member.room]
        else:
            return False
        if more is not None and not more:
            self._more = None
        return True

    def _frame_member(self, frame: ClientFrame, room: str | None = None) -> Member:
        """The membership a frame is for: `room` (a built-in's payload `roomID`), else the
        frame's `room`, else the first room.

        Raises:
            RoomcastError: `not_joined` when the connection is not in that room (or in none).
        """
        if room is not None:
            frame = dataclasses.replace(frame, room=RoomID(room))
        if frame.room is None:
            if self.member is None:
                raise RoomcastError(
                    "this connection is in no room: send room.join first",
                    code=ErrorCode.NOT_JOINED,
                )
            return self.member
        member = self.membership(frame.room)
        if member is None:
            raise RoomcastError(f"not in room {frame.room!r}", code=ErrorCode.NOT_JOINED)
        return member

    async def join_first(
        self, room: str, since: int | None, epoch: str | None, backlog: int | None
    ) -> None:
        """Join the connect URL's room: the welcome frame, then any replay.

        Raises:
            Refused: 4409 when the username is taken and the policy is to reject.
            BrokerUnavailable: when presence or history cannot be reached.
        """
        identity, connection_id = self.identity, self.connection_id

        def welcome(point: membership.JoinPoint) -> str:
            return welcome_frame(
                connection_id=connection_id,
                username=identity.username,
                room=point.room,
                members=point.members,
                epoch=point.epoch,
                offset=point.offset,
                recovered=point.recovered,
            )

        await self._join(room, since, epoch, backlog, welcome)

    async def _join(
        self,
        room: str,
        since: int | None,
        epoch: str | None,
        backlog: int | None,
        first_frame: Any,
    ) -> Member:
        node = self.node
        if backlog is not None:
            backlog = min(backlog, node.classes.resolve(room).history_size)
        if node.proxy is not None:
            await node.proxy.join(self.identity.username, room, self.connection_id)
        member = await membership.join(
            node,
            self,
            self.connection,
            self.identity,
            self.connection_id,
            room,
            since=since,
            epoch=epoch,
            backlog=backlog,
            first_frame=first_frame,
        )
        self._add(member)
        if self.closing or self._left is not None:
            # Closed while joining: the leave of the whole connection may have run already.
            await self._leave_room(member, "closed")
        return member

    async def _leave_room(self, member: Member, reason: str) -> bool:
        """Leave one room; True when it was still this connection's."""
        if not self._drop(member):
            return False
        await membership.leave(self.node, member, reason)
        self.log("room.left", left_room=member.room, reason=reason)
        return True

    async def room_join(self, frame: ClientFrame) -> None:
        """`room.join`: join one more room, or answer where a room already joined stands.

        Refusals are error frames (the connection stays open): `bad_request`, `forbidden`,
        `duplicate`, `too_many_rooms`, `unavailable`.
        """
        try:
            wanted = parse_join(frame.payload)
        except FrameError as exc:
            self.send_error(exc.code, exc.message, frame.id)
            return
        room = wanted.room
        current = self.membership(room)
        if current is not None:
            await self._rejoined(current, wanted)
            self._ack(frame)
            return
        limit = self.node.settings.max_rooms_per_connection
        if limit is not None and self._count() >= limit:
            self.send_error(
                ErrorCode.TOO_MANY_ROOMS,
                f"a connection may be in at most {limit} rooms (--max-rooms-per-connection)",
                frame.id,
            )
            return
        try:
            await self._authorize(room)

            def joined(point: membership.JoinPoint) -> str:
                return joined_frame(
                    room=point.room,
                    members=point.members,
                    epoch=point.epoch,
                    offset=point.offset,
                    recovered=point.recovered,
                )

            await self._join(room, wanted.since, wanted.epoch, wanted.backlog, joined)
        except Refused as exc:
            self.send_error(exc.code, exc.message, frame.id)
            return
        self._ack(frame)

    async def _rejoined(self, member: Member, wanted: JoinRequest) -> None:
        """A `room.join` of a room the connection is in: a fresh `joined`, nothing else
        (`recovered` says what a fresh join would: whether nothing after `since` is missing;
        there is nothing to replay, the connection has it all)."""
        broker = self.node.broker
        since = wanted.since
        page = await broker.history(member.room, since, 0)
        members = await self._members_of(member.room)
        recovered = None
        if since is not None:
            recovered = page.complete and page.epoch == wanted.epoch and since <= page.offset
        self.connection.send(
            joined_frame(
                room=member.room,
                members=members,
                epoch=page.epoch,
                offset=page.offset,
                recovered=recovered,
            )
        )

    async def _authorize(self, room: str) -> None:
        """Ask the resolver whether this connection's identity may join `room`.

        Raises:
            Refused: `forbidden` (or the resolver's own code) when it may not.
        """
        resolver = self.node.resolver
        if authorizes_rooms(resolver):
            await resolver.authorize(self.identity, room)
            return
        if self._request is None:
            return
        identity = await resolver(dataclasses.replace(self._request, room=room))
        if identity.username != self.identity.username:
            raise Refused(
                CloseCode.FORBIDDEN,
                ErrorCode.FORBIDDEN,
                f"room {room!r} gives this connection another identity",
            )

    async def room_leave(self, frame: ClientFrame) -> None:
        """`room.leave`: leave one room; the connection stays open (in no room, maybe)."""
        try:
            room = parse_room_payload(frame.payload)
        except FrameError as exc:
            self.send_error(exc.code, exc.message, frame.id)
            return
        if room is None:
            self.send_error(
                ErrorCode.BAD_REQUEST, 'room.leave needs a payload {"roomID": "..."}', frame.id
            )
            return
        member = self.membership(room)
        if member is None:
            self.send_error(ErrorCode.NOT_JOINED, f"not in room {room!r}", frame.id)
            return
        await self._leave_room(member, "left")
        self._ack(frame)

    async def remove(self, member: Member, reason: str) -> None:
        """Taken out of one room by the server (`kicked`) or a newer connection (`replaced`).

        In its last room the connection closes (4499, or 4409 when replaced) as in v1;
        otherwise it gets `left` with the reason and stays open in its other rooms.
        """
        if self.membership(member.room) is not member:
            return
        if self._count() > 1:
            # Presence first: once the client reads `left`, no node lists it in the room.
            if await self._leave_room(member, reason):
                self.connection.send(left_frame(member.room, reason))
            return
        if reason == "replaced":
            self.close(CloseCode.DUPLICATE, ErrorCode.DUPLICATE, "replaced by a newer connection")
            await self.leave("replaced")
            return
        # Leave presence first: once the kicked client sees its close, no node lists it.
        await self.leave(reason)
        self.close(CloseCode.KICKED, ErrorCode.KICKED, "kicked by the server")

    @property
    def dispatching(self) -> bool:
        """Whether a frame is being handled or relayed frames still wait for the broker."""
        return self._busy or bool(self._relays)

    def handle(self, text: str) -> Coroutine[Any, Any, None] | None:
        """Handle one text frame from the client as far as it can be without waiting.

        Returns None when the frame is handled: a room message on a broker that publishes
        synchronously (`memory://`), and every refusal while no relayed frame waits for the
        broker. Otherwise what is left to do, which the caller must await before it hands
        over the next frame (:meth:`receive` does both).

        Answers (acks, errors) go out in frame order. With a broker that batches publishes,
        a default relay of a room message is done once its publish is under way, so that the
        connection's next frames can join the same round trip; any other frame first waits
        for the relays in flight.
        """
        node = self.node
        node.metrics.frames_in.inc()
        if self.closing or not node.accepting:
            # Shutting down: frames that arrive now are not handled (no ack is sent); the
            # client resends them after reconnecting.
            return None
        max_size = node.settings.max_message_size
        if len(text) * 4 > max_size and len(text.encode()) > max_size:
            return self._after_relays(
                self.close,
                CloseCode.MESSAGE_TOO_BIG,
                ErrorCode.MESSAGE_TOO_BIG,
                f"frame larger than {max_size} bytes",
            )
        admission = _OK if self.bucket is None else self.bucket.take()
        if admission is _EXCEEDED:
            try:  # (once: the connection closes) the error answers the frame's `id`
                frame_id = parse_client_frame(text).id
            except FrameError as exc:
                frame_id = exc.frame_id
            return self._after_relays(
                partial(self.close, frame_id=frame_id),
                CloseCode.RATE_LIMITED,
                ErrorCode.RATE_LIMITED,
                "too many frames: kept sending while rate limited",
            )
        try:
            frame = parse_client_frame(text)
        except FrameError as exc:
            if admission is _LIMITED:
                return self._after_relays(self._rate_limited, exc.frame_id)
            return self._after_relays(self.send_error, exc.code, exc.message, exc.frame_id)
        if admission is _LIMITED:
            return self._after_relays(self._rate_limited, frame.id)
        # The default relay of a room message skips dispatch; everything else goes through it.
        member = self._relayable(frame)
        if member is not None:
            if self._pipelined:
                return self._start_relay(frame, member)
            if not self._relays and self._publish_now(frame, member):
                return None
        return self._run(frame, member)

    async def receive(self, text: str) -> None:
        """Handle one text frame from the client, to its end (see :meth:`handle`)."""
        rest = self.handle(text)
        if rest is not None:
            await rest

    def _after_relays(
        self, answer: Callable[..., None], *args: Any
    ) -> Coroutine[Any, Any, None] | None:
        """Give `answer(*args)` now, or once the relays in flight are answered (not at all
        when the connection closes meanwhile): what the caller must await, if anything."""
        if not self._relays:
            answer(*args)
            return None
        return self._settled(answer, *args)

    async def _settled(self, answer: Callable[..., None], *args: Any) -> None:
        if await self._settle():
            answer(*args)

    def _publish_now(self, frame: ClientFrame, member: Member) -> bool:
        """Relay `frame` to `member`'s room and answer it, when the broker publishes
        synchronously and its topic is not ephemeral; False when nothing was done."""
        node = self.node
        if frame.topic in node.ephemeral_topics(member.room):
            return False
        try:
            publication = node.publish_now(
                member.room,
                frame.topic,
                frame.payload,
                sender=member.username,
                exclude=None if frame.echo else self.connection_id,
                key=frame.key,
            )
        except Exception as exc:
            self._failed(frame, exc)
            return True
        if publication is None:
            return False
        self._ack_published(frame, publication)
        return True

    async def _run(self, frame: ClientFrame, member: Member | None) -> None:
        """Handle a valid frame that must wait (for the relays in flight, or for its own
        work): the default relay to `member`'s room, else :meth:`dispatch`."""
        if self._relays and not await self._settle():
            return
        self._busy = True
        try:
            if member is None:
                await self.dispatch(frame)
            else:
                self._ack_published(frame, await self._publish(frame, member))
        except Exception as exc:
            self._failed(frame, exc)
        finally:
            self._busy = False
            idle = self._idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    def _failed(self, frame: ClientFrame, exc: Exception) -> None:
        """Answer a frame whose handling raised: its error, or `internal` (logged)."""
        if isinstance(exc, RoomcastError):
            self.send_error(exc.code, exc.message, frame.id)
            return
        self._log(
            "frame.error",
            level=logging.ERROR,
            topic=frame.topic,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self.send_error(ErrorCode.INTERNAL, "internal error", frame.id)

    def _relayable(self, frame: ClientFrame) -> Member | None:
        """The membership `frame` is relayed to, when it takes the default relay to a whole
        room with no publish proxy to ask (see `dispatch`); None when it is handled
        otherwise."""
        topic, node = frame.topic, self.node
        registry = node.registry
        if (
            frame.to is None
            and not is_builtin(topic)
            and self.identity.may_publish(topic)
            and not registry.handlers(topic)
            and registry.relays(topic)
            and (node.proxy is None or node.proxy.publish_url is None)
        ):
            room = frame.room
            member = self.member if room is None else self.membership(room)
            if member is not None and self.node.classes.resolve(member.room).client_publish:
                return member
        return None

    def _start_relay(self, frame: ClientFrame, member: Member) -> Coroutine[Any, Any, None] | None:
        """Start relaying `frame` as a task now, or (what the caller must await) once there
        is a free place among the relays in flight."""
        if len(self._relays) >= MAX_RELAYS_IN_FLIGHT:
            return self._relay_when_free(frame, member)
        self._spawn_relay(frame, member)
        return None

    async def _relay_when_free(self, frame: ClientFrame, member: Member) -> None:
        relays = self._relays
        while len(relays) >= MAX_RELAYS_IN_FLIGHT:
            await asyncio.wait((relays[0][0],))
        if not self.closing and self.node.accepting:
            self._spawn_relay(frame, member)

    def _spawn_relay(self, frame: ClientFrame, member: Member) -> None:
        """Publish `frame` to the room now; it is answered, in frame order, once the broker
        answered it and every frame before it (`_relay_done`). A future each, not a task:
        the publishes are asked for in frame order as they are made."""
        node = self.node
        room = member.room
        relay: asyncio.Future[Any]
        if frame.topic in node.ephemeral_topics(room):
            relay = asyncio.ensure_future(self._publish(frame, member))
            relay.add_done_callback(self._relay_done)
        else:
            try:
                relay = node.publish_soon(
                    room,
                    frame.topic,
                    frame.payload,
                    sender=member.username,
                    exclude=None if frame.echo else self.connection_id,
                    key=frame.key,
                    then=self._relay_done,
                )
            except Exception as exc:
                relay = asyncio.get_running_loop().create_future()
                relay.set_exception(exc)
                relay.add_done_callback(self._relay_done)
        self._relays.append((relay, frame))

    def _relay_done(self, _: asyncio.Future[Any]) -> None:
        """A relay in flight was answered: answer, in frame order, every frame at the head
        of the queue whose relay is done."""
        relays = self._relays
        while relays and relays[0][0].done():
            relay, frame = relays.pop(0)
            if relay.cancelled():
                continue
            failure = relay.exception()
            if failure is None:
                self._ack_published(frame, relay.result())
            elif isinstance(failure, Exception):
                self._failed(frame, failure)

    async def _settle(self) -> bool:
        """Wait until the relays in flight are answered; False when the connection is
        closing meanwhile (the frame is then dropped, as any frame that arrives then)."""
        await asyncio.wait([relay for relay, _ in self._relays])
        return not self.closing and self.node.accepting

    async def wait_idle(self) -> None:
        """Wait until the frame being handled (if any) and the relays in flight have been
        answered."""
        while self.dispatching:
            if self._relays:
                await asyncio.wait([relay for relay, _ in self._relays])
                continue
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def receive_binary(self) -> None:
        """Binary frames are not part of the protocol: refuse with 1008."""
        self.close(
            CloseCode.POLICY_VIOLATION,
            ErrorCode.INVALID_FRAME,
            "binary frames are not supported; send JSON text",
        )

    async def dispatch(self, frame: ClientFrame) -> None:
        """Run a valid frame: built-in topics, then handlers, then the relay."""
        topic = frame.topic
        if topic == "ping":
            self.connection.send(server_frame("pong", frame.payload))
            self._ack(frame)
            return
        if is_builtin(topic):
            await self._builtin(frame)
            return
        member = self._frame_member(frame)
        if not self.identity.may_publish(topic):
            raise RoomcastError(
                f"not allowed to publish to topic {topic!r}", code=ErrorCode.FORBIDDEN
            )
        if not self.node.classes.resolve(member.room).client_publish:
            raise RoomcastError(
                f"clients may not publish to room {member.room!r} (client_publish = false)",
                code=ErrorCode.FORBIDDEN,
            )
        proxy = self.node.proxy
        if proxy is not None and proxy.publish_url is not None:
            payload = await proxy.publish(
                member.username, member.room, topic, frame.payload, self.connection_id
            )
            if payload is not frame.payload:
                frame = dataclasses.replace(frame, payload=payload)
        handlers = self.node.registry.handlers(topic)
        if handlers:
            self._ack(frame, await self._run_handlers(frame, member, handlers))
        elif self.node.registry.relays(topic):
            self._ack_published(frame, await self._publish(frame, member))
        else:
            raise RoomcastError(f"no handler for topic {topic!r}", code=ErrorCode.UNKNOWN_TOPIC)

    def _publish(self, frame: ClientFrame, member: Member) -> Awaitable[Publication | None]:
        """The default relay of `frame` to its room (or to its `to` member), with its `key`:
        what it returns gives the publication, None for an ephemeral topic (docs/protocol.md,
        section 10: it has no offset), unless its key was published within the window.

        Not a coroutine itself, so that a room message costs one coroutine less: the caller
        awaits `Node.publish` directly.
        """
        node, room, sender = self.node, member.room, member.username
        exclude = None if frame.echo else self.connection_id
        if frame.topic in node.ephemeral_topics(room):
            return node.commands.send(
                PublishEphemeral(
                    room, frame.topic, frame.payload, sender, frame.to, exclude, frame.key
                )
            )
        return node.publish(
            room,
            frame.topic,
            frame.payload,
            sender=sender,
            to=frame.to,
            exclude=exclude,
            key=frame.key,
        )

    async def _builtin(self, frame: ClientFrame) -> None:
        """The topics the server answers itself (other than `ping`)."""
        topic = frame.topic
        if topic == "room.join":
            await self.room_join(frame)
        elif topic == "room.leave":
            await self.room_leave(frame)
        elif topic == "presence":
            await self.presence(frame)
        elif topic == "room.history":
            await self.room_history(frame)
        elif topic == "auth.refresh":
            await self.refresh(frame)
        else:
            # Reserved for the server (`room.*`): never relayed, never given to handlers.
            raise RoomcastError(f"no such built-in topic {topic!r}", code=ErrorCode.UNKNOWN_TOPIC)

    async def presence(self, frame: ClientFrame) -> None:
        """`presence`: the cluster-wide member list of the payload's `roomID` (or of the
        frame's room, or of the first room)."""
        try:
            room = parse_room_payload(frame.payload)
        except FrameError as exc:
            self.send_error(exc.code, exc.message, frame.id)
            return
        member = self._frame_member(frame, room)
        members = await self._members_of(member.room)
        self.connection.send(server_frame("presence", {"members": members}, room=member.room))
        self._ack(frame)

    async def room_history(self, frame: ClientFrame) -> None:
        """`room.history`: a page of the room's retained messages below `before`, oldest
        first, as its members received them (messages `to` another member left out)."""
        try:
            wanted = parse_history(frame.payload)
        except FrameError as exc:
            self.send_error(exc.code, exc.message, frame.id)
            return
        member = self._frame_member(frame, wanted.room)
        epoch, messages = await self.node.history_before(
            member.room, wanted.before, wanted.limit, member.username
        )
        self.connection.send(history_frame(member.room, epoch, [m.frame for m in messages]))
        self._ack(frame)

    async def _members_of(self, room: str) -> list[str]:
        """The room's cluster-wide member list; empty for a class without presence."""
        if not self.node.classes.resolve(room).presence:
            return []
        return await self.node.broker.members(room)

    async def _run_handlers(
        self, frame: ClientFrame, member: Member, handlers: list[Any]
    ) -> int | None:
        """Run the handlers of `frame`; returns the offset of the last message they published."""
        node = self.node
        ctx = Context(
            frame.topic,
            frame.payload,
            frame.id,
            frame.to,
            member,
            node.commands,
            node.events,
            key=frame.key,
        )
        if len(handlers) == 1:
            results: list[Any] = [await _capture(handlers[0], ctx)]
        else:
            results = await asyncio.gather(*(_capture(h, ctx) for h in handlers))
        failures = [r for r in results if isinstance(r, BaseException)]
        for exc in failures:
            self._log(
                "handler.error",
                level=logging.ERROR,
                topic=frame.topic,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        if failures:
            known = next(
                (
                    e
                    for e in failures
                    if isinstance(e, MemberNotFound | Refused | BrokerUnavailable)
                ),
                None,
            )
            if known is not None:
                raise known
            raise RoomcastError(
                f"a handler of topic {frame.topic!r} failed", code=ErrorCode.HANDLER_ERROR
            )
        return ctx.offset

    async def refresh(self, frame: ClientFrame) -> None:
        """`auth.refresh`: take a fresh token in-band (see docs/security.md)."""
        resolver = self.node.resolver
        if not isinstance(resolver, RefreshingResolver):
            raise RoomcastError("authentication is not enabled", code=ErrorCode.INVALID_FRAME)
        try:
            identity = await resolver.refresh(self.identity, self.rooms, frame.payload)
        except Refused as exc:
            self.send_error(exc.code, exc.message, frame.id)
            self.close(exc.close_code, exc.code, exc.message, frame=False)
            self.node.spawn(self.leave("unauthenticated"))
            return
        self.identity = identity
        for member in self._members():
            member.claims = identity.claims
        self.watch_expiry()
        self._ack(frame)

    def watch_expiry(self) -> None:
        """Close with 4401 at `identity.expires_at` (replacing any earlier schedule)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires_at = self.identity.expires_at
        if expires_at is None or self.closing:
            return
        # Far-away expiries are re-checked daily rather than handed to the timer as is.
        delay = min(max(0.0, expires_at - time.time()), 86400.0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        expires_at = self.identity.expires_at
        if expires_at is not None and expires_at > time.time():
            self.watch_expiry()
            return
        if not self.closing:
            self.close(
                CloseCode.UNAUTHENTICATED,
                ErrorCode.UNAUTHENTICATED,
                "token expired: send auth.refresh with a fresh token before exp",
            )
            self.node.spawn(self.leave("expired"))

    # Refusals of one connection: a burst of rate-limited frames without an `id` gets one
    # error, and refusals are logged once per interval with a count. Class attributes until
    # the first refusal, so that a connection that is never refused stores none of them.
    _limited_until = 0.0
    _log_quiet_until = 0.0
    _unlogged = 0

    def _rate_limited(self, frame_id: Any) -> None:
        if frame_id is None:
            # Every frame with an `id` is answered (the contract); the others are a flood.
            now = time.monotonic()
            if now < self._limited_until:
                self.node.metrics.errors.labels(ErrorCode.RATE_LIMITED.value).inc()
                self._log_refusal(ErrorCode.RATE_LIMITED, "rate limited")
                return
            self._limited_until = now + REFUSAL_INTERVAL
        rate = self.bucket.rate if self.bucket is not None else 0
        self.send_error(
            ErrorCode.RATE_LIMITED, f"frame refused: more than {rate:g} frames per second", frame_id
        )

    def _log_refusal(self, code: ErrorCode, message: str) -> None:
        now = time.monotonic()
        if now < self._log_quiet_until:
            self._unlogged += 1
            return
        self._log_quiet_until = now + REFUSAL_LOG_INTERVAL
        self._log(
            "frame.rejected", code=code.value, reason=message, unlogged=self._unlogged or None
        )
        self._unlogged = 0

    def _ack(self, frame: ClientFrame, offset: int | None = None) -> None:
        if frame.id is not None:
            self.connection.send(ack_frame(frame.id, offset))

    def _ack_published(self, frame: ClientFrame, publication: Publication | None) -> None:
        """The ack of a relayed frame: its offset (none for an ephemeral topic), and
        `duplicate` when its key had published it already."""
        if publication is None:
            self._ack(frame)
        elif frame.id is not None:
            # Offset 0: the key's first publish was of an ephemeral topic, which has none.
            offset = publication.offset or None
            self.connection.send(ack_frame(frame.id, offset, publication.duplicate))

    def send_error(self, code: ErrorCode, message: str, frame_id: Any = None) -> None:
        """Send an `error` frame; the connection stays open."""
        self.node.metrics.errors.labels(code.value).inc()
        self._log_refusal(code, message)
        self.connection.send(error_frame(code, message, frame_id))

    def close(
        self,
        close_code: CloseCode,
        code: ErrorCode,
        message: str,
        *,
        frame: bool = True,
        frame_id: FrameId | None = None,
    ) -> None:
        """Close with `close_code` after the queued frames, preceded by one error frame
        (answering `frame_id`, when the frame that caused it had one) unless `frame` is
        False."""
        if self.closing:
            return
        self.closing = True
        self.node.metrics.disconnects.labels(str(int(close_code))).inc()
        self._log("connection.closing", close_code=int(close_code), code=code.value, reason=message)
        if frame:
            self.node.metrics.errors.labels(code.value).inc()
            self.connection.send(error_frame(code, message, frame_id))
        self.connection.close(close_code, message[:120])

    def overflow(self) -> None:
        """The outbound buffer overflowed: drop what is queued and close with 4408."""
        if self.closing:
            return
        self.closing = True
        node = self.node
        node.metrics.slow_consumers.inc()
        node.metrics.disconnects.labels(str(int(CloseCode.KEEPALIVE_TIMEOUT))).inc()
        self._log(
            "connection.slow_consumer", level=logging.WARNING, buffered=self.connection.buffered
        )
        self.connection.abort(CloseCode.KEEPALIVE_TIMEOUT, "slow consumer")
        node.spawn(self.leave("slow_consumer"))

    def keepalive_timeout(self) -> None:
        """The transport closed the connection with 4408: no pong came in time."""
        if self.closing:
            return
        self.closing = True
        self.node.metrics.disconnects.labels(str(int(CloseCode.KEEPALIVE_TIMEOUT))).inc()
        self._log("connection.keepalive_timeout", level=logging.WARNING)

    async def connection_closed(self, timeout: float) -> None:
        """Wait until the transport has written the close (at most `timeout` seconds)."""
        wait = getattr(self.connection, "wait_closed", None)
        if wait is not None:
            await wait(timeout)

    async def leave(self, reason: str = "closed") -> None:
        """Leave every room and presence; idempotent, safe to call from several places."""
        if self._left is not None:
            await asyncio.shield(self._left)
            return
        self._left = asyncio.get_running_loop().create_future()
        try:
            await self._leave(reason)
        finally:
            self._left.set_result(None)

    async def _leave(self, reason: str) -> None:
        if self._unlogged:
            self._log("frame.rejected", unlogged=self._unlogged)
            self._unlogged = 0
        if self._relays:
            # The frames a member sent before leaving are published before it leaves.
            await asyncio.wait([relay for relay, _ in self._relays])
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.lease is not None:
            self.lease.release()
        members = self._members()
        self.member = self._more = None
        if len(members) == 1:
            await membership.leave(self.node, members[0], reason)
        elif members:
            await asyncio.gather(*(membership.leave(self.node, m, reason) for m in members))
        self.node.closed(self.connection_id)
        if reason == "join_failed" and not members:
            return  # refused at connect: logged as connection.refused
        log_event(
            "connection.left",
            room=members[0].room if members else None,
            username=self.identity.username,
            connection_id=self.connection_id,
            reason=reason,
            rooms=len(members),
            duration=round(time.monotonic() - self._opened, 3),
        )

    def _members(self) -> list[Member]:
        if self.member is None:
            return []
        return [self.member, *(self._more or {}).values()]


async def _capture(handler: Any, ctx: Context) -> Any:
    try:
        return await handler(ctx)
    except Exception as exc:
        return exc
