"""The Redis broker's wire format: key names, channel names and the messages between nodes.

This is where a broker message is parsed (:func:`decode`). Everything one node writes for
another to read is named or encoded here, and nowhere else:

- keys: every key of one room carries the hash tag `{room}` (`rc:{room}:o`, ...), so that in a
  Redis Cluster a room's offset, epoch, stream and presence share one slot with its channel;
  every key of one node carries the node's own tag (`rc:node:{n1}`, ...); the two sets that
  name nodes (`rc:nodes`, `rc:stats`) are keys of their own. Each Lua script touches the keys
  of one tag only, handed to it in `KEYS`, built by the functions below;
- channels: one per room, `rc:<db>:{room}` (pub/sub ignores the database number, so it is
  part of the name);
- presence values (`node_id:connection_id`) and a node's member entries
  (`room\\nusername\\nconnection_id`);
- the three messages a room channel carries, told apart by their first byte: a publication
  `p<epoch>\\n<offset>\\n<target>\\n<frame>` (encoded inside the PUBLISH script, the only
  place that knows the offset, by the Lua expression :data:`LUA_PUBLICATION`), a message of an
  ephemeral topic `e<target>\\n<frame>` (:func:`encode_ephemeral`: no offset, not retained),
  and a signal `s` + a JSON array `[kind, username, connection_id, node_id, reason]`
  (:func:`encode_signal`);
- a message's target (:func:`encode_target`), in a publication and in its stream entry: the
  `to` member (empty for the whole room), then, for a message sent with `"echo": false`, a
  space and the sender's connection id (names and connection ids hold no whitespace).

The table of keys and their lifetimes is in docs/architecture.md ("Cluster").
"""

from __future__ import annotations

import random
from typing import Any, get_args

import orjson

from ..base import Publication, Signal, SignalKind

__all__ = [
    "KEY_PREFIX",
    "LUA_FRAME",
    "LUA_PUBLICATION",
    "NODES_KEY",
    "STATS_KEY",
    "WireError",
    "channel",
    "channel_prefix",
    "connection_of",
    "decode",
    "decode_target",
    "encode_ephemeral",
    "encode_signal",
    "encode_target",
    "hold_key",
    "idempotency_key",
    "lease_key",
    "member_entry",
    "member_set_key",
    "new_epoch",
    "node_keys",
    "outbox_keys",
    "parse_member_entry",
    "presence_key",
    "presence_keys",
    "presence_value",
    "room_keys",
    "room_slot_key",
    "stats_key",
    "stream_offset",
    "stream_publication",
    "sweep_set_key",
]

KEY_PREFIX = "rc:"
NODES_KEY = f"{KEY_PREFIX}nodes"
"""Every node id that holds (or held) a lease: what the sweeper looks at."""
STATS_KEY = f"{KEY_PREFIX}stats"
"""Node ids that put a stats message (see stats.py)."""

_PUBLICATION = b"p"
_EPHEMERAL = b"e"
_SIGNAL = b"s"
_SIGNAL_KINDS = frozenset(get_args(SignalKind))

LUA_FRAME = "ARGV[4] .. id .. '}'"
"""The PUBLISH script's completion of a frame with its offset (as `protocol.message_frame`)."""
LUA_PUBLICATION = "'p' .. epoch .. '\\n' .. id .. '\\n' .. ARGV[5] .. '\\n' .. frame"
"""The PUBLISH script's encoding of a publication (`epoch`, `id` and `frame` are locals of
the script, `ARGV[5]` the target, :func:`encode_target`); :func:`decode` reads it."""


class WireError(ValueError):
    """A message on a room channel that is not in roomcast's format."""


# keys


def _tag(name: str) -> str:
    """`name` as the hash tag between braces. Redis hashes what is between the first `{`
    and the first `}` after it, and the whole key when that is empty: a name that starts
    with `}` gets a space before it (names hold no whitespace, so no two names meet)."""
    return f" {name}" if name.startswith("}") else name


def _room_key(room: str, kind: str) -> str:
    return f"{KEY_PREFIX}{{{_tag(room)}}}:{kind}"


def _node_key(node_id: str, kind: str) -> str:
    return f"{KEY_PREFIX}{kind}:{{{_tag(node_id)}}}"


def presence_key(room: str) -> str:
    """The room's presence hash: username -> `node_id:connection_id`."""
    return _room_key(room, "p")


def room_slot_key(room: str) -> str:
    """A key of the room's slot: what routes a call about the room in a Redis Cluster."""
    return presence_key(room)


def hold_key(room: str) -> str:
    """What holds a room of a class without presence: set, with a short TTL, by each node
    that serves the room (it stands for the presence hash in the scripts)."""
    return _room_key(room, "h")


def room_keys(room: str, *, listed: bool = True) -> list[str]:
    """The KEYS of the PUBLISH and HISTORY scripts: offset, epoch, stream, and what holds
    the room: its presence hash, or, in a class without presence (`listed` False), its
    :func:`hold_key`."""
    holder = presence_key(room) if listed else hold_key(room)
    return [_room_key(room, "o"), _room_key(room, "e"), _room_key(room, "s"), holder]


def presence_keys(room: str) -> list[str]:
    """The KEYS of ADD_MEMBER and REMOVE_MEMBER: presence hash, the room's offset and epoch
    (one slot: the room's)."""
    return [presence_key(room), _room_key(room, "o"), _room_key(room, "e")]


def sweep_keys(room: str) -> list[str]:
    """The KEYS of SWEEP_ROOMS for one entry of the room: presence hash, offset, epoch, and
    the room's sweep record (which sweeper removed which token, kept for `SWEEP_RECORD_MS`
    so that a sweeper whose reply was lost learns on its retry what it removed)."""
    return [*presence_keys(room), _room_key(room, "w")]


SWEEP_RECORD_MS = 600_000
"""How long a room's sweep record remembers a removal (longer than any sweeper's retry)."""


def idempotency_key(room: str, key: str) -> str:
    """The PUBLISH script's fifth KEY for a publish with idempotency `key`: it holds the first
    publish's `offset epoch` for the window (in the room's slot, after its hash tag)."""
    return _room_key(room, f"k:{key}")


def member_set_key(node_id: str) -> str:
    """The set of a node's presence entries (:func:`member_entry`)."""
    return _node_key(node_id, "node-members")


def sweep_set_key(node_id: str) -> str:
    """Entries of a dead node that a sweep claimed and has not finished removing."""
    return _node_key(node_id, "node-sweep")


def stats_key(node_id: str) -> str:
    """The node's latest stats message, with a time to live."""
    return _node_key(node_id, "stats")


def lease_key(node_id: str) -> str:
    """The node's lease: a random token with a TTL, renewed while the node lives."""
    return _node_key(node_id, "node")


def node_keys(node_id: str) -> list[str]:
    """The KEYS of LEASE, SWEEP_CLAIM and SWEEP_DONE: lease, member set, sweep set (one
    slot: the node's)."""
    return [lease_key(node_id), member_set_key(node_id), sweep_set_key(node_id)]


def outbox_keys(shard: int) -> list[str]:
    """The KEYS of the webhook outbox scripts for one shard: its stream (the events waiting
    for delivery), its occupancy hash (room -> members counted) and its lease (the node
    that delivers it). The shard is the hash tag: one slot per shard, none per room."""
    tag = f"{KEY_PREFIX}{{wh{shard}}}"
    return [f"{tag}:events", f"{tag}:occupancy", f"{tag}:lease"]


def new_epoch() -> str:
    """The epoch a room's new incarnation takes if a script call starts one (each publish
    and join offers one): 48 random bits, unique enough among a room's incarnations, and
    public (clients see it), so not from the operating system's generator, whose system call
    per publish cost a twentieth of a Redis chat node's time."""
    return f"{random.getrandbits(48):012x}"


# channels


def channel_prefix(db: int | str) -> str:
    """The start of every room channel of database `db`."""
    return f"{KEY_PREFIX}{db}:"


def channel(prefix: str, room: str) -> bytes:
    """The room's channel, under :func:`channel_prefix`."""
    return f"{prefix}{{{_tag(room)}}}".encode()


# presence entries


def presence_value(node_id: str, connection_id: str) -> str:
    """What the presence hash holds for a member: who holds it, on which node."""
    return f"{node_id}:{connection_id}"


def connection_of(value: bytes) -> str:
    """The connection id of a presence value."""
    return value.decode().rpartition(":")[2]


def member_entry(room: str, username: str, connection_id: str) -> str:
    """An entry of a node's member set; names hold no whitespace, so newlines separate."""
    return f"{room}\n{username}\n{connection_id}"


def parse_member_entry(entry: bytes | str) -> tuple[str, str, str] | None:
    """(room, username, connection id) of a member set entry; None when malformed."""
    parts = (entry.decode() if isinstance(entry, bytes) else entry).split("\n")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


# history


def stream_offset(entry_id: bytes) -> int:
    """The offset of a stream entry id."""
    return int(entry_id.split(b"-", 1)[0])


def stream_publication(room: str, entry_id: bytes, fields: list[bytes], epoch: str) -> Publication:
    """A retained message from its stream entry (fields `f`: the frame, `t`: the target)."""
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    to, exclude = decode_target(values.get(b"t", b"").decode())
    return Publication(room, stream_offset(entry_id), values[b"f"].decode(), to, epoch, exclude)


# messages between nodes


def encode_target(to: str | None, exclude: str | None) -> str:
    """A message's target: `to` (empty: the whole room), then ` <connection id>` when that
    connection does not get it."""
    return (to or "") if exclude is None else f"{to or ''} {exclude}"


def decode_target(target: str) -> tuple[str | None, str | None]:
    """`(to, exclude)` of a target made by :func:`encode_target`."""
    to, _, exclude = target.partition(" ")
    return to or None, exclude or None


def encode_ephemeral(frame: str, to: str | None, exclude: str | None) -> bytes:
    """A message of an ephemeral topic as it travels on its room's channel."""
    return _EPHEMERAL + f"{encode_target(to, exclude)}\n{frame}".encode()


def encode_signal(signal: Signal) -> bytes:
    """A signal as it travels on its room's channel (the room is the channel)."""
    return _SIGNAL + orjson.dumps(
        [signal.kind, signal.username, signal.connection_id, signal.node_id, signal.reason]
    )


def decode(room: str, data: bytes) -> Publication | Signal:
    """Parse a message of the room's channel (an ephemeral one is a publication with offset 0).

    Raises:
        WireError: `data` is not a publication or a signal in roomcast's format.
    """
    kind = data[:1]
    try:
        if kind == _PUBLICATION:
            epoch, offset, target, frame = data[1:].decode().split("\n", 3)
            to, exclude = decode_target(target)
            return Publication(room, int(offset), frame, to, epoch, exclude)
        if kind == _EPHEMERAL:
            target, frame = data[1:].decode().split("\n", 1)
            to, exclude = decode_target(target)
            return Publication(room, 0, frame, to, exclude=exclude)
        if kind == _SIGNAL:
            fields: Any = orjson.loads(data[1:])
            if (
                isinstance(fields, list)
                and len(fields) == 5
                and fields[0] in _SIGNAL_KINDS
                and all(isinstance(f, str) for f in fields)
            ):
                return Signal(fields[0], room, *fields[1:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise WireError(f"not a roomcast message on the channel of room {room!r}: {data[:40]!r}")
