"""The Broker contract, proven on both implementations: memory:// and redis:// (a real server)."""

from __future__ import annotations

import pytest

from roomcast.brokers import DuplicateMember, Signal
from roomcast.protocol import message_prefix
from tests.contract.conftest import Factory


def prefix(room: str, n: int) -> str:
    return message_prefix("chat", {"n": n}, room, "alice")


async def test_offsets_are_consecutive_and_frames_complete(make_broker: Factory) -> None:
    """Each publish gets the room's next offset and the frame is prefix + offset + '}'."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    offsets = [(await broker.publish("r1", prefix("r1", n))).offset for n in range(5)]
    assert offsets == [1, 2, 3, 4, 5]
    assert [p.offset for p in recorder.publications] == [1, 2, 3, 4, 5]
    first = recorder.publications[0]
    assert first.frame == prefix("r1", 0) + "1}"
    assert first.to is None
    assert first.epoch


async def test_publish_returns_after_local_delivery(make_broker: Factory) -> None:
    """A publish to a subscribed room has reached the listener when it returns."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    publication = await broker.publish("r1", prefix("r1", 1), "bob")
    assert recorder.publications == [publication]
    assert publication.to == "bob"


async def test_only_subscribed_rooms_are_delivered(make_broker: Factory) -> None:
    """Traffic of a room is delivered only between subscribe and unsubscribe."""
    broker, recorder = await make_broker()
    await broker.subscribe("r2")
    await broker.publish("r1", prefix("r1", 1))
    await broker.subscribe("r1")
    await broker.publish("r1", prefix("r1", 2))
    await broker.unsubscribe("r1")
    await broker.publish("r1", prefix("r1", 3))
    await broker.publish("r2", prefix("r2", 1))  # delivered after anything sent before it
    assert [(p.room, p.offset) for p in recorder.publications] == [("r1", 2), ("r2", 1)]


async def test_offsets_are_per_room(make_broker: Factory) -> None:
    """Every room counts its own offsets."""
    broker, _ = await make_broker()
    assert (await broker.publish("a", prefix("a", 1))).offset == 1
    assert (await broker.publish("b", prefix("b", 1))).offset == 1
    assert (await broker.publish("a", prefix("a", 2))).offset == 2


async def test_signals_reach_subscribed_rooms(make_broker: Factory) -> None:
    """A signal arrives, whole, on a subscribed room and not on another."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    await broker.signal(Signal("kick", "r2", "bob", node_id="n1"))
    sent = Signal("kick", "r1", "bob", "c1", "n1", "spam")
    await broker.signal(sent)
    await broker.publish("r1", prefix("r1", 1))  # orders after the signals
    assert recorder.signals == [sent]


async def test_history_after_since_with_limit(make_broker: Factory) -> None:
    """History returns the messages after `since`, oldest first, at most `limit`."""
    broker, _ = await make_broker()
    for n in range(5):
        await broker.publish("r1", prefix("r1", n), "bob" if n == 2 else None)
    page = await broker.history("r1")
    assert page.offset == 5
    assert page.complete
    assert [p.offset for p in page.publications] == [1, 2, 3, 4, 5]
    assert page.publications[2].to == "bob"
    assert page.publications[2].frame == prefix("r1", 2) + "3}"
    page = await broker.history("r1", 2, 2)
    assert [p.offset for p in page.publications] == [3, 4]
    assert page.complete
    assert (await broker.history("r1", 5)).publications == []
    assert (await broker.history("r1", None, 0)).publications == []


async def test_history_keeps_exactly_history_size(make_broker: Factory) -> None:
    """Only the last history-size messages are kept; older `since` is not complete."""
    broker, _ = await make_broker(history_size=3)
    for n in range(7):
        await broker.publish("r1", prefix("r1", n))
    page = await broker.history("r1")
    assert [p.offset for p in page.publications] == [5, 6, 7]
    assert (await broker.history("r1", 4)).complete
    stale = await broker.history("r1", 3)
    assert not stale.complete
    assert stale.epoch == page.epoch


async def test_epoch_is_stable_and_unknown_room_is_empty(make_broker: Factory) -> None:
    """A room never published has offset 0; its epoch stays the same once messages come."""
    broker, _ = await make_broker()
    empty = await broker.history("new")
    assert (empty.offset, empty.publications, empty.complete) == (0, [], True)
    assert empty.epoch
    publication = await broker.publish("new", prefix("new", 1))
    assert (await broker.history("new")).epoch == empty.epoch
    assert publication.epoch in ("", empty.epoch)


async def test_presence_is_unique_per_room(make_broker: Factory) -> None:
    """A username is present once per room; a second add is refused unless replacing."""
    broker, _ = await make_broker()
    assert await broker.add_member("r1", "bob", "c1") is None
    with pytest.raises(DuplicateMember):
        await broker.add_member("r1", "bob", "c2")
    assert await broker.add_member("r2", "bob", "c3") is None
    assert await broker.add_member("r1", "bob", "c4", replace=True) == "c1"
    assert await broker.members("r1") == ["bob"]


async def test_remove_is_compare_and_delete(make_broker: Factory) -> None:
    """Only the connection that owns an entry removes it."""
    broker, _ = await make_broker()
    await broker.add_member("r1", "bob", "c1")
    await broker.add_member("r1", "bob", "c2", replace=True)
    assert not await broker.remove_member("r1", "bob", "c1")
    assert await broker.has_member("r1", "bob")
    assert await broker.remove_member("r1", "bob", "c2")
    assert not await broker.has_member("r1", "bob")
    assert not await broker.remove_member("r1", "bob", "c2")


async def test_members_and_rooms_listing(make_broker: Factory) -> None:
    """members() is sorted; rooms() lists only rooms with members."""
    broker, _ = await make_broker()
    await broker.add_member("r1", "carol", "c1")
    await broker.add_member("r1", "alice", "c2")
    await broker.add_member("r2", "bob", "c3")
    assert await broker.members("r1") == ["alice", "carol"]
    assert await broker.rooms() == {"r1": ["alice", "carol"], "r2": ["bob"]}
    await broker.remove_member("r2", "bob", "c3")
    assert await broker.rooms() == {"r1": ["alice", "carol"]}
    assert await broker.members("r2") == []


async def test_ping_and_available(make_broker: Factory) -> None:
    """A started broker answers ping and says it is available."""
    broker, _ = await make_broker()
    await broker.ping()
    assert broker.available
