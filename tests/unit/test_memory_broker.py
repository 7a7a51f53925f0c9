"""The memory broker (the reference Broker): offsets, history bounds, ttl and presence."""

from __future__ import annotations

import random

import orjson
import pytest

from roomcast.brokers import DuplicateMember, ImmediatePublish, MemoryBroker, Publication, Signal
from roomcast.brokers import memory as memory_module
from roomcast.protocol import message_prefix


class Recorder:
    """A BrokerListener that keeps what arrives."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.signals: list[Signal] = []

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)

    def on_signal(self, signal: Signal) -> None:
        self.signals.append(signal)

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        raise AssertionError("a single process never loses a node")

    def on_broker_state(self, available: bool) -> None:
        raise AssertionError("memory is always available")


class Clock:
    """A settable stand-in for time.monotonic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(memory_module.time, "monotonic", clock)
    return clock


async def started(**kwargs: float) -> tuple[MemoryBroker, Recorder]:
    broker = MemoryBroker(**kwargs)  # type: ignore[arg-type]
    listener = Recorder()
    await broker.start("n1", listener)
    return broker, listener


def prefix(n: int, room: str = "r1") -> str:
    return message_prefix("t", n, room, "alice")


async def test_offsets_and_frames() -> None:
    """Offsets start at 1 and grow by one per room; the frame is prefix + offset + '}'."""
    broker, listener = await started()
    await broker.subscribe("r1")
    offsets = [(await broker.publish("r1", prefix(n))).offset for n in range(3)]
    assert offsets == [1, 2, 3]
    assert (await broker.publish("r2", prefix(9, "r2"))).offset == 1
    assert [p.offset for p in listener.publications] == [1, 2, 3]  # r2 is not subscribed
    assert orjson.loads(listener.publications[2].frame)["offset"] == 3
    assert orjson.loads(listener.publications[2].frame)["payload"] == 2


async def test_unsubscribed_room_is_not_delivered_but_retained() -> None:
    """After unsubscribe nothing is delivered, but messages are still kept in history."""
    broker, listener = await started()
    await broker.subscribe("r1")
    await broker.unsubscribe("r1")
    await broker.publish("r1", prefix(1))
    assert listener.publications == []
    assert [p.offset for p in (await broker.history("r1")).publications] == [1]


async def test_history_size_bound() -> None:
    """Only the last history_size messages are kept; a since before them is not complete."""
    broker, _ = await started(history_size=3)
    for n in range(5):
        await broker.publish("r1", prefix(n))
    page = await broker.history("r1")
    assert [p.offset for p in page.publications] == [3, 4, 5]
    assert page.offset == 5
    assert page.complete
    assert (await broker.history("r1", since=2)).complete
    assert not (await broker.history("r1", since=1)).complete
    assert [p.offset for p in (await broker.history("r1", since=3, limit=1)).publications] == [4]
    assert (await broker.history("r1", limit=0)).publications == []


async def test_history_size_zero_keeps_nothing() -> None:
    """history_size=0 keeps no message, but offsets still count."""
    broker, _ = await started(history_size=0)
    await broker.publish("r1", prefix(1))
    page = await broker.history("r1")
    assert page.publications == []
    assert page.offset == 1


async def test_history_ttl(clock: Clock) -> None:
    """Messages older than history_ttl are dropped; in a held room the epoch and offset
    survive."""
    broker, _ = await started(history_ttl=10.0)
    await broker.subscribe("r1")
    await broker.publish("r1", prefix(1))
    clock.now += 6
    await broker.publish("r1", prefix(2))
    epoch = (await broker.history("r1")).epoch
    clock.now += 5  # the first is 11 s old, the second 5 s
    page = await broker.history("r1")
    assert [p.offset for p in page.publications] == [2]
    assert not (await broker.history("r1", since=0)).complete
    clock.now += 6
    page = await broker.history("r1")
    assert page.publications == []
    assert page.offset == 2
    assert page.epoch == epoch


async def test_history_is_lost_history_ttl_after_the_room_was_left(clock: Clock) -> None:
    """A room nobody holds, where nothing was published and nobody was present for
    history_ttl, starts again at offset 0 under a new epoch."""
    broker, _ = await started(history_ttl=10.0)
    await broker.add_member("r1", "bob", "c1")
    epoch = (await broker.publish("r1", prefix(1))).epoch
    clock.now += 20  # held: the message expires, the epoch stays
    assert (await broker.history("r1")).epoch == epoch
    await broker.remove_member("r1", "bob", "c1")
    clock.now += 9
    assert ((page := await broker.history("r1")).epoch, page.offset) == (epoch, 1)
    clock.now += 2
    await broker.add_member("r1", "bob", "c2")  # too late: it joins a new incarnation
    page = await broker.history("r1")
    assert page.epoch != epoch
    assert page.offset == 0
    assert (await broker.publish("r1", prefix(2))).offset == 1


async def test_unknown_room_history() -> None:
    """A room never published has offset 0, no messages, a stable epoch."""
    broker, _ = await started()
    page = await broker.history("nope")
    assert (page.offset, page.publications, page.complete) == (0, [], True)
    assert (await broker.history("nope")).epoch == page.epoch
    assert page.epoch


async def test_presence_unique_and_replace() -> None:
    """A username is present once per room; replace returns the connection it displaced."""
    broker, _ = await started()
    assert await broker.add_member("r1", "alice", "c1") is None
    with pytest.raises(DuplicateMember):
        await broker.add_member("r1", "alice", "c2")
    assert await broker.add_member("r2", "alice", "c3") is None
    assert await broker.add_member("r1", "alice", "c4", replace=True) == "c1"
    assert await broker.members("r1") == ["alice"]


async def test_presence_compare_and_delete() -> None:
    """remove_member removes only the entry of the given connection."""
    broker, _ = await started()
    await broker.add_member("r1", "alice", "c1")
    await broker.add_member("r1", "alice", "c2", replace=True)
    assert not await broker.remove_member("r1", "alice", "c1")
    assert await broker.has_member("r1", "alice")
    assert await broker.remove_member("r1", "alice", "c2")
    assert not await broker.has_member("r1", "alice")
    assert not await broker.remove_member("r1", "alice", "c2")


async def test_members_and_rooms_listing() -> None:
    """members() is sorted; rooms() lists only rooms that have members."""
    broker, _ = await started()
    for name in ("carol", "alice", "bob"):
        await broker.add_member("r2", name, name)
    await broker.add_member("r1", "zed", "z")
    await broker.publish("r3", prefix(1, "r3"))
    assert await broker.members("r2") == ["alice", "bob", "carol"]
    assert await broker.rooms() == {"r1": ["zed"], "r2": ["alice", "bob", "carol"]}
    await broker.remove_member("r1", "zed", "z")
    assert await broker.rooms() == {"r2": ["alice", "bob", "carol"]}
    assert await broker.members("r1") == []


async def test_members_stay_sorted_through_joins_shares_replaces_and_leaves() -> None:
    """The sorted member list kept as members come and go matches a sort of presence after
    every step (random order; shared and replaced connections; the room emptied)."""
    broker, _ = await started()
    rng = random.Random(17)
    names = [f"u{rng.randrange(1000)}" for _ in range(60)]
    present: dict[str, list[str]] = {}
    for step in range(400):
        name = rng.choice(names)
        connection = f"c{step}"
        if name in present and rng.random() < 0.5:
            ids = present[name]
            gone = ids.pop(rng.randrange(len(ids)))
            assert await broker.remove_member("r1", name, gone) is (not ids)
            if not ids:
                del present[name]
        elif name in present and rng.random() < 0.5:
            await broker.add_member("r1", name, connection, share=True)
            present[name].append(connection)
        elif name in present:
            await broker.add_member("r1", name, connection, replace=True)
            present[name] = [connection]
        else:
            assert await broker.add_member("r1", name, connection) is None
            present[name] = [connection]
        assert await broker.members("r1") == sorted(present)
    for name, ids in list(present.items()):
        for connection in ids:
            await broker.remove_member("r1", name, connection)
    assert await broker.members("r1") == []
    assert await broker.rooms() == {}


async def test_signals_reach_subscribed_rooms_only() -> None:
    """A signal is delivered for a subscribed room and dropped for another."""
    broker, listener = await started()
    await broker.subscribe("r1")
    join = Signal("join", "r1", "bob", "c", "n1")
    await broker.signal(join)
    await broker.signal(Signal("join", "r2", "bob", "c", "n1"))
    assert listener.signals == [join]


async def test_ping_and_available() -> None:
    """Memory is always available and answers ping."""
    broker, _ = await started()
    assert broker.available
    await broker.ping()


async def test_publish_now_is_publish_without_a_coroutine() -> None:
    """`publish_now` shares the room's offsets, history and keys with `publish`."""
    broker, listener = await started()
    assert isinstance(broker, ImmediatePublish)
    await broker.subscribe("r1")
    assert (await broker.publish("r1", prefix(1))).offset == 1
    now = broker.publish_now("r1", prefix(2), key="k")
    assert (now.offset, now.duplicate) == (2, False)
    again = await broker.publish("r1", prefix(3), key="k")
    assert (again.offset, again.duplicate) == (2, True)
    assert [p.offset for p in listener.publications] == [1, 2]
    assert [p.offset for p in (await broker.history("r1")).publications] == [1, 2]
