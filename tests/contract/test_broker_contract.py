"""The Broker contract, proven on both implementations: memory:// and redis:// (a real server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from roomcast.brokers import Broker, DuplicateMember, HistoryPage, RoomFull, Signal
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


async def test_read_join_announces_then_reads_history_and_members(
    make_broker: Factory,
) -> None:
    """The rest of a join: its signals go out on the room in order, and the page and the
    members are what `history` and `members` answer."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    for n in range(3):
        await broker.publish("r1", prefix("r1", n))
    await broker.add_member("r1", "carol", "c1")
    await broker.add_member("r1", "bob", "c2", replace=True)
    sent = [
        Signal("replace", "r1", "bob", "c0", "n1"),
        Signal("join", "r1", "bob", "c2", "n1"),
    ]
    page, members = await broker.read_join("r1", 1, members=True, signals=sent)
    assert (page.offset, page.complete) == (3, True)
    assert [p.offset for p in page.publications] == [2, 3]
    assert page.epoch == (await broker.history("r1")).epoch
    assert members == ["bob", "carol"]
    await broker.publish("r1", prefix("r1", 4))  # orders after the signals
    assert recorder.signals == sent
    page, members = await broker.read_join("r1", None, 0, members=False)
    assert (page.offset, page.publications, members) == (4, [], [])
    assert recorder.signals == sent


async def test_a_burst_of_joins_keeps_presence_unique_and_bounded(
    make_broker: Factory,
) -> None:
    """Joins made at once (a reconnect storm: on Redis they share pipelines) keep every
    rule: one connection wins a username, and `max_members` admits exactly that many."""
    broker, _ = await make_broker()
    answers = await asyncio.gather(
        *(broker.add_member("r1", "bob", f"c{i}") for i in range(30)), return_exceptions=True
    )
    assert answers.count(None) == 1
    assert sum(isinstance(a, DuplicateMember) for a in answers) == 29
    answers = await asyncio.gather(
        *(broker.add_member("r2", f"u{i}", f"d{i}", max_members=5) for i in range(20)),
        return_exceptions=True,
    )
    assert answers.count(None) == 5
    assert sum(isinstance(a, RoomFull) for a in answers) == 15
    assert len(await broker.members("r2")) == 5
    pages = await asyncio.gather(*(broker.read_join("r2", None, 0) for _ in range(10)))
    assert all(members == sorted(members) and len(members) == 5 for _, members in pages)


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


async def test_a_leave_is_announced_with_its_removal_only(make_broker: Factory) -> None:
    """`remove_member(signal=...)` announces the leave when the username left presence, in
    the same step, and not when the connection was not its last or not there at all."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    await broker.add_member("r1", "alice", "c1", share=True)
    await broker.add_member("r1", "alice", "c2", share=True)

    def leave(connection_id: str) -> Signal:
        return Signal("leave", "r1", "alice", connection_id, "n1")

    assert not await broker.remove_member("r1", "alice", "c1", signal=leave("c1"))
    assert not await broker.remove_member("r1", "alice", "c9", signal=leave("c9"))
    assert await broker.remove_member("r1", "alice", "c2", signal=leave("c2"))
    await broker.publish("r1", prefix("r1", 1))  # orders after the signals
    assert recorder.signals == [leave("c2")]


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


async def poll_history(
    broker: Broker, room: str, done: Callable[[HistoryPage], bool], timeout: float = 5.0
) -> HistoryPage:
    """Read the room's history until `done` holds (retention has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not done(page := await broker.history(room)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return page


async def test_held_room_keeps_its_epoch_after_retention(make_broker: Factory) -> None:
    """A room with a member keeps its epoch and offset once its retained messages expired."""
    broker, _ = await make_broker(history_ttl=1)
    await broker.add_member("r1", "bob", "c1")
    await broker.subscribe("r1")
    first = await broker.publish("r1", prefix("r1", 1))
    page = await poll_history(broker, "r1", lambda p: not p.publications)
    assert (page.epoch, page.offset, page.complete) == (first.epoch, 1, True)
    assert not (await broker.history("r1", 0)).complete
    again = await broker.publish("r1", prefix("r1", 2))
    assert (again.epoch, again.offset) == (first.epoch, 2)


async def test_each_retained_message_lives_the_history_ttl_from_its_own_publish(
    make_broker: Factory,
) -> None:
    """History is bounded by age message by message: once the first of two messages is
    older than `history_ttl`, it is gone while the second, published a second later, is
    still there (a later publish does not extend the life of an earlier one)."""
    broker, _ = await make_broker(history_ttl=2)
    await broker.add_member("r1", "bob", "c1")
    await broker.subscribe("r1")
    first = await broker.publish("r1", prefix("r1", 1))
    await asyncio.sleep(1)  # the scenario: a second between the two publishes
    await broker.publish("r1", prefix("r1", 2))
    page = await poll_history(broker, "r1", lambda p: len(p.publications) < 2)
    assert [p.offset for p in page.publications] == [2]
    assert (page.epoch, page.offset, page.complete) == (first.epoch, 2, True)
    assert not (await broker.history("r1", 0)).complete
    assert (await broker.history("r1", 1)).complete


async def test_unheld_room_starts_a_new_epoch_after_retention(make_broker: Factory) -> None:
    """Once nobody is in a room and its messages expired, its history is lost: history shows
    a new epoch at offset 0, and the next publish takes that epoch and offset 1."""
    broker, _ = await make_broker(history_ttl=1)
    await broker.add_member("r1", "bob", "c1")
    await broker.subscribe("r1")
    for n in range(2):
        old = await broker.publish("r1", prefix("r1", n))
    await broker.unsubscribe("r1")
    assert await broker.remove_member("r1", "bob", "c1")
    page = await poll_history(broker, "r1", lambda p: p.epoch != old.epoch)
    assert (page.offset, page.publications, page.complete) == (0, [], True)
    publication = await broker.publish("r1", prefix("r1", 3))
    assert (publication.epoch, publication.offset) == (page.epoch, 1)
    page = await broker.history("r1")
    assert (page.epoch, [p.offset for p in page.publications]) == (publication.epoch, [1])


async def test_publish_to_a_lost_room_starts_a_new_epoch(make_broker: Factory) -> None:
    """A publish (with no read before it) to a room whose history was lost gets offset 1 under
    a new epoch, the one history then reports."""
    broker, _ = await make_broker(history_ttl=1)
    old = await broker.publish("quiet", prefix("quiet", 1))
    await broker.publish("quiet", prefix("quiet", 2))
    marker = await broker.publish("marker", prefix("marker", 1))
    # "marker" was published last: once its history is lost, so is that of "quiet".
    await poll_history(broker, "marker", lambda p: p.epoch != marker.epoch)
    publication = await broker.publish("quiet", prefix("quiet", 3))
    assert publication.offset == 1
    assert publication.epoch != old.epoch
    page = await broker.history("quiet")
    assert (page.epoch, page.offset, page.complete) == (publication.epoch, 1, True)
    assert [p.offset for p in page.publications] == [1]


async def test_ephemeral_frames_are_delivered_in_order_and_not_retained(
    make_broker: Factory,
) -> None:
    """An ephemeral frame reaches the subscribed room whole, with offset 0 and its `exclude`,
    before what is published after it, and is not in the room's history."""
    broker, recorder = await make_broker()
    await broker.subscribe("r1")
    await broker.publish_ephemeral("r1", '{"topic":"typing"}', exclude="c1")
    await broker.publish("r1", prefix("r1", 1))
    first, second = recorder.publications
    assert (first.offset, first.frame, first.exclude) == (0, '{"topic":"typing"}', "c1")
    assert second.offset == 1
    assert [p.offset for p in (await broker.history("r1")).publications] == [1]
