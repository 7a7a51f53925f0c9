"""One user, several connections (docs/protocol.md, section 8): the `share` policy on
memory:// and on two nodes sharing Redis, the default policy, and a killed node's tab."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from roomcast.brokers.redis import wire
from tests.harness import Client, RedisProcess
from tests.integration.rooms_support import Pair, Start, connect, deploy

SECRET = "share-secret-long-enough-for-every-hs-algorithm-0123456789abcdefghij"
SHARE = ("--on-duplicate", "share")


def rid() -> str:
    """A room id no other test uses."""
    return f"s-{uuid.uuid4().hex[:8]}"


def token(sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")


@pytest.fixture
def shared(start_server: Start, kind: str, redis_or_none: RedisProcess | None) -> Pair:
    """Two nodes (or one memory:// server) with `--on-duplicate share`."""
    return deploy(kind, start_server, redis_or_none, *SHARE)


async def test_second_tab_joins_and_presence_counts_the_user_once(shared: Pair) -> None:
    """Two connections of alice in one room: the member list holds her once, presence.join
    goes out for the first only, presence.leave only after the last closes."""
    room = rid()
    bob = await connect(shared.b, "bob", room)
    tab1 = await connect(shared.a, "alice", room)
    assert await bob.recv() == {
        "topic": "presence.join",
        "payload": {"username": "alice"},
        "room": room,
    }
    tab2 = await connect(shared.b, "alice", room)
    assert tab2.welcome["payload"]["members"] == ["alice", "bob"]  # type: ignore[attr-defined]
    await bob.barrier()  # no second presence.join
    await tab1.barrier()
    async with httpx.AsyncClient(base_url=shared.a.url) as http:
        members = await http.get(f"/api/v1/rooms/{room}/members")
        assert members.json() == {"members": ["alice", "bob"]}
    await tab1.close()
    await tab2.send({"topic": "presence", "payload": {}})
    assert (await tab2.recv_topic("presence"))["payload"] == {"members": ["alice", "bob"]}
    await bob.barrier()  # no presence.leave while a tab is left
    await tab2.close()
    assert await bob.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "alice"},
        "room": room,
    }
    await bob.close()


async def test_every_connection_gets_its_own_copy_and_to_reaches_all(shared: Pair) -> None:
    """Each of alice's connections gets every room message; a message `to` alice reaches
    every one of them, and nobody else."""
    room = rid()
    tab1 = await connect(shared.a, "alice", room)
    tab2 = await connect(shared.a, "alice", room)
    tab3 = await connect(shared.b, "alice", room)
    bob = await connect(shared.b, "bob", room)
    for tab in (tab1, tab2, tab3):
        await tab.recv_topic("presence.join")
    await bob.send({"topic": "chat", "payload": "all", "id": 1})
    for tab in (tab1, tab2, tab3):
        got = await tab.recv()
        assert got["payload"] == "all"
        assert got["offset"] == 1
    await bob.recv_topic("ack")
    await bob.send({"topic": "dm", "payload": "you", "to": "alice", "id": 2})
    for tab in (tab1, tab2, tab3):
        got = await tab.recv()
        assert got["payload"] == "you"
        assert got["to"] == "alice"
    ack = await bob.recv()
    assert ack == {"topic": "ack", "payload": {"id": 2, "offset": 2}}
    await bob.barrier()
    for client in (tab1, tab2, tab3, bob):
        await client.barrier()
    for client in (tab1, tab2, tab3, bob):
        await client.close()


async def test_room_join_under_share_and_leave_of_one_tab(shared: Pair) -> None:
    """room.join of a room the user is in on another connection joins (no `duplicate`);
    room.leave of one tab sends no presence.leave."""
    room = rid()
    bob = await connect(shared.a, "bob", room)
    tab1 = await connect(shared.a, "alice", room)
    await bob.recv_topic("presence.join")
    tab2 = await connect(shared.b, "alice")
    joined = await tab2.join_room(room)
    assert joined["payload"]["members"] == ["alice", "bob"]
    await tab2.leave_room(room)
    await bob.barrier()
    await tab1.leave_room(room)
    assert (await bob.recv())["topic"] == "presence.leave"
    for client in (bob, tab1, tab2):
        await client.close()


async def test_kick_reaches_every_connection_of_the_user(shared: Pair) -> None:
    """DELETE of a shared member closes each of its connections that were only in that room
    with 4499."""
    room = rid()
    tab1 = await connect(shared.a, "alice", room)
    tab2 = await connect(shared.b, "alice", room)
    async with httpx.AsyncClient(base_url=shared.a.url) as http:
        response = await http.delete(f"/api/v1/rooms/{room}/members/alice")
        assert response.status_code == 204
    assert (await tab1.closed())[0] == 4499
    assert (await tab2.closed())[0] == 4499


async def test_resuming_connection_under_share_takes_nothing_over(shared: Pair) -> None:
    """Under share a connection with since+epoch simply joins: the other tab stays open."""
    room = rid()
    tab1 = await connect(shared.a, "alice", room)
    epoch = tab1.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    tab2 = await connect(shared.b, "alice", room, since=0, epoch=epoch)
    assert tab2.welcome["payload"]["recovered"] is True  # type: ignore[attr-defined]
    await tab1.barrier()
    await tab2.barrier()
    await tab1.close()
    await tab2.close()


async def test_default_policy_is_share_with_authentication(start_server: Start) -> None:
    """With authentication on and no --on-duplicate, a second connection of a user shares."""
    server = start_server("--jwt-secret", SECRET)
    room = rid()
    tab1 = await connect(server, "alice", room, token=token())
    tab2 = await connect(server, "alice", room, token=token())
    assert tab2.welcome["payload"]["members"] == ["alice"]  # type: ignore[attr-defined]
    await tab1.barrier()
    await tab1.close()
    await tab2.close()


async def test_default_policy_is_reject_without_authentication(start_server: Start) -> None:
    """Without authentication the default stays v1's reject (4409)."""
    server = start_server()
    room = rid()
    first = await connect(server, "alice", room)
    second = await Client.connect(server.ws_url, "alice", room)
    code, frames = await second.closed()
    assert code == 4409
    assert frames[0]["payload"]["code"] == "duplicate"
    await first.close()


async def test_explicit_policy_wins_over_the_default(start_server: Start) -> None:
    """--on-duplicate reject with authentication on refuses the second tab (4409); the
    environment variable does the same as the flag."""
    server = start_server("--jwt-secret", SECRET, "--on-duplicate", "reject")
    room = rid()
    first = await connect(server, "alice", room, token=token())
    second = await Client.connect(server.ws_url, room=room, token=token())
    assert (await second.closed())[0] == 4409
    await first.close()
    server = start_server(env={"ROOMCAST_ON_DUPLICATE": "share"})
    first = await connect(server, "alice", room)
    second = await connect(server, "alice", room)
    assert second.welcome["payload"]["members"] == ["alice"]  # type: ignore[attr-defined]
    await first.close()
    await second.close()


async def test_killed_node_of_one_tab_leaves_the_user_present(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """kill -9 of the node of one tab: the user stays present (no presence.leave) while the
    other tab lives; once the other tab's node is killed too, one presence.leave."""
    ttl = ("--presence-ttl", "3", *SHARE)
    a = start_server("--broker", redis_server.url, "--node-id", "a", *ttl)
    b = start_server("--broker", redis_server.url, "--node-id", "b", *ttl)
    c = start_server("--broker", redis_server.url, "--node-id", "c", *ttl)
    room = rid()
    bob = await connect(c, "bob", room)
    tab_a = await connect(a, "alice", room)
    await bob.recv_topic("presence.join")
    tab_b = await connect(b, "alice", room)
    a.kill()
    assert (await tab_a.closed())[0] == 1006
    # The sweep runs within the presence bound; the entry of a's tab is gone once b's is
    # the only one left, which the members endpoint shows without a timed wait.
    async with httpx.AsyncClient(base_url=c.url) as http:
        deadline = time.monotonic() + 10
        while True:
            state = await holders(redis_server, room, "alice")
            if state == ["b"]:
                break
            assert time.monotonic() < deadline, state
            await bob.barrier()
        members = await http.get(f"/api/v1/rooms/{room}/members")
        assert members.json() == {"members": ["alice", "bob"]}
    await bob.barrier()  # no presence.leave for alice
    b.kill()
    assert (await tab_b.closed())[0] == 1006
    assert await bob.recv(10) == {
        "topic": "presence.leave",
        "payload": {"username": "alice"},
        "room": room,
    }
    await bob.barrier()
    await bob.close()


async def holders(redis: RedisProcess, room: str, username: str) -> list[str]:
    """The node ids whose connections hold `username` in the room's presence, from Redis."""
    client = aioredis.from_url(redis.url)
    try:
        value = await client.hget(wire.presence_key(room), username)
    finally:
        await client.aclose()
    if value is None:
        return []
    return sorted(token.split(":")[0] for token in value.decode().split(" "))
