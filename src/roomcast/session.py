"""One client connection's life: join a room, dispatch its frames, leave.

Transports call :func:`open_session` after the WebSocket upgrade, then :meth:`Session.receive`
for every text frame, then :meth:`Session.leave` when the socket is gone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .auth import ConnectRequest, Identity, RefreshingResolver, origin_allowed
from .brokers import DuplicateMember, Signal
from .codes import CloseCode, ErrorCode
from .commands import PublishToRoom, SendToMember
from .connection import Connection
from .context import Context
from .errors import BrokerUnavailable, FrameError, MemberNotFound, Refused, RoomcastError
from .events import MemberJoined, MemberLeft
from .limits import Admission, Lease, TokenBucket
from .log import log_event
from .node import Node
from .protocol import (
    BUILTIN_TOPICS,
    ClientFrame,
    ack_frame,
    error_frame,
    parse_client_frame,
    parse_offset,
    server_frame,
    validate_name,
    welcome_frame,
)
from .rooms import Member

__all__ = ["MAX_RELAYS_IN_FLIGHT", "Session", "open_session"]

MAX_RELAYS_IN_FLIGHT = 32
"""Relayed frames of one connection that may wait for the broker at once; past that, the
connection's next frame waits (backpressure)."""


async def open_session(
    node: Node,
    connection: Connection,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    client: str | None = None,
) -> Session | None:
    """Join the room the request names, or refuse it.

    On success the welcome frame (and, when resuming, the missed messages) are queued and the
    session is returned. On refusal one error frame and the close code are queued and None is
    returned.
    """
    connection_id = secrets.token_hex(8)
    try:
        if not origin_allowed(
            headers.get("origin"), headers.get("host"), node.settings.allowed_origins
        ):
            raise Refused(
                CloseCode.POLICY_VIOLATION,
                ErrorCode.FORBIDDEN,
                "origin not allowed (see --allowed-origins)",
            )
        if not node.accepting:
            raise Refused(CloseCode.SERVICE_RESTART, ErrorCode.UNAVAILABLE, "server shutting down")
        if not node.started:
            await node.start()
        room, since, epoch = _parse_query(query)
        request = ConnectRequest(
            username=query.get("username"),
            room=room,
            token=query.get("token") or _bearer(headers),
            headers=headers,
            client=client,
            query=query,
        )
        identity = await node.resolver(request)
        lease = node.limits.acquire(client, identity.username)
        session = Session(node, connection, identity, room, connection_id)
        session.lease = lease
        try:
            await session.join(since, epoch)
        except BaseException:
            lease.release()
            raise
        session.watch_expiry()
        return session
    except Refused as exc:
        _refuse(node, connection, exc.close_code, exc.code, exc.message, connection_id, query)
    except BrokerUnavailable as exc:
        _refuse(
            node,
            connection,
            CloseCode.BROKER_UNAVAILABLE,
            ErrorCode.UNAVAILABLE,
            exc.message,
            connection_id,
            query,
        )
    except Exception:
        log_event(
            "connection.error", level=logging.ERROR, connection_id=connection_id, exc_info=True
        )
        _refuse(
            node,
            connection,
            CloseCode.INTERNAL_ERROR,
            ErrorCode.INTERNAL,
            "internal error",
            connection_id,
            query,
        )
    return None


def _parse_query(query: Mapping[str, str]) -> tuple[str, int | None, str | None]:
    try:
        room = validate_name(query.get("roomID"), "roomID")
        since = parse_offset(query.get("since"), "since")
    except FrameError as exc:
        raise Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, exc.message) from None
    epoch = query.get("epoch") or None
    if since is not None and epoch is None:
        raise Refused(CloseCode.BAD_REQUEST, ErrorCode.BAD_REQUEST, "since needs epoch")
    return room, since, epoch


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _refuse(
    node: Node,
    connection: Connection,
    close_code: CloseCode,
    code: ErrorCode,
    message: str,
    connection_id: str,
    query: Mapping[str, str],
) -> None:
    node.metrics.errors.labels(code.value).inc()
    node.metrics.disconnects.labels(str(int(close_code))).inc()
    log_event(
        "connection.refused",
        level=logging.WARNING,
        connection_id=connection_id,
        room=_printable(query.get("roomID")),
        username=_printable(query.get("username")),
        close_code=int(close_code),
        code=code.value,
        reason=message,
    )
    connection.send(error_frame(code, message))
    connection.close(close_code, message[:120])


def _printable(value: str | None) -> str | None:
    """A request value safe to log: cut short, control characters escaped."""
    if value is None:
        return None
    return value[:64].encode("unicode_escape").decode("ascii")


class Session:
    """A member's connection to one room on this node."""

    def __init__(
        self,
        node: Node,
        connection: Connection,
        identity: Identity,
        room: str,
        connection_id: str,
    ) -> None:
        self.node = node
        self.connection = connection
        self.identity = identity
        self.member = Member(
            username=identity.username,
            room=room,
            connection_id=connection_id,
            connection=connection,
            claims=identity.claims,
            handle=self,
        )
        self.joined = False
        self.closing = False
        self._busy = False
        self._idle: asyncio.Future[None] | None = None
        # With a broker that batches publishes, default relays run as tasks, several at once
        # (`_relay`), so that one connection's frames share the broker's round trips.
        self._pipelined = bool(getattr(node.broker, "batches_publishes", False))
        # A list, not a deque: an empty deque costs 700 bytes per idle connection.
        self._relays: list[asyncio.Task[None]] = []
        self._left: asyncio.Future[None] | None = None
        self._opened = time.monotonic()
        self.bucket = TokenBucket.from_settings(node.settings)
        self.lease: Lease | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def connection_id(self) -> str:
        """This connection's random id."""
        return self.member.connection_id

    def _log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        log_event(
            event,
            level=level,
            room=self.member.room,
            username=self.member.username,
            connection_id=self.member.connection_id,
            **fields,
        )

    async def join(self, since: int | None, epoch: str | None) -> None:
        """Enter presence and the local room, send the welcome and any missed messages.

        Raises:
            Refused: 4409 when the username is taken and the policy is to reject.
            BrokerUnavailable: when presence or history cannot be reached.
        """
        node, member = self.node, self.member
        # A resuming client (since+epoch) takes over its own name: the connection it left is
        # most likely dead (a crashed node, a dropped network) and not yet noticed as such.
        replace = node.settings.on_duplicate == "replace" or since is not None
        try:
            replaced = await node.broker.add_member(
                member.room, member.username, member.connection_id, replace=replace
            )
        except DuplicateMember:
            raise Refused(
                CloseCode.DUPLICATE,
                ErrorCode.DUPLICATE,
                f"username {member.username!r} is already connected in room {member.room!r}",
            ) from None
        try:
            member.held = []
            node.open(member.connection_id, self)
            self.joined = True
            await node.attach(member)
            if replaced is not None:
                await node.broker.signal(
                    Signal("replace", member.room, member.username, replaced, node.node_id)
                )
            recovering = since is not None
            page = await node.broker.history(
                member.room, since if recovering else None, None if recovering else 0
            )
            members = await node.broker.members(member.room)
        except BaseException:
            await self.leave("join_failed")
            raise
        recovered = (
            recovering and page.complete and page.epoch == epoch and (since or 0) <= page.offset
        )
        self.connection.send(
            welcome_frame(
                connection_id=member.connection_id,
                username=member.username,
                room=member.room,
                members=members,
                epoch=page.epoch,
                offset=page.offset,
                recovered=recovered if recovering else None,
            )
        )
        member.last_offset = page.offset
        if recovered:
            member.last_offset = since or 0
            allow = getattr(self.connection, "allow", None)
            if allow is not None:
                # The replay is bounded by the history: it must not look like a slow consumer.
                allow(sum(len(p.frame) for p in page.publications))
            for publication in page.publications:
                if publication.to is None or publication.to == member.username:
                    member.connection.send(publication.frame)
                member.last_offset = publication.offset
        member.release()
        self._log(
            "connection.joined",
            node_id=node.node_id,
            recovered=recovered if recovering else None,
            replaced=replaced is not None,
        )
        if replaced is None:
            await node.broker.signal(
                Signal("join", member.room, member.username, member.connection_id, node.node_id)
            )
            node.events.publish(
                MemberJoined(member.room, member.username, member.connection_id, node.node_id)
            )

    def membership(self, room: str) -> Member | None:
        """This connection's member of `room`, if it is in that room."""
        return self.member if self.joined and self.member.room == room else None

    async def remove(self, member: Member, reason: str) -> None:
        """Taken out of the room by the server (`kicked`) or a newer connection (`replaced`)."""
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

    async def receive(self, text: str) -> None:
        """Handle one text frame from the client.

        Answers (acks, errors) go out in frame order. With a broker that batches publishes,
        a default relay of a room message returns once its publish is under way, so that the
        connection's next frames can join the same round trip; any other frame first waits
        for the relays in flight.
        """
        node = self.node
        node.metrics.frames_in.inc()
        if self.closing or not node.accepting:
            # Shutting down: frames that arrive now are not handled (no ack is sent); the
            # client resends them after reconnecting.
            return
        max_size = node.settings.max_message_size
        if len(text) * 4 > max_size and len(text.encode()) > max_size:
            if not self._relays or await self._settle():
                self.close(
                    CloseCode.MESSAGE_TOO_BIG,
                    ErrorCode.MESSAGE_TOO_BIG,
                    f"frame larger than {max_size} bytes",
                )
            return
        admission = Admission.OK if self.bucket is None else self.bucket.take()
        if admission is Admission.EXCEEDED:
            if not self._relays or await self._settle():
                self.close(
                    CloseCode.RATE_LIMITED,
                    ErrorCode.RATE_LIMITED,
                    "too many frames: kept sending while rate limited",
                )
            return
        try:
            frame = parse_client_frame(text)
        except FrameError as exc:
            if self._relays and not await self._settle():
                return
            if admission is Admission.LIMITED:
                self._rate_limited(exc.frame_id)
            else:
                self.send_error(exc.code, exc.message, exc.frame_id)
            return
        if admission is Admission.LIMITED:
            if not self._relays or await self._settle():
                self._rate_limited(frame.id)
            return
        if self._pipelined and self._relayable(frame):
            await self._start_relay(frame)
            return
        if self._relays and not await self._settle():
            return
        self._busy = True
        try:
            await self.dispatch(frame)
        except RoomcastError as exc:
            self.send_error(exc.code, exc.message, frame.id)
        except Exception:
            self._log("frame.error", level=logging.ERROR, topic=frame.topic, exc_info=True)
            self.send_error(ErrorCode.INTERNAL, "internal error", frame.id)
        finally:
            self._busy = False
            idle = self._idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    def _relayable(self, frame: ClientFrame) -> bool:
        """Whether `frame` takes the default relay to the whole room (see `dispatch`)."""
        topic, registry = frame.topic, self.node.registry
        return (
            frame.to is None
            and topic not in BUILTIN_TOPICS
            and self.identity.may_publish(topic)
            and not registry.handlers(topic)
            and registry.relays(topic)
        )

    async def _start_relay(self, frame: ClientFrame) -> None:
        """Start relaying `frame` as a task, after a free place among the relays in flight."""
        relays = self._relays
        if len(relays) >= MAX_RELAYS_IN_FLIGHT:
            while len(relays) >= MAX_RELAYS_IN_FLIGHT:
                await asyncio.wait((relays[0],))
            if self.closing or not self.node.accepting:
                return
        previous = relays[-1] if relays else None
        # The task's first step runs up to the broker's queue without suspending: tasks
        # start in creation order, so the publishes are asked for in frame order.
        task = asyncio.get_running_loop().create_task(self._relay(frame, previous))
        relays.append(task)
        task.add_done_callback(self._relay_done)

    async def _relay(self, frame: ClientFrame, previous: asyncio.Task[None] | None) -> None:
        """Publish `frame` to the room; answer it once the frame before it was answered."""
        member = self.member
        offset: int | None = None
        error: RoomcastError | None = None
        try:
            offset = await self.node.commands.send(
                PublishToRoom(member.room, frame.topic, frame.payload, sender=member.username)
            )
        except RoomcastError as exc:
            error = exc
        except Exception:
            self._log("frame.error", level=logging.ERROR, topic=frame.topic, exc_info=True)
            error = RoomcastError("internal error", code=ErrorCode.INTERNAL)
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        if error is None:
            self._ack(frame, offset)
        else:
            self.send_error(error.code, error.message, frame.id)

    def _relay_done(self, task: asyncio.Task[None]) -> None:
        relays = self._relays
        if relays and relays[0] is task:
            del relays[0]
        else:
            relays.remove(task)
        if not task.cancelled() and task.exception() is not None:
            self._log(
                "frame.error",
                level=logging.ERROR,
                exc_info=(type(task.exception()), task.exception(), None),
            )

    async def _settle(self) -> bool:
        """Wait until the relays in flight are answered; False when the connection is
        closing meanwhile (the frame is then dropped, as any frame that arrives then)."""
        await asyncio.wait(tuple(self._relays))
        return not self.closing and self.node.accepting

    async def wait_idle(self) -> None:
        """Wait until the frame being handled (if any) and the relays in flight have been
        answered."""
        while self.dispatching:
            if self._relays:
                await asyncio.wait(tuple(self._relays))
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
        topic, member = frame.topic, self.member
        if topic == "ping":
            self.connection.send(server_frame("pong", frame.payload))
            self._ack(frame)
            return
        if topic == "presence":
            members = await self.node.broker.members(member.room)
            self.connection.send(server_frame("presence", {"members": members}))
            self._ack(frame)
            return
        if topic == "auth.refresh":
            await self.refresh(frame)
            return
        if not self.identity.may_publish(topic):
            raise RoomcastError(
                f"not allowed to publish to topic {topic!r}", code=ErrorCode.FORBIDDEN
            )
        handlers = self.node.registry.handlers(topic)
        if handlers:
            await self._run_handlers(frame, handlers)
            self._ack(frame)
        elif self.node.registry.relays(topic):
            if frame.to is None:
                offset = await self.node.commands.send(
                    PublishToRoom(member.room, topic, frame.payload, sender=member.username)
                )
            else:
                offset = await self.node.commands.send(
                    SendToMember(
                        member.room, frame.to, topic, frame.payload, sender=member.username
                    )
                )
            self._ack(frame, offset)
        else:
            raise RoomcastError(f"no handler for topic {topic!r}", code=ErrorCode.UNKNOWN_TOPIC)

    async def _run_handlers(self, frame: ClientFrame, handlers: list[Any]) -> None:
        node = self.node
        ctx = Context(
            frame.topic, frame.payload, frame.id, frame.to, self.member, node.commands, node.events
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

    async def refresh(self, frame: ClientFrame) -> None:
        """`auth.refresh`: take a fresh token in-band (see docs/security.md)."""
        resolver = self.node.resolver
        if not isinstance(resolver, RefreshingResolver):
            raise RoomcastError("authentication is not enabled", code=ErrorCode.INVALID_FRAME)
        try:
            identity = await resolver.refresh(self.identity, [self.member.room], frame.payload)
        except Refused as exc:
            self.send_error(exc.code, exc.message, frame.id)
            self.close(exc.close_code, exc.code, exc.message, frame=False)
            self.node.spawn(self.leave("unauthenticated"))
            return
        self.identity = identity
        self.member.claims = identity.claims
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

    def _rate_limited(self, frame_id: Any) -> None:
        rate = self.bucket.rate if self.bucket is not None else 0
        self.send_error(
            ErrorCode.RATE_LIMITED, f"frame refused: more than {rate:g} frames per second", frame_id
        )

    def _ack(self, frame: ClientFrame, offset: int | None = None) -> None:
        if frame.id is not None:
            self.connection.send(ack_frame(frame.id, offset))

    def send_error(self, code: ErrorCode, message: str, frame_id: Any = None) -> None:
        """Send an `error` frame; the connection stays open."""
        self.node.metrics.errors.labels(code.value).inc()
        self._log("frame.rejected", level=logging.INFO, code=code.value, reason=message)
        self.connection.send(error_frame(code, message, frame_id))

    def close(
        self, close_code: CloseCode, code: ErrorCode, message: str, *, frame: bool = True
    ) -> None:
        """Close with `close_code` after the queued frames, preceded by one error frame
        unless `frame` is False."""
        if self.closing:
            return
        self.closing = True
        self.node.metrics.disconnects.labels(str(int(close_code))).inc()
        self._log("connection.closing", close_code=int(close_code), code=code.value, reason=message)
        if frame:
            self.node.metrics.errors.labels(code.value).inc()
            self.connection.send(error_frame(code, message))
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
        """Leave the room and presence; idempotent, safe to call from several places."""
        if self._left is not None:
            await asyncio.shield(self._left)
            return
        self._left = asyncio.get_running_loop().create_future()
        try:
            await self._leave(reason)
        finally:
            self._left.set_result(None)

    async def _leave(self, reason: str) -> None:
        if self._relays:
            # The frames a member sent before leaving are published before it leaves.
            await asyncio.wait(tuple(self._relays))
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.lease is not None:
            self.lease.release()
        if not self.joined:
            return
        node, member = self.node, self.member
        node.closed(member.connection_id)
        await node.detach(member)
        removed = False
        try:
            removed = await node.broker.remove_member(
                member.room, member.username, member.connection_id
            )
            if removed:
                await node.broker.signal(
                    Signal(
                        "leave", member.room, member.username, member.connection_id, node.node_id
                    )
                )
        except Exception:
            self._log("presence.leave_failed", level=logging.WARNING, exc_info=True)
        self._log(
            "connection.left", reason=reason, duration=round(time.monotonic() - self._opened, 3)
        )
        if removed:
            node.events.publish(
                MemberLeft(member.room, member.username, member.connection_id, node.node_id, reason)
            )


async def _capture(handler: Any, ctx: Context) -> Any:
    try:
        return await handler(ctx)
    except Exception as exc:
        return exc
