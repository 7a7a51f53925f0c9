"""The optional WebhookOutbox capability, on both brokers: events kept in order per shard,
occupancy decided once, a bound that drops the oldest, one lease holder per shard."""

from __future__ import annotations

from roomcast.brokers import Broker, MemoryBroker, OutboxEntry, WebhookOutbox
from tests.contract.conftest import Factory


def outbox(broker: Broker) -> WebhookOutbox:
    assert isinstance(broker, WebhookOutbox)
    return broker


def joined(room: str, name: str) -> OutboxEntry:
    return OutboxEntry("joined", room, f"j:{name}".encode(), f"o:{room}".encode())


def left(room: str, name: str) -> OutboxEntry:
    return OutboxEntry("left", room, f"l:{name}".encode(), f"v:{room}".encode())


async def records(box: WebhookOutbox, room: str) -> list[bytes]:
    return [r for _, r in await box.read_events(box.shard_of(room), 1000)]


async def test_occupancy_opens_and_closes_once(make_broker: Factory) -> None:
    """The first join keeps room.occupied before it, the last leave room.vacated after it;
    the entries that decided them are returned."""
    box = outbox((await make_broker())[0])
    bound = 16 * box.outbox_shards  # the bound is split over the shards: room for 16 in each
    changes, dropped = await box.append_events(
        [joined("r1", "a"), joined("r1", "b"), left("r1", "a")], bound
    )
    assert (changes, dropped) == ([1], 0)
    changes, _ = await box.append_events([left("r1", "b"), OutboxEntry("other", "r1", b"m")], bound)
    assert changes == [-1]
    assert await records(box, "r1") == [b"o:r1", b"j:a", b"j:b", b"l:a", b"l:b", b"v:r1", b"m"]


async def test_occupancy_is_shared_by_nodes(make_broker: Factory) -> None:
    """Two nodes' appends count the same members: one occupied, one vacated."""
    box_a = outbox((await make_broker("a"))[0])
    # memory:// is one process: its "other node" is the same broker.
    box_b = box_a if isinstance(box_a, MemoryBroker) else outbox((await make_broker("b"))[0])
    assert (await box_a.append_events([joined("r1", "a")], 100))[0] == [1]
    assert (await box_b.append_events([joined("r1", "b")], 100))[0] == []
    assert (await box_a.append_events([left("r1", "a")], 100))[0] == []
    assert (await box_b.append_events([left("r1", "b")], 100))[0] == [-1]


async def test_empty_records_count_without_keeping(make_broker: Factory) -> None:
    """Entries without records (webhooks off, room events wanted in Python) only count."""
    box = outbox((await make_broker())[0])
    assert (await box.append_events([OutboxEntry("joined", "r1")], 100))[0] == [1]
    assert (await box.append_events([OutboxEntry("left", "r1")], 100))[0] == [-1]
    assert await records(box, "r1") == []


async def test_a_leave_without_its_join_closes_nothing(make_broker: Factory) -> None:
    """A leave the count never saw join (webhooks turned on meanwhile) does not vacate."""
    box = outbox((await make_broker())[0])
    assert (await box.append_events([left("r1", "a")], 100))[0] == []
    assert (await box.append_events([joined("r1", "b")], 100))[0] == [1]


async def test_ack_removes_and_the_bound_drops_the_oldest(make_broker: Factory) -> None:
    """Acknowledged entries are gone; past the bound the oldest are dropped and counted."""
    box = outbox((await make_broker())[0])
    room = "r1"
    shard = box.shard_of(room)
    bound = 4 * box.outbox_shards  # the bound is split over the shards
    entries = [OutboxEntry("other", room, f"m{i}".encode()) for i in range(6)]
    _, dropped = await box.append_events(entries, bound)
    assert dropped == 2
    kept = await box.read_events(shard, 2)
    assert [r for _, r in kept] == [b"m2", b"m3"]
    await box.ack_events(shard, [entry_id for entry_id, _ in kept])
    assert await records(box, room) == [b"m4", b"m5"]


async def test_the_batch_being_sent_is_never_dropped(make_broker: Factory) -> None:
    """Past the bound, the oldest entries after the `sending` ones (the batch a holder may be
    posting now) are dropped: what is counted as dropped is never delivered after all."""
    box = outbox((await make_broker())[0])
    room = "r1"
    shard = box.shard_of(room)
    bound = 4 * box.outbox_shards
    first = [OutboxEntry("other", room, f"m{i}".encode()) for i in range(4)]
    assert (await box.append_events(first, bound, sending=2))[1] == 0
    batch = await box.read_events(shard, 2)  # being sent
    more = [OutboxEntry("other", room, f"m{i}".encode()) for i in range(4, 7)]
    assert (await box.append_events(more, bound, sending=2))[1] == 3
    assert await records(box, room) == [b"m0", b"m1", b"m5", b"m6"]
    await box.ack_events(shard, [entry_id for entry_id, _ in batch])
    assert await records(box, room) == [b"m5", b"m6"]
    # A bound smaller than the batch keeps the batch.
    assert (await box.append_events(first, box.outbox_shards, sending=3))[1] == 3
    assert await records(box, room) == [b"m5", b"m6", b"m0"]


async def test_one_lease_holder_per_shard(make_broker: Factory) -> None:
    """A shard's lease is held by one token until it is released (or lapses)."""
    box = outbox((await make_broker())[0])
    assert await box.claim_shard(0, "a", 30)
    assert await box.claim_shard(0, "a", 30)  # renewed
    if box.outbox_shards > 1:
        assert not await box.claim_shard(0, "b", 30)
        await box.release_shard(0, "a")
        assert await box.claim_shard(0, "b", 30)
