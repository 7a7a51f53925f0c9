"""One connection's membership of one room: join (presence, subscribe, the first frame and the
replay), leave (presence, unsubscribe), and the presence signals and events of both.

A connection (session.py) holds one membership per room it is in; it calls :func:`join` for
its URL room and for every `room.join`, and :func:`leave` for every `room.leave`, kick and
close. Nothing here knows frames in: that is the session's part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .auth import Identity
from .brokers import DuplicateMember, HistoryPage, Publication, RoomFull, Signal
from .codes import CloseCode, ErrorCode
from .connection import Connection
from .errors import Refused
from .events import MemberJoined, MemberLeft
from .log import log_event
from .node import Node
from .room_classes import DuplicatePolicy
from .rooms import Member, MemberHandle

__all__ = ["JoinPoint", "join", "leave", "resume_policy"]


@dataclass(frozen=True, slots=True)
class JoinPoint:
    """Where a room stands as a connection joins it: what the first frame about it says."""

    room: str
    members: list[str]
    epoch: str
    offset: int
    recovered: bool | None
    """Only with `since`: whether every message after it is replayed."""


def resume_policy(policy: DuplicatePolicy, since: int | None) -> tuple[bool, bool]:
    """`(replace, share)` for a join under the room's `policy`: under `share` several
    connections of a user stay; otherwise a resuming join (with `since`) takes over the
    user's name, because the connection it left is most likely dead (a crashed node, a
    dropped network) and not yet noticed as such."""
    if policy == "share":
        return False, True
    return policy == "replace" or since is not None, False


async def join(
    node: Node,
    handle: MemberHandle,
    connection: Connection,
    identity: Identity,
    connection_id: str,
    room: str,
    *,
    since: int | None = None,
    epoch: str | None = None,
    backlog: int | None = None,
    first_frame: Callable[[JoinPoint], str],
) -> Member:
    """Enter the room's presence and local room, send `first_frame` and the replay.

    With `since`+`epoch`, the replay is every retained message after `since` (when the epoch
    matches and none is missing); with `backlog`, the last `backlog` retained messages; live
    messages that arrive meanwhile are held and follow, without duplicates.

    The room's class (room_classes.py) decides the rest: a personal room admits its owner
    only; a room without presence keeps no member entry (every connection stays, nobody is
    listed or announced); one without `join_leave` announces nobody.

    Raises:
        Refused: `duplicate` (4409) when the username is in the room and the policy rejects;
            `forbidden` (4403) for another user's personal room; `room_full` (4429) past the
            class's `max_members`.
        BrokerUnavailable: presence or history cannot be reached (nothing is left behind).
    """
    cls = node.classes.resolve(room)
    username = identity.username
    owner = cls.owner(room)
    if owner is not None and owner != username:
        raise Refused(
            CloseCode.FORBIDDEN,
            ErrorCode.FORBIDDEN,
            f"room {room!r} is a personal room of another user",
        )
    replace, share = resume_policy(cls.on_duplicate, since)
    previous: str | None = None
    if cls.tracked:
        try:
            previous = await node.broker.add_member(
                room,
                username,
                connection_id,
                replace=replace,
                share=share,
                max_members=cls.max_members,
            )
        except DuplicateMember:
            raise Refused(
                CloseCode.DUPLICATE,
                ErrorCode.DUPLICATE,
                f"username {username!r} is already connected in room {room!r}",
            ) from None
        except RoomFull:
            raise Refused(
                CloseCode.RATE_LIMITED,
                ErrorCode.ROOM_FULL,
                f"room {room!r} is full: its class admits {cls.max_members} members",
            ) from None
    replaced = previous if replace else None
    member = Member(
        username=username,
        room=room,
        connection_id=connection_id,
        connection=connection,
        claims=identity.claims,
        handle=handle,
        held=[],
    )
    signals: list[Signal] = []
    if replaced is not None:
        signals.append(Signal("replace", room, username, replaced, node.node_id))
    announce = previous is None and cls.presence
    if announce and cls.join_leave:
        signals.append(Signal("join", room, username, connection_id, node.node_id))
    recovering = since is not None
    asked = False
    try:
        await node.attach(member, share=share)
        asked = True
        # The signals, the history and the members in one broker step (Redis: one script).
        page, members = await node.broker.read_join(
            room,
            since,
            None if recovering or backlog is not None else 0,
            members=cls.presence,
            signals=signals,
        )
    except BaseException:
        # No event was published yet, so none is taken back. The join signal may have gone
        # out with a read that failed on its way back: then its leave follows it.
        joined = asked and any(signal.kind == "join" for signal in signals)
        if await leave(node, member, "join_failed", announce=False) and joined:
            await _signal_leave(node, member)
        raise
    recovered = recovering and page.complete and page.epoch == epoch and (since or 0) <= page.offset
    connection.send(
        first_frame(
            JoinPoint(room, members, page.epoch, page.offset, recovered if recovering else None)
        )
    )
    _replay(member, page, since if recovered else None, backlog)
    member.release()
    log_event(
        "connection.joined",
        room=room,
        username=username,
        connection_id=connection_id,
        node_id=node.node_id,
        recovered=recovered if recovering else None,
        replaced=replaced is not None,
        shared=share and previous is not None,
    )
    if announce:
        node.events.publish(MemberJoined(room, username, connection_id, node.node_id))
    return member


def _replay(member: Member, page: HistoryPage, since: int | None, backlog: int | None) -> None:
    """Send the missed (`since`) or latest (`backlog`) messages of `page`, then mark the
    member as having everything up to the page's offset."""
    publications = page.publications
    if since is None and backlog is not None:
        publications = publications[-backlog:] if backlog else []
    elif since is None:
        publications = []
    if publications:
        allow = getattr(member.connection, "allow", None)
        if allow is not None:
            # The replay is bounded by the history: it must not look like a slow consumer.
            allow(sum(len(p.frame) for p in publications))
    username, send = member.username, member.connection.send
    for publication in publications:
        if publication.to is None or publication.to == username:
            send(publication.frame)
    member.last_offset = page.offset if since is None else max(since, _last(publications, since))


def _last(publications: list[Publication], default: int) -> int:
    return publications[-1].offset if publications else default


async def leave(node: Node, member: Member, reason: str, *, announce: bool = True) -> bool:
    """Leave the local room and the room's presence; True when the username left presence
    (its last connection under `share`), which the room's members hear as `presence.leave`.

    Never raises for the broker: a presence entry that cannot be removed now expires with
    this node's lease.
    """
    await node.detach(member)
    cls = node.classes.resolve(member.room)
    if not cls.tracked:
        return False
    removed = False
    signal = None
    announce = announce and cls.presence
    if announce and cls.join_leave:
        signal = Signal("leave", member.room, member.username, member.connection_id, node.node_id)
    try:
        removed = await node.broker.remove_member(
            member.room, member.username, member.connection_id, signal=signal
        )
    except Exception:
        _leave_failed(member)
    if removed and announce:
        node.events.publish(
            MemberLeft(member.room, member.username, member.connection_id, node.node_id, reason)
        )
    return removed and cls.presence


async def _signal_leave(node: Node, member: Member) -> None:
    """Announce that `member`'s username left the room (never raises for the broker)."""
    try:
        await node.broker.signal(
            Signal("leave", member.room, member.username, member.connection_id, node.node_id)
        )
    except Exception:
        _leave_failed(member)


def _leave_failed(member: Member) -> None:
    log_event(
        "presence.leave_failed",
        level=logging.WARNING,
        room=member.room,
        username=member.username,
        connection_id=member.connection_id,
        exc_info=True,
    )
