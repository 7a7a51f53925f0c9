"""What only a shared broker has: several nodes on one Redis, leases and the sweeper."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from roomcast.brokers import HistoryPage
from roomcast.brokers.redis import RedisBroker, wire
from roomcast.brokers.redis.publishing import BATCH_CALLS
from roomcast.errors import BrokerUnavailable
from roomcast.protocol import message_prefix
from tests.contract.conftest import Make, until
from tests.harness import RedisProcess


async def test_dead_node_is_swept_by_exactly_one_survivor(make: Make) -> None:
    """Members of a node whose lease ran out are returned to one survivor only."""
    a, lost_a = await make("a", presence_ttl=1.5)
    b, lost_b = await make("b", presence_ttl=1.5)
    c, _ = await make("c", presence_ttl=1.5)
    await c.add_member("r1", "carol", "c1")
    await c.add_member("r2", "carol", "c2")
    for task in c._tasks:  # c stops renewing, as a killed process would
        task.cancel()
    await until(lambda: len(lost_a.lost) + len(lost_b.lost) == 2)
    assert sorted(lost_a.lost + lost_b.lost) == [("r1", ["carol"], "c"), ("r2", ["carol"], "c")]
    assert await a.rooms() == {}
    assert await b.add_member("r1", "carol", "c3") is None


async def test_lapsed_lease_puts_live_members_back(make: Make, redis_server: RedisProcess) -> None:
    """A live node whose entries were swept adds them again and announces the join."""
    a, _ = await make("a", presence_ttl=1.5)
    b, seen_b = await make("b", presence_ttl=1.5)
    await b.subscribe("r1")
    await a.add_member("r1", "alice", "c1")
    admin = Redis.from_url(redis_server.url)
    await admin.delete(wire.lease_key("a"), wire.presence_key("r1"))  # as if a was swept
    await until(lambda: any(s.kind == "join" for s in seen_b.signals))
    assert await b.members("r1") == ["alice"]
    await admin.aclose()


async def test_replace_across_nodes_keeps_the_newer_entry(make: Make) -> None:
    """A replaced entry is not removed by the older connection's leave."""
    a, _ = await make("a")
    b, _ = await make("b")
    await a.add_member("r1", "bob", "c1")
    assert await b.add_member("r1", "bob", "c2", replace=True) == "c1"
    assert not await a.remove_member("r1", "bob", "c1")
    assert await a.members("r1") == ["bob"]
    assert await b.remove_member("r1", "bob", "c2")


async def test_databases_do_not_share_rooms(make: Make, redis_server: RedisProcess) -> None:
    """Two clusters on two databases of one Redis see neither each other's traffic nor keys."""
    one, seen_one = await make("a", f"redis://127.0.0.1:{redis_server.port}/1")
    two, seen_two = await make("a", f"redis://127.0.0.1:{redis_server.port}/2")
    await one.subscribe("r1")
    await two.subscribe("r1")
    await one.publish("r1", message_prefix("t", 1, "r1", "x"))
    publication = await two.publish("r1", message_prefix("t", 2, "r1", "x"))
    assert publication.offset == 1
    assert [p.offset for p in seen_one.publications] == [1]
    assert seen_two.publications == [publication]


async def history_when_available(broker: RedisBroker, room: str) -> HistoryPage:
    """The room's history, asked again while the node is reconnecting (unavailable)."""
    while True:
        try:
            return await broker.history(room)
        except BrokerUnavailable:
            await asyncio.sleep(0.05)


async def test_a_member_on_any_node_holds_the_room(make: Make) -> None:
    """A member on one node keeps the room's epoch for every node past the history ttl; once a
    survivor sweeps that dead node's member, the room's history is lost a history ttl later."""
    a, _ = await make("a", presence_ttl=1.5, history_ttl=1)
    c, _ = await make("c", presence_ttl=1.5, history_ttl=1)
    await c.add_member("r1", "carol", "c1")
    first = await a.publish("r1", message_prefix("t", 1, "r1", "x"))
    # Bounds far above the ttls: on a loaded machine a node may take its own stall for a
    # silent Redis (broker.silent) and reconnect, with backoff, before it sweeps.
    async with asyncio.timeout(15):
        while (page := await history_when_available(a, "r1")).publications:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (page.epoch, page.offset) == (first.epoch, 1)
    for task in c._tasks:  # c stops renewing, as a killed process would
        task.cancel()
    async with asyncio.timeout(30):
        while (page := await history_when_available(a, "r1")).epoch == first.epoch:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await a.members("r1") == []
    assert page.offset == 0


async def test_a_burst_of_calls_waits_for_a_connection(make: Make) -> None:
    """500 joins and 500 leaves at once queue for the node's connections to Redis instead of
    failing (a pool without that bound refuses past its size: "Too many connections")."""
    a, _ = await make("a")
    await asyncio.gather(*(a.add_member("burst", f"u{i}", f"c{i}") for i in range(500)))
    assert len(await a.members("burst")) == 500
    removed = await asyncio.gather(
        *(a.remove_member("burst", f"u{i}", f"c{i}") for i in range(500))
    )
    assert all(removed)
    assert await a.members("burst") == []


async def test_a_foreign_message_on_a_room_channel_is_skipped(
    make: Make, redis_server: RedisProcess
) -> None:
    """Something else publishing on a room's channel does not break the subscription."""
    a, seen = await make("a")
    await a.subscribe("r1")
    admin = Redis.from_url(redis_server.url)
    await admin.publish("rc:0:{r1}", b"not a roomcast message")
    await admin.aclose()
    publication = await a.publish("r1", message_prefix("t", 1, "r1", "x"))
    assert seen.publications == [publication]
    assert a.available


async def test_sweep_of_a_node_with_many_members(make: Make) -> None:
    """A dead node's members are swept in several calls, each returned once, and the node
    leaves the set of nodes once its member set is empty."""
    # A longer lease than the other tests: adding 600 members at once must not starve the
    # survivor's own renewals on a busy machine (its lease lapsing would stop its sweeps).
    a, lost = await make("a", presence_ttl=4.0)
    c, _ = await make("c", presence_ttl=4.0)
    await asyncio.gather(*(c.add_member(f"room{i % 3}", f"u{i}", f"c{i}") for i in range(600)))
    for task in c._tasks:  # c stops renewing, as a killed process would
        task.cancel()
    # The lease runs out, then several sweep rounds: a generous bound for a busy machine.
    await until(lambda: sum(len(names) for _, names, _ in lost.lost) == 600, timeout=40.0)
    assert await a.rooms() == {}
    swept = sorted(name for _, names, _ in lost.lost for name in names)
    assert swept == sorted(f"u{i}" for i in range(600))


async def test_close_is_bounded_while_redis_is_frozen(
    make: Make, redis_server: RedisProcess
) -> None:
    """A node closing while Redis has stopped answering (SIGSTOP) does not wait for it."""
    a, _ = await make("a")
    await a.add_member("r1", "alice", "c1")
    await a.subscribe("r1")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(10):  # three steps of at most 2 s each
            await a.close()
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert not a.available


async def test_a_burst_of_joins_after_redis_lost_its_scripts(
    make: Make, redis_server: RedisProcess
) -> None:
    """500 joins sharing pipelines that Redis answers `NOSCRIPT` (it restarted without its
    script cache) are each run again, within the pool's bound, and each counted once."""
    a, _ = await make("a")
    admin = Redis.from_url(redis_server.url)
    await admin.script_flush()
    await admin.aclose()
    await asyncio.gather(*(a.add_member("noscript", f"u{i}", f"c{i}") for i in range(500)))
    assert len(await a.members("noscript")) == 500
    page, members = await a.read_join("noscript", None, 0)
    assert (page.offset, len(members)) == (0, 500)


async def test_a_node_loads_its_scripts_before_it_turns_available(
    make: Make, redis_server: RedisProcess
) -> None:
    """Every script is in Redis' cache once a node is available, and again once its
    subscription reconnected to a Redis that lost the cache: no call of a node meets
    `NOSCRIPT`, not even the first one after a restart."""
    admin = Redis.from_url(redis_server.url)
    await admin.script_flush()
    await admin.config_resetstat()
    a, seen = await make("a")
    await a.subscribe("r1")
    shas = [script.sha for script in a._calls._scripts]
    assert len(shas) == len(set(shas)) >= 12
    assert all(await admin.script_exists(*shas))
    await admin.script_flush()
    assert not any(await admin.script_exists(*shas))
    await admin.client_kill_filter(_type="pubsub")
    await until(lambda: seen.states[-2:] == [False, True])
    assert all(await admin.script_exists(*shas))
    await a.add_member("r1", "alice", "c1")
    await a.publish("r1", message_prefix("t", 1, "r1", "x"))
    await a.history("r1")
    assert "errorstat_NOSCRIPT" not in await admin.info("errorstats")
    await admin.aclose()


async def test_a_node_that_stalls_does_not_take_its_stall_for_a_silent_redis(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription's heartbeat (every 0.5 s here, silent after 1 s unanswered) holds
    while the node's own loop is blocked for longer than that, right after a PING."""
    a, _ = await make("a", presence_ttl=1.5)
    await a.subscribe("r1")
    subscriber = a._subscriber
    send = subscriber._send
    pinged = asyncio.Event()

    async def noting(*args: Any) -> None:
        await send(*args)
        if args == ("PING",):
            pinged.set()

    subscriber._send = noting  # type: ignore[method-assign]
    for _ in range(3):
        pinged.clear()
        async with asyncio.timeout(5):
            await pinged.wait()
        time.sleep(1.5)  # noqa: ASYNC251 (the node stalls: its loop is blocked)
    pinged.clear()
    async with asyncio.timeout(5):
        await pinged.wait()
    assert a.available
    assert "broker.silent" not in caplog.text


async def test_a_batch_of_publishes_after_redis_lost_its_scripts(
    make: Make, redis_server: RedisProcess
) -> None:
    """Publishes that share batch calls (more than one call's worth) which Redis answers
    `NOSCRIPT` are each run again, once: every room's offsets follow the publishes' order."""
    a, _ = await make("a")
    admin = Redis.from_url(redis_server.url)
    await admin.script_flush()
    await admin.aclose()
    rooms = [f"noscript{i % 7}" for i in range(2 * BATCH_CALLS + 5)]
    publications = await asyncio.gather(
        *(a.publish(room, message_prefix("t", i, room, "x")) for i, room in enumerate(rooms))
    )
    for room in set(rooms):
        offsets = [p.offset for p in publications if p.room == room]
        assert offsets == list(range(1, rooms.count(room) + 1))


async def test_a_publish_that_fails_in_a_batch_fails_alone(
    make: Make, redis_server: RedisProcess
) -> None:
    """A publish whose room's stream cannot take it (a key of another type in its place) gets
    Redis' error; the publishes batched with it, before and after, are published."""
    a, seen = await make("a")
    await a.subscribe("fine")
    admin = Redis.from_url(redis_server.url)
    offset, epoch, stream, _ = wire.room_keys("broken")
    # An incarnation under way, past its first offset: its stream is neither replaced nor
    # emptied.
    await admin.set(epoch, "e1")
    await admin.set(offset, 5)
    await admin.set(stream, "not a stream")
    await admin.aclose()
    outcomes = await asyncio.gather(
        *(
            a.publish(room, message_prefix("t", i, room, "x"))
            for i, room in enumerate(["fine", "broken", "fine", "broken", "fine"])
        ),
        return_exceptions=True,
    )
    assert [o.offset for o in outcomes if not isinstance(o, BaseException)] == [1, 2, 3]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 2
    assert all("WRONGTYPE" in str(e) for e in errors), errors
    assert [p.offset for p in seen.publications] == [1, 2, 3]
