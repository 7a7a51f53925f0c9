"""The in-memory broker: one process, everything in memory; the reference implementation."""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

from ..protocol import IDEMPOTENCY_WINDOW, message_frame
from ..room_classes import RoomClasses
from .base import (
    BrokerListener,
    DuplicateMember,
    HistoryPage,
    OutboxEntry,
    Publication,
    RoomFull,
    Signal,
)

__all__ = ["MemoryBroker"]


_Entry = tuple[float, int, str, str | None, str | None]
"""A retained message: (when published, offset, frame, to, exclude). Plain values, not a
Publication: a tuple of strings and numbers is not tracked by the garbage collector, so
retained history does not make every full collection walk it (a Publication would be
tracked, and a node's history is most of its objects)."""


@dataclass(slots=True)
class _Stream:
    epoch: str
    size: int
    """Messages retained (the room class's `history_size`)."""
    ttl: float
    """Seconds they live (the room class's `history_ttl`)."""
    offset: int = 0
    entries: deque[_Entry] = field(default_factory=deque)
    """Retained messages, oldest first."""
    touched: float = 0.0
    """The last publish, or the moment the room was last left (whichever is later)."""


class MemoryBroker:
    """Delivery, presence and history for a single process.

    A room is held while it is subscribed or has members. A room that is not held, where
    nothing was published and nobody was present for `history_ttl` seconds, has lost its
    history: its offset and epoch are forgotten and it starts again under a new epoch (the
    same rule as the Redis broker, where its keys expire).

    Idempotency keys are remembered `idempotency_window` seconds each, whatever happens to the
    room meanwhile: what they hold is bounded by the keyed publishes of the last window (one
    small entry each), and expired ones are dropped as the room's next keyed publish passes
    them and by a sweep every 1024 publishes (every 8 per room, with more than 128 rooms).

    Args:
        history_size: messages retained per room.
        history_ttl: seconds retained messages live after their publish.
        classes: the room classes, whose `history_size` and `history_ttl` apply per room
            instead (their default class has the two above).
        idempotency_window: seconds a publish's key is remembered.
    """

    def __init__(
        self,
        *,
        history_size: int = 100,
        history_ttl: float = 300.0,
        classes: RoomClasses | None = None,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._classes = (
            RoomClasses(history_size=history_size, history_ttl=history_ttl)
            if classes is None
            else classes
        )
        self.idempotency_window = idempotency_window
        # Per room, key -> (until, offset, epoch), in publish order, which is also the order
        # in which they expire (every key lives the same window).
        self._keys: dict[str, dict[str, tuple[float, int, str]]] = {}
        self._listener: BrokerListener | None = None
        self._subscribed: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, str]] = {}
        self._until_sweep = 1024
        """Publishes before the next sweep."""
        # Each room's usernames, kept sorted as they come and go: a join's member list is a
        # copy, not a sort of the whole room per join.
        self._sorted: dict[str, list[str]] = {}
        self._stats: dict[str, tuple[float, bytes]] = {}
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_seq = 0
        self._occupancy: dict[str, int] = {}

    @property
    def available(self) -> bool:
        """Always True: memory cannot be unreachable."""
        return True

    async def start(self, node_id: str, listener: BrokerListener) -> None:
        """Remember where to deliver."""
        self._listener = listener

    async def close(self) -> None:
        """Forget every subscription and member."""
        self._subscribed.clear()
        self._presence.clear()
        self._sorted.clear()

    async def subscribe(self, room: str) -> None:
        """Deliver the room's traffic to the listener."""
        self._current(room, time.monotonic())  # a lost history is not taken over
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering the room's traffic."""
        self._subscribed.discard(room)
        self._released(room)

    def _held(self, room: str) -> bool:
        return room in self._subscribed or room in self._presence

    def _released(self, room: str) -> None:
        """The room may no longer be held: its history lives `history_ttl` from now."""
        stream = self._streams.get(room)
        if stream is not None and not self._held(room):
            stream.touched = max(stream.touched, time.monotonic())

    def _lost(self, room: str, stream: _Stream, now: float) -> bool:
        return now - stream.touched > stream.ttl and not self._held(room)

    def _current(self, room: str, now: float) -> _Stream | None:
        """The room's state, None when it has none or its history was lost."""
        stream = self._streams.get(room)
        if stream is not None and self._lost(room, stream, now):
            del self._streams[room]
            return None
        if stream is not None:
            self._expire(stream, now)
        return stream

    def _stream(self, room: str, now: float) -> _Stream:
        stream = self._current(room, now)
        if stream is None:
            # Nothing was ever published, or the history was lost: a new incarnation.
            cls = self._classes.resolve(room)
            stream = self._streams[room] = _Stream(
                secrets.token_hex(6), cls.history_size, cls.history_ttl, touched=now
            )
        return stream

    def _expire(self, stream: _Stream, now: float) -> None:
        entries = stream.entries
        cutoff = now - stream.ttl
        while entries and entries[0][0] < cutoff:
            entries.popleft()

    async def publish(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """Assign the next offset, retain, and deliver synchronously (one order per room);
        a key seen within the window publishes nothing (see `Broker.publish`)."""
        return self.publish_now(room, prefix, to, exclude, key=key)

    def publish_now(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """:meth:`publish`, without a coroutine (`ImmediatePublish`)."""
        now = time.monotonic()
        keys = None
        if key is not None:
            keys = self._keys.setdefault(room, {})
            _expire_keys(keys, now)
            seen = keys.get(key)
            if seen is not None:
                _, offset, epoch = seen
                return Publication(
                    room, offset, message_frame(prefix, offset), to, epoch, duplicate=True
                )
        stream = self._streams.get(room)
        if stream is None or now - stream.touched > stream.ttl:
            stream = self._stream(room, now)  # maybe lost: the general path decides
        else:
            entries = stream.entries
            if entries and entries[0][0] < now - stream.ttl:
                self._expire(stream, now)
        stream.offset += 1
        stream.touched = now
        publication = Publication(
            room, stream.offset, message_frame(prefix, stream.offset), to, stream.epoch, exclude
        )
        if stream.size:
            entries = stream.entries
            entries.append((now, stream.offset, publication.frame, to, exclude))
            if len(entries) > stream.size:
                entries.popleft()
        if keys is not None and key is not None:
            keys[key] = (now + self.idempotency_window, stream.offset, stream.epoch)
        if room in self._subscribed and self._listener is not None:
            self._listener.on_publication(publication)
        self._count_down(now)
        return publication

    async def publish_ephemeral(
        self,
        room: str,
        frame: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> tuple[int, str] | None:
        """Deliver synchronously, with no offset and nothing retained; a key seen within the
        window delivers nothing (see `Broker.publish_ephemeral`)."""
        if key is not None:
            now = time.monotonic()
            seen = self._seen(room, key, now)
            if seen is not None:
                return seen
            self._keys.setdefault(room, {})[key] = (now + self.idempotency_window, 0, "")
            self._count_down(now)
        if room in self._subscribed and self._listener is not None:
            self._listener.on_publication(Publication(room, 0, frame, to, exclude=exclude))
        return None

    async def seen_key(self, room: str, key: str) -> tuple[int, str] | None:
        """The first publish of `key` in `room` within the window (see `Broker.seen_key`)."""
        return self._seen(room, key, time.monotonic())

    def _seen(self, room: str, key: str, now: float) -> tuple[int, str] | None:
        keys = self._keys.get(room)
        if keys is None:
            return None
        _expire_keys(keys, now)
        seen = keys.get(key)
        return None if seen is None else (seen[1], seen[2])

    def _count_down(self, now: float) -> None:
        """One more publish (or key kept) toward the next sweep."""
        self._until_sweep -= 1
        if not self._until_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the state of rooms whose history was lost (see the class), and expired keys.

        The next sweep comes after 1024 publishes, or 8 per room held if that is more: a
        sweep walks every room, and must not cost much per publish when rooms are many.
        """
        self._until_sweep = max(1024, 8 * len(self._streams))
        for room in [r for r, s in self._streams.items() if self._lost(r, s, now)]:
            del self._streams[room]
        for room, keys in list(self._keys.items()):
            _expire_keys(keys, now)
            if not keys:
                del self._keys[room]

    async def signal(self, signal: Signal) -> None:
        """Deliver a signal to the listener when the room is subscribed."""
        if signal.room in self._subscribed and self._listener is not None:
            self._listener.on_signal(signal)

    async def add_member(
        self,
        room: str,
        username: str,
        connection_id: str,
        *,
        replace: bool = False,
        share: bool = False,
        max_members: int | None = None,
    ) -> str | None:
        """Add to presence; see `Broker.add_member`."""
        self._current(room, time.monotonic())  # a lost history is not taken over
        members = self._presence.get(room, {})
        if max_members is not None and username not in members and len(members) >= max_members:
            raise RoomFull(room)
        members = self._presence.setdefault(room, members)
        # One connection id, or (under `share`) several separated by spaces: a plain string
        # keeps the entry as small as it was for the common one-connection case.
        previous = members.get(username)
        if previous is not None and share:
            if connection_id not in previous.split(" "):
                members[username] = f"{previous} {connection_id}"
            return previous
        if previous is not None and not replace:
            raise DuplicateMember(username)
        members[username] = connection_id
        if previous is None:
            insort(self._sorted.setdefault(room, []), username)
        return previous

    async def remove_member(
        self, room: str, username: str, connection_id: str, *, signal: Signal | None = None
    ) -> bool:
        """Compare-and-delete this connection from the presence entry; True when the
        username's entry is gone (its last connection left), and then `signal` is announced."""
        members = self._presence.get(room)
        entry = None if members is None else members.get(username)
        if members is None or entry is None:
            return False
        if entry != connection_id:
            ids = entry.split(" ")
            if connection_id not in ids:
                return False
            ids.remove(connection_id)
            members[username] = " ".join(ids)
            return False
        del members[username]
        names = self._sorted[room]
        del names[bisect_left(names, username)]
        if not members:
            del self._presence[room]
            del self._sorted[room]
            self._released(room)
        if signal is not None:
            await self.signal(signal)
        return True

    async def has_member(self, room: str, username: str) -> bool:
        """Whether the room's presence holds `username`."""
        return username in self._presence.get(room, ())

    async def members(self, room: str) -> list[str]:
        """Sorted usernames of the room."""
        return list(self._sorted.get(room, ()))

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members."""
        return {room: list(self._sorted[room]) for room in sorted(self._presence)}

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages after `since`."""
        stream = self._stream(room, time.monotonic())
        entries = stream.entries
        first = entries[0][1] if entries else stream.offset + 1
        after = since if since is not None else first - 1
        complete = after >= first - 1
        kept = [e for e in entries if e[1] > after]
        if limit is not None:
            kept = kept[:limit]
        epoch = stream.epoch
        publications = [
            Publication(room, offset, frame, to, epoch, exclude)
            for _, offset, frame, to, exclude in kept
        ]
        return HistoryPage(stream.epoch, stream.offset, publications, complete)

    async def read_join(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        members: bool = True,
        signals: Sequence[Signal] = (),
    ) -> tuple[HistoryPage, list[str]]:
        """Announce `signals`, then the room's history and members; see `Broker.read_join`."""
        for signal in signals:
            await self.signal(signal)
        page = await self.history(room, since, limit)
        return page, await self.members(room) if members else []

    async def ping(self) -> None:
        """Memory always answers."""

    async def put_stats(self, node_id: str, stats: bytes, ttl: float) -> None:
        """Keep this node's stats message for `ttl` seconds."""
        self._stats[node_id] = (time.monotonic() + ttl, stats)

    async def all_stats(self) -> dict[str, bytes]:
        """The stats messages whose `ttl` has not run out."""
        now = time.monotonic()
        for node_id in [n for n, (until, _) in self._stats.items() if until <= now]:
            del self._stats[node_id]
        return {node_id: stats for node_id, (_, stats) in self._stats.items()}

    async def drop_stats(self, node_id: str) -> None:
        """Forget this node's stats message."""
        self._stats.pop(node_id, None)

    # the webhook outbox (WebhookOutbox): one shard, in this process

    outbox_shards = 1
    """One shard: this process holds every room."""

    def shard_of(self, room: str) -> int:
        """Every room's events are in shard 0."""
        return 0

    def _keep(self, record: bytes) -> None:
        if record:
            self._outbox_seq += 1
            self._outbox.append((str(self._outbox_seq), record))

    async def append_events(
        self, entries: list[OutboxEntry], max_pending: int, *, sending: int = 0
    ) -> tuple[list[int], int]:
        """Keep the entries, counting each room's members; see `WebhookOutbox`."""
        changes: list[int] = []
        occupancy = self._occupancy
        for index, entry in enumerate(entries):
            room = entry.room
            if entry.kind == "joined":
                count = occupancy[room] = occupancy.get(room, 0) + 1
                if count == 1:
                    changes.append(index + 1)
                    self._keep(entry.room_record)
                self._keep(entry.record)
            elif entry.kind == "left":
                self._keep(entry.record)
                count = occupancy.get(room, 0) - 1
                if count > 0:
                    occupancy[room] = count
                else:
                    # Below zero: a leave whose join was not counted (webhooks turned on
                    # while the member was in), which closes nothing.
                    occupancy.pop(room, None)
                    if count == 0:
                        changes.append(-(index + 1))
                        self._keep(entry.room_record)
            else:
                self._keep(entry.record)
        outbox = self._outbox
        dropped = len(outbox) - max(max_pending, sending)
        if dropped <= 0:
            return changes, 0
        head = [outbox.popleft() for _ in range(sending)]  # the batch being sent stays
        for _ in range(dropped):
            outbox.popleft()
        outbox.extendleft(reversed(head))
        return changes, dropped

    async def claim_shard(self, shard: int, token: str, ttl: float) -> bool:
        """The one process always holds its one shard."""
        return True

    async def release_shard(self, shard: int, token: str) -> None:
        """Nothing to give back."""

    async def read_events(self, shard: int, count: int) -> list[tuple[str, bytes]]:
        """The oldest `count` entries."""
        return list(islice(self._outbox, count))

    async def ack_events(self, shard: int, ids: list[str]) -> None:
        """Forget the entries `ids` (the oldest ones, as read)."""
        wanted = set(ids)
        outbox = self._outbox
        while outbox and outbox[0][0] in wanted:
            wanted.discard(outbox.popleft()[0])
        if wanted:
            self._outbox = deque(e for e in outbox if e[0] not in wanted)


def _expire_keys(keys: dict[str, tuple[float, int, str]], now: float) -> None:
    """Drop the keys whose window is over (the oldest come first)."""
    while keys:
        key = next(iter(keys))
        if keys[key][0] > now:
            return
        del keys[key]
