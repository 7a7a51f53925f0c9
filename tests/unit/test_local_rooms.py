"""Local rooms and members: fan-out of one string, dedup by offset, holding while joining."""

from __future__ import annotations

from typing import Any

from roomcast.rooms import LocalRoom, LocalRooms, Member
from roomcast.transports.asgi import AsgiConnection


class Sink:
    """A Connection that records what is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, data: str) -> None:
        self.sent.append(data)

    send_later = send

    def close(self, code: int, reason: str = "") -> None:
        """Unused here."""

    def abort(self, code: int, reason: str = "") -> None:
        """Unused here."""

    @property
    def buffered(self) -> int:
        return 0


def member(name: str, room: str = "r1") -> tuple[Member, Sink]:
    sink = Sink()
    return Member(username=name, room=room, connection_id=f"c-{name}", connection=sink), sink


def test_room_exists_while_it_has_members() -> None:
    """add() creates the room on first member; remove() of the last member drops it."""
    rooms = LocalRooms()
    alice, _ = member("alice")
    bob, _ = member("bob")
    assert rooms.add(alice) is True
    assert rooms.add(bob) is False
    assert len(rooms) == 1
    assert rooms.member_count() == 2
    assert rooms.find("r1", "bob") is bob
    assert rooms.remove(alice) is False
    assert rooms.remove(bob) is True
    assert rooms.get("r1") is None
    assert len(rooms) == 0
    assert rooms.find("r1", "bob") is None


def test_remove_only_removes_that_member() -> None:
    """remove() of a member that was replaced under its name leaves the newer one."""
    rooms = LocalRooms()
    old, _ = member("alice")
    new, _ = member("alice")
    rooms.add(old)
    rooms.add(new)
    assert rooms.remove(old) is False
    assert rooms.find("r1", "alice") is new


def test_fan_out_sends_the_same_string_to_every_member() -> None:
    """fan_out delivers one string object to each member and counts them."""
    rooms = LocalRooms()
    sinks = []
    for name in ("a", "b", "c"):
        m, sink = member(name)
        rooms.add(m)
        sinks.append(sink)
    other, other_sink = member("d", "r2")
    rooms.add(other)
    frame = '{"topic":"t","payload":1,"room":"r1","from":"a","offset":1}'
    local = rooms.get("r1")
    assert local is not None
    assert local.fan_out(1, frame) == 3
    assert all(len(s.sent) == 1 and s.sent[0] is frame for s in sinks)
    assert other_sink.sent == []


def test_deliver_drops_duplicates_and_old_offsets() -> None:
    """A member receives each offset once, never an offset at or below the last one."""
    alice, sink = member("alice")
    alice.deliver(1, "one")
    alice.deliver(1, "one again")
    alice.deliver(3, "three")
    alice.deliver(2, "two late")
    assert sink.sent == ["one", "three"]
    assert alice.last_offset == 3


def test_held_frames_are_released_in_order_after_join() -> None:
    """While held, messages and presence wait; release sends them deduplicated, in order."""
    alice, sink = member("alice")
    alice.held = []
    alice.deliver(5, "m5")
    alice.notify("presence")
    alice.deliver(5, "m5 again")
    alice.deliver(6, "m6")
    assert sink.sent == []
    sink.sent.append("welcome")
    alice.last_offset = 4
    alice.release()
    assert sink.sent == ["welcome", "m5", "presence", "m6"]
    assert alice.held is None
    alice.deliver(7, "m7")
    assert sink.sent[-1] == "m7"


def test_broadcast_skips_the_excluded_member() -> None:
    """broadcast (presence) reaches everyone but `exclude`."""
    rooms = LocalRooms()
    alice, a_sink = member("alice")
    bob, b_sink = member("bob")
    rooms.add(alice)
    rooms.add(bob)
    local = rooms.get("r1")
    assert local is not None
    assert local.broadcast("p", exclude="bob") == 1
    assert a_sink.sent == ["p"]
    assert b_sink.sent == []


def two_members(*, bob_joining: bool = False) -> tuple[LocalRoom, Member, Sink, Member, Sink]:
    """A local room with alice and bob (bob still joining, when asked)."""
    rooms = LocalRooms()
    alice, alice_sink = member("alice")
    bob, bob_sink = member("bob")
    if bob_joining:
        bob.held = []
    rooms.add(alice)
    rooms.add(bob)
    local = rooms.get("r1")
    assert local is not None
    return local, alice, alice_sink, bob, bob_sink


def test_fan_out_skips_the_excluded_connection_and_keeps_its_offset() -> None:
    """`exclude` (echo false): that connection gets nothing but has the offset, so a later
    copy of an older offset is still dropped."""
    local, alice, alice_sink, _, bob_sink = two_members()
    assert local.fan_out(1, "m1", exclude="c-alice") == 1
    assert (alice_sink.sent, bob_sink.sent, alice.last_offset) == ([], ["m1"], 1)
    alice.deliver(1, "m1")
    assert alice_sink.sent == []


def test_ephemeral_frames_are_dropped_while_joining() -> None:
    """An ephemeral frame reaches members not joining; one that is joining never gets it,
    not even after its release (its replay holds stored messages only)."""
    local, _, alice_sink, bob, bob_sink = two_members(bob_joining=True)
    assert local.fan_out_ephemeral("e1", None, None) == 2
    assert local.fan_out_ephemeral("e2", "alice", "c-alice") == 0
    bob.release()
    assert (alice_sink.sent, bob_sink.sent) == (["e1"], [])


class Held:
    """A direct socket that records the frames it holds and writes (strings, not bytes)."""

    def __init__(self, holding: bool) -> None:
        self.pending: list[str] | None = [] if holding else None
        self.written: list[str] = []

    def hold(self, data: str, later: bool = False) -> bool:
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        return True

    def hold_more(self, data: str) -> bool:
        if self.pending is None:
            return False
        self.pending.append(data)
        return True

    @staticmethod
    def hold_more_all(sockets: list[Any], data: str) -> list[int]:
        return [i for i, s in enumerate(sockets) if s is None or not s.hold_more(data)]

    def flush(self) -> None:
        self.written += self.pending or []
        self.pending = None

    def discard(self) -> None:
        self.pending = None

    @property
    def write_buffer_size(self) -> int:
        return 0

    def receive_directly(self, receiver: Any) -> None:
        """Unused here."""


async def _never(message: Any) -> None:
    raise AssertionError("nothing goes through the ASGI send here")


async def test_a_presence_frame_reaches_connections_of_every_kind() -> None:
    """broadcast hands a presence frame to a room's connections together: those whose
    direct socket holds frames take it in one loop, the others (nothing held, another
    class of connection) through their own send_later; each gets it once, after what it
    held before."""
    sockets = [Held(holding=True), Held(holding=False), Held(holding=True)]
    connections = [AsgiConnection(_never, 1 << 20, s) for s in sockets]
    for connection in connections:
        connection.outbox.start_on_demand()
    rooms = LocalRooms()
    names = ["alice", "bob", "carol"]
    for name, connection in zip(names, connections, strict=True):
        rooms.add(
            Member(username=name, room="r1", connection_id=f"c-{name}", connection=connection)
        )
    dave, dave_sink = member("dave")
    rooms.add(dave)
    sockets[0].hold("before")
    local = rooms.get("r1")
    assert local is not None
    assert local.broadcast("p1") == 4
    assert local.broadcast("p2", exclude="carol") == 3
    for connection in connections:
        connection.flush()
    assert [s.written for s in sockets] == [["before", "p1", "p2"], ["p1", "p2"], ["p1"]]
    assert dave_sink.sent == ["p1", "p2"]
