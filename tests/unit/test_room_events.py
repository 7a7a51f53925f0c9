"""RoomOccupied and RoomVacated reach Python subscribers once per occupancy, without any
webhook configured (the in-process server, memory broker)."""

from __future__ import annotations

import asyncio

from roomcast import Roomcast
from roomcast.events import Event, MemberJoined, MemberLeft, RoomOccupied, RoomVacated
from roomcast.settings import Settings
from roomcast.testing import TestServer
from roomcast.webhooks import record, signature


async def test_room_events_reach_subscribers_once() -> None:
    """Two members in and out of a room: one RoomOccupied, one RoomVacated, after the
    member events that decided them."""
    rc = Roomcast(Settings(stats_interval=None))
    seen: list[Event] = []
    vacated = asyncio.Event()

    async def note(event: Event) -> None:
        seen.append(event)
        if isinstance(event, RoomVacated):
            vacated.set()

    for kind in (RoomOccupied, RoomVacated, MemberJoined, MemberLeft):
        rc.subscribe(kind, note)
    async with TestServer(rc) as server:
        alice = await server.connect("alice", "r1")
        bob = await server.connect("bob", "r1")
        await alice.close()
        await bob.close()
        async with asyncio.timeout(5):
            await vacated.wait()
    types = [type(e).__name__ for e in seen]
    assert types.count("RoomOccupied") == 1
    assert types.count("RoomVacated") == 1
    assert types.index("RoomOccupied") > types.index("MemberJoined")
    assert types[-1] == "RoomVacated"


def test_no_outbox_runs_when_nothing_asks_for_it() -> None:
    """Without a webhook URL and without room event subscribers the node taps nothing."""
    rc = Roomcast(Settings(stats_interval=None))
    assert rc.node.webhooks is None
    assert not rc.node.events.wants(MemberJoined)


def test_record_and_signature() -> None:
    """The JSON of a member.left, and the signature of docs/webhooks.md's example."""
    left = MemberLeft("r1", "alice", "c1", "n1", "kicked")
    assert record(left, "n2", "id1", 5) == {
        "id": "id1",
        "type": "member.left",
        "room": "r1",
        "node": "n1",
        "time": 5,
        "username": "alice",
        "reason": "kicked",
    }
    assert signature("secret", "1764633600", b'{"events":[]}') == (
        "sha256=85ad8e33ada9310e90f7ef53cbae85cc21f11ab36be28c7ee7b3b0e95a9399b7"
    )
