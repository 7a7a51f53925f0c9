"""The Broker interface: how a node reaches the other nodes, presence and history.

`memory://` (brokers/memory.py) is the reference implementation; `redis://` (brokers/redis/)
holds to the same contract, proven by one test suite run against both (tests/contract/).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Broker",
    "BrokerListener",
    "DuplicateMember",
    "HistoryPage",
    "ImmediatePublish",
    "OutboxEntry",
    "Publication",
    "RoomFull",
    "ShardedHealth",
    "Signal",
    "SignalKind",
    "StatsStore",
    "WebhookOutbox",
]


@dataclass(slots=True)
class Publication:
    """A room message with its offset, as every subscribed node receives it (read-only by
    convention: not frozen, because a frozen dataclass's constructor costs a call per field,
    and one is built per message).

    Attributes:
        room: the room id.
        offset: the room's offset for this message (one order per room, cluster-wide);
            0 for a message of an ephemeral topic, which has none (:attr:`ephemeral`).
        frame: the complete server frame, encoded once by the publisher.
        to: the one member it is for, or `None` for the whole room.
        epoch: the incarnation of the room's history the offset belongs to (empty when the
            broker does not say); a node that sees it change knows history was lost.
        exclude: the connection it is not delivered to (its sender's, for `"echo": false`),
            or `None`.
        duplicate: what `publish` returns for a key it saw within the idempotency window:
            nothing was published; `offset` and `epoch` are the first publish's (`frame` is
            the one asked for, completed with that offset).
    """

    room: str
    offset: int
    frame: str
    to: str | None = None
    epoch: str = ""
    exclude: str | None = None
    duplicate: bool = False

    @property
    def ephemeral(self) -> bool:
        """Whether it is a message of an ephemeral topic: no offset, never retained, outside
        the room's order (delivered as it comes)."""
        return self.offset == 0


SignalKind = Literal["join", "leave", "kick", "replace"]


@dataclass(frozen=True, slots=True)
class Signal:
    """A room event without offset: presence changes and orders to close a connection.

    Attributes:
        kind: `join`/`leave` (presence frames for the room's members), `kick` (close the
            member with 4499), `replace` (close connection `connection_id` with 4409).
        room: the room id.
        username: whom it is about.
        connection_id: the connection meant (`replace`, `leave`); empty for any.
        node_id: the node that sent it.
        reason: free text for logs (`kick`).
    """

    kind: SignalKind
    room: str
    username: str
    connection_id: str = ""
    node_id: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Retained messages of a room after some offset.

    Attributes:
        epoch: the incarnation of the room's history these offsets belong to.
        offset: the room's latest offset.
        publications: messages with an offset greater than the one asked for, in order.
        complete: whether no message after the one asked for is missing (none was dropped
            by retention); `False` means a client cannot recover from that offset.
    """

    epoch: str
    offset: int
    publications: list[Publication] = field(default_factory=list)
    complete: bool = True


class DuplicateMember(Exception):
    """The username is already present in the room (and the policy is to reject)."""


class RoomFull(Exception):
    """The room holds its class's `max_members` already (and the username is not one)."""


class BrokerListener(Protocol):
    """What a node gives its broker to receive what arrives for the rooms it serves."""

    def on_publication(self, publication: Publication) -> None:
        """A message of a subscribed room, in offset order."""

    def on_signal(self, signal: Signal) -> None:
        """A presence change or close order of a subscribed room."""

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        """Members of a dead node were removed from presence (called on exactly one node)."""

    def on_broker_state(self, available: bool, rooms: Callable[[str], bool] | None = None) -> None:
        """The broker became unreachable (`False`) or reachable again (`True`).

        With `rooms`, only a part of the broker did (one server of several): the rooms for
        which `rooms(room)` holds came back (`True`), and the broker as a whole did not change.
        """


class Broker(Protocol):
    """Cross-node delivery, presence and history, behind one interface.

    Every method that talks to a remote store raises `BrokerUnavailable` when it cannot.
    """

    async def start(self, node_id: str, listener: BrokerListener) -> None:
        """Connect, and deliver what arrives for subscribed rooms to `listener`."""

    async def close(self) -> None:
        """Leave presence for this node's members and disconnect."""

    @property
    def available(self) -> bool:
        """Whether the broker is reachable now (`/readyz`)."""

    async def subscribe(self, room: str) -> None:
        """Receive the room's publications and signals on this node (first local member)."""

    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's traffic on this node (last local member left)."""

    async def publish(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """Give a message the room's next offset, retain it, and deliver it to every node
        subscribed to the room; the frame is `prefix + str(offset) + "}"`. With `exclude`,
        that connection does not get it live.

        With `key`: when a publish to the room with the same key succeeded within the last
        `IDEMPOTENCY_WINDOW` seconds (protocol.py), nothing is published and the first one's
        offset comes back with `duplicate` set. Remembering the key is one atomic step with
        the publish, cluster-wide: of two racing publishes with one key, exactly one
        publishes."""

    async def publish_ephemeral(
        self,
        room: str,
        frame: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> tuple[int, str] | None:
        """Deliver a complete frame to every node subscribed to the room, without an offset
        and without retaining it (an ephemeral topic: a :class:`Publication` with offset 0);
        with `exclude`, that connection does not get it. Returns None.

        With `key`: when a publish to the room with the same key succeeded within the
        idempotency window, nothing is delivered and the first one's offset and epoch come
        back (offset 0 when it was ephemeral too); otherwise the key is remembered, in one
        atomic step with the delivery (as `publish` does)."""

    async def seen_key(self, room: str, key: str) -> tuple[int, str] | None:
        """The offset and epoch of the publish made to `room` with `key` within the
        idempotency window (offset 0: a message of an ephemeral topic), or None: how a
        repeat is answered that cannot be published again (its `to` member left since)."""

    async def signal(self, signal: Signal) -> None:
        """Deliver a signal to every node subscribed to its room."""

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
        """Add connection `connection_id` of `username` to the room's presence for this node.

        With `share`, a username may hold several connections (on any nodes): presence lists
        it once, from its first connection to the removal of its last. With `max_members`,
        a username that is not present yet is refused once the room lists that many, in the
        same atomic step (cluster-wide).

        Returns:
            None when the username was not present (the room gets `presence.join`); else
            what held it before: the connection id it replaced (`replace`), or a non-empty
            value naming the connections it now shares the name with (`share`).
        Raises:
            DuplicateMember: the name is taken in the room and neither `replace` nor `share`.
            RoomFull: the room lists `max_members` usernames and this one is not among them.
        """

    async def remove_member(
        self, room: str, username: str, connection_id: str, *, signal: Signal | None = None
    ) -> bool:
        """Remove connection `connection_id` from `username`'s entry if it is there; True when
        the username is no longer present (the room gets `presence.leave`). Then, and only
        then, `signal` is announced, in the same step as the removal: no join that the
        removal made room for is announced before it."""

    async def has_member(self, room: str, username: str) -> bool:
        """Whether `username` is present in the room on any node."""

    async def members(self, room: str) -> list[str]:
        """Usernames present in the room, cluster-wide, sorted."""

    async def rooms(self) -> dict[str, list[str]]:
        """Every room with members, cluster-wide, with its sorted usernames."""

    async def history(
        self, room: str, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Retained messages with an offset greater than `since` (all retained when None),
        at most `limit` of them (the oldest first)."""

    async def read_join(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        members: bool = True,
        signals: Sequence[Signal] = (),
    ) -> tuple[HistoryPage, list[str]]:
        """The rest of a join, once its member is in presence (`add_member`) and its node
        subscribed to the room: announce `signals` (their room is `room`; in order: the
        `replace`, then the `join`), then read what `history(room, since, limit)` and, with
        `members`, what `members(room)` answer (else the list is empty). One atomic step
        where the broker can (Redis: one script, one round trip).

        Raises:
            BrokerUnavailable: the broker cannot be reached (the signals may have gone out
                when the call failed on its way back).
        """

    async def ping(self) -> None:
        """Check the broker answers; raises `BrokerUnavailable` when it does not."""


@runtime_checkable
class ImmediatePublish(Protocol):
    """An optional broker capability: a publish that is done when the call returns (one
    process: `memory://`), with no coroutine to await.

    The node takes it for a room message when it can (:meth:`roomcast.node.Node.publish_now`):
    the common frame is then handled in the socket's read callback without a coroutine.
    """

    def publish_now(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> Publication:
        """What :meth:`Broker.publish` does, done before returning."""


@runtime_checkable
class DeferredPublish(Protocol):
    """An optional broker capability: a publish that is queued when the call returns, its
    outcome in a future (brokers that batch publishes: `redis://`), with no coroutine of
    its own.

    The node takes it for a connection's relayed room messages
    (:meth:`roomcast.node.Node.publish_soon`): many frames of one connection are then in
    flight at once, each costing a future rather than a task.
    """

    def publish_soon(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> asyncio.Future[Publication]:
        """What :meth:`Broker.publish` does; its publication, or its error, in the future
        (which the broker never cancels)."""


@runtime_checkable
class StatsStore(Protocol):
    """An optional broker capability: each node's latest stats message, cluster-wide.

    A node puts a small message every `--stats-interval` seconds and drops it when it stops;
    one that dies is gone from :meth:`all_stats` once `ttl` seconds have passed since its
    last put. A broker
    without it leaves the admin page with the local node only.
    """

    async def put_stats(self, node_id: str, stats: bytes, ttl: float) -> None:
        """Replace this node's stats message, kept for `ttl` seconds."""

    async def all_stats(self) -> dict[str, bytes]:
        """The live stats message of every node, by node id."""

    async def drop_stats(self, node_id: str) -> None:
        """Remove this node's stats message at once (a node that stops cleanly)."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event handed to a :class:`WebhookOutbox`.

    Attributes:
        kind: `joined` and `left` move the room's occupancy count (`joined` 0 -> 1 opens
            an occupancy, `left` 1 -> 0 closes it); `other` only is kept.
        room: the event's room (it picks the shard).
        record: the event's JSON, to keep for delivery; empty when it is not delivered.
        room_record: the JSON of the `room.occupied` (kept before `record`) or
            `room.vacated` (kept after it) this entry would cause; empty when not delivered.
    """

    kind: Literal["joined", "left", "other"]
    room: str
    record: bytes = b""
    room_record: bytes = b""


@runtime_checkable
class WebhookOutbox(Protocol):
    """An optional broker capability: the webhook outbox, split in `outbox_shards` shards.

    A room's events go to one shard (:meth:`shard_of`), in the order they are appended, and
    are delivered in that order by the one node holding the shard's lease. Entries stay
    until acknowledged (`ack_events`), or until the shard holds more than its bound (the
    oldest not being sent are dropped then, and counted).
    """

    outbox_shards: int
    """How many shards; every node of a cluster uses the same number."""

    def shard_of(self, room: str) -> int:
        """The shard of `room`'s events."""

    async def append_events(
        self, entries: list[OutboxEntry], max_pending: int, *, sending: int = 0
    ) -> tuple[list[int], int]:
        """Keep `entries` in order (one atomic step per shard) and keep each shard at most
        `max_pending` entries long. The oldest `sending` entries of a shard (the batch its
        holder may be sending) are never dropped: past the bound, the oldest after them go,
        so that nothing counted as dropped is delivered after all.

        Returns:
            The entries that opened (`i + 1` for entry `i`) or closed (`-(i + 1)`) a room's
            occupancy, in order, and how many older entries were dropped to stay within
            the bound.
        """

    async def claim_shard(self, shard: int, token: str, ttl: float) -> bool:
        """Take or renew the lease of `shard` for `ttl` seconds; False when another holds it."""

    async def release_shard(self, shard: int, token: str) -> None:
        """Give the lease of `shard` back, if `token` holds it."""

    async def read_events(self, shard: int, count: int) -> list[tuple[str, bytes]]:
        """The oldest `count` kept entries of `shard`: (entry id, record)."""

    async def ack_events(self, shard: int, ids: list[str]) -> None:
        """Forget the entries `ids` of `shard` (delivered, or dropped after retrying)."""


@runtime_checkable
class ShardedHealth(Protocol):
    """An optional broker capability: a broker over several servers says which are down.

    `/readyz` asks it instead of `ping`: a node is ready while at least one server answers,
    and lists the others (docs/configuration.md, "Readiness").
    """

    async def shards_down(self) -> list[str]:
        """Ping every server; those that do not answer, as `#<index> <address>`.

        Raises:
            BrokerUnavailable: no server answers.
        """
