"""A join, a leave and a sweep are several single-slot steps (a Redis Cluster runs a script
on one slot only): whatever a crash between two steps leaves, the next sweep repairs, and
each lost member is still announced once. Run on one Redis and on a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster

from roomcast.brokers import Signal
from roomcast.brokers.redis import RedisBroker, wire
from roomcast.brokers.redis.cluster import cluster_client
from roomcast.errors import BrokerUnavailable
from tests.contract.conftest import Make, until


@pytest.fixture(params=["redis", "cluster"])
def presence_url(request: pytest.FixtureRequest) -> str:
    """One Redis, or the shared Redis Cluster (emptied for the test)."""
    fixture = "redis_server" if request.param == "redis" else "redis_cluster"
    return str(request.getfixturevalue(fixture).url)


@pytest.fixture
async def admin(presence_url: str) -> AsyncIterator[Any]:
    """A plain client of the same store, to act as a process that died mid-way."""
    client: Redis | RedisCluster = (
        cluster_client(presence_url)
        if presence_url.startswith("redis+cluster://")
        else Redis.from_url(presence_url)
    )
    yield client
    await client.aclose()


def stop_renewing(broker: RedisBroker) -> None:
    """The node stops renewing its lease and sweeping, as a killed process would: also its
    subscriptions on a Redis Cluster (one task per shard), whose reconnection would renew."""
    for task in broker._tasks:
        task.cancel()
    shards: dict[Any, asyncio.Task[None]] = getattr(broker._subscriber, "_tasks", {})
    for task in shards.values():
        task.cancel()


async def test_a_sweep_that_died_after_its_claim_is_finished_by_the_next(
    make: Make, admin: Any
) -> None:
    """A sweeper that claimed a dead node's entries and died: the next sweep finds them in
    the sweep set, removes them from presence, announces each once, and forgets the node."""
    a, seen = await make("a", presence_ttl=1.5)
    c, _ = await make("c", presence_ttl=1.5)
    rooms = [f"room{i}" for i in range(6)]
    for i, room in enumerate(rooms):
        await c.add_member(room, f"u{i}", f"c{i}")
    stop_renewing(c)
    # What a sweeper that died after its first step leaves: the entries moved to the sweep
    # set, the lease gone, the tokens still in presence.
    await admin.delete(wire.lease_key("c"))
    await admin.sunionstore(wire.sweep_set_key("c"), [wire.member_set_key("c")])
    await admin.delete(wire.member_set_key("c"))
    await until(lambda: sum(len(names) for _, names, _ in seen.lost) == len(rooms))
    assert sorted(name for _, names, _ in seen.lost for name in names) == [
        f"u{i}" for i in range(6)
    ]
    assert await a.rooms() == {}
    async with asyncio.timeout(10):
        while await admin.sismember(wire.NODES_KEY, "c"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert not await admin.exists(wire.sweep_set_key("c"))


async def test_an_entry_without_its_token_is_harmless(make: Make, admin: Any) -> None:
    """A join that died after its first step (the entry in the node's member set, no token
    in presence): nothing is listed, and the node's sweep announces nobody."""
    a, seen = await make("a", presence_ttl=1.5)
    c, _ = await make("c", presence_ttl=1.5)
    await c.add_member("r1", "carol", "c1")
    await admin.sadd(wire.member_set_key("c"), wire.member_entry("r2", "ghost", "c9"))
    assert await a.rooms() == {"r1": ["carol"]}
    stop_renewing(c)
    await until(lambda: bool(seen.lost))
    assert seen.lost == [("r1", ["carol"], "c")]
    assert await a.members("r2") == []


async def test_a_leave_removes_the_token_before_the_entry(make: Make, admin: Any) -> None:
    """After a leave neither the token nor the entry is left; a refused join leaves no entry."""
    a, _ = await make("a")
    b, _ = await make("b")
    await a.add_member("r1", "alice", "c1")
    assert await admin.smembers(wire.member_set_key("a")) == {b"r1\nalice\nc1"}
    with pytest.raises(Exception, match="alice"):
        await b.add_member("r1", "alice", "c2")
    assert await admin.smembers(wire.member_set_key("b")) == set()
    assert await a.remove_member("r1", "alice", "c1")
    assert await admin.smembers(wire.member_set_key("a")) == set()
    assert await a.members("r1") == []


async def test_a_node_whose_lease_lapsed_during_a_sweep_keeps_its_members(
    make: Make, admin: Any
) -> None:
    """A live node stalled past its lease, and a sweep claimed its entries; the node renews
    (which drops the claim) and then the sweep, still under way, takes the token out: the
    node's second pass, one renewal later, puts its member back and announces the join."""
    a, _ = await make("a", presence_ttl=1.5)
    b, seen_b = await make("b", presence_ttl=1.5)
    await b.subscribe("r1")
    await a.add_member("r1", "alice", "c1")
    await admin.delete(wire.lease_key("a"))
    await admin.sunionstore(wire.sweep_set_key("a"), [wire.member_set_key("a")])
    await admin.delete(wire.member_set_key("a"))
    async with asyncio.timeout(10):
        while not await admin.exists(wire.lease_key("a")):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await admin.hdel(wire.presence_key("r1"), "alice")  # the claiming sweep's late step
    await until(lambda: any(s.kind == "join" for s in seen_b.signals))
    assert await b.members("r1") == ["alice"]
    assert await admin.smembers(wire.member_set_key("a")) == {b"r1\nalice\nc1"}
    assert not await admin.exists(wire.sweep_set_key("a"))


async def test_a_sweep_announces_each_member_it_removes(make: Make) -> None:
    """The sweeper's script announces a `leave` for each member it removed, on the room's
    channel (SPUBLISH on the Redis Cluster), in the same step as the removal."""
    a, seen_a = await make("a", presence_ttl=1.5)
    b, seen_b = await make("b", presence_ttl=1.5)
    c, _ = await make("c", presence_ttl=1.5)
    for node in (a, b):
        await node.subscribe("r1")
        await node.subscribe("r2")
    await c.add_member("r1", "carol", "c1")
    await c.add_member("r2", "dave", "c2")
    stop_renewing(c)
    # Each member is removed by one of the two; the other hears the leave from it.
    await until(lambda: len(seen_a.signals) + len(seen_b.signals) == 2)
    heard = [(s, "a") for s in seen_a.signals] + [(s, "b") for s in seen_b.signals]
    leaves = sorted((s.kind, s.room, s.username, s.reason) for s, _ in heard)
    assert leaves == [("leave", "r1", "carol", "node_lost"), ("leave", "r2", "dave", "node_lost")]
    assert all(s.node_id in ("a", "b") and s.node_id != by for s, by in heard)
    # The sweeper hands them to its listener once its whole sweep is done, which may come
    # after the other node heard the leave.
    await until(lambda: len(seen_a.lost) + len(seen_b.lost) == 2)
    assert sorted(seen_a.lost + seen_b.lost) == [("r1", ["carol"], "c"), ("r2", ["dave"], "c")]


async def test_a_sweeper_whose_reply_was_lost_learns_on_its_retry_what_it_removed(
    make: Make, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran a sweeper's removal step but its reply was lost (the connection dropped):
    the leave went out with the removal; another sweeper leaves the entry to it (the room's
    sweep record names who removed it); the sweeper's retry learns that it removed the
    member, hands it to its listener, and then the dead node is forgotten."""
    a, seen_a = await make("a", presence_ttl=1.5)
    # b sweeps only when the test says so: not before a lease of 60 s after it connected.
    b, seen_b = await make("b", presence_ttl=60)
    await b.subscribe("r1")
    c, _ = await make("c", presence_ttl=1.5)
    await c.add_member("r1", "carol", "c1")
    calls = a._presence._calls
    run = calls.run
    lost: list[Any] = []
    other: list[Any] = []

    async def losing(what: Any) -> Any:
        result = await run(what)
        if getattr(what, "func", None) is calls.script_sweep_rooms and not lost:
            lost.append(result)
            other.append(await b._presence._sweep("c", force=False, announce=True))
            other.append(await admin.smembers(wire.sweep_set_key("c")))
            raise BrokerUnavailable("the reply was lost")
        return result

    monkeypatch.setattr(calls, "run", losing)
    stop_renewing(c)
    await until(lambda: seen_a.lost == [("r1", ["carol"], "c")])
    assert lost == [[1]]
    assert other == [[], {b"r1\ncarol\nc1"}]
    assert [(s.kind, s.username, s.node_id) for s in seen_b.signals] == [("leave", "carol", "a")]
    assert seen_b.lost == []
    async with asyncio.timeout(10):
        while await admin.sismember(wire.NODES_KEY, "c"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await a.members("r1") == []


async def test_shards_that_connect_together_remove_an_earlier_process_entries_once(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shard's subscription of a Redis Cluster node (re)connects on its own and runs
    the node's upkeep: the entries an earlier process left under the node id are removed by
    the first upkeep only, so a member that joined once the node was available stays."""
    a, _ = await make("a", presence_ttl=1.5)
    presence = a._presence
    presence._own_entries_removed = False  # as before the node's first connection
    sweep_node = presence._sweep_node
    forced: list[str] = []

    async def counting(node_id: str, *, force: bool = False) -> None:
        if force:
            forced.append(node_id)
        await sweep_node(node_id, force=force)

    monkeypatch.setattr(presence, "_sweep_node", counting)
    first = asyncio.create_task(presence.on_connected())
    second = asyncio.create_task(presence.on_connected())
    await first
    await a.add_member("r1", "alice", "a1")
    await second
    assert forced == ["a"]
    assert await a.members("r1") == ["alice"]


async def test_a_restarted_node_announces_its_old_members_and_a_stop_announces_none(
    make: Make,
) -> None:
    """A node started again under its id (after a kill) sweeps what the old process left and
    announces those leaves before it is available; a clean stop removes its members
    without announcing them."""
    a, seen = await make("a", presence_ttl=1.5)
    await a.subscribe("r1")
    old, _ = await make("c", presence_ttl=1.5)
    await old.add_member("r1", "carol", "c1")
    stop_renewing(old)
    new, _ = await make("c", presence_ttl=1.5)
    assert new.available
    await until(lambda: [s.username for s in seen.signals] == ["carol"])
    assert seen.signals[0].node_id == "c"
    await new.add_member("r1", "dave", "c2")
    await new.close()
    await a.signal(Signal("kick", "r1", "nobody"))  # every earlier signal arrived before it
    await until(lambda: seen.signals[-1].kind == "kick")
    assert [s.kind for s in seen.signals] == ["leave", "kick"]
    assert await a.members("r1") == []
