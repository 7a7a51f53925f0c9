"""One connection's relayed frames may wait for the broker together, yet every answer keeps
frame order: acks with consecutive offsets, errors in place, builtins after earlier acks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Client, RedisProcess, ServerProcess

Start = Callable[..., ServerProcess]

FRAMES = 500


def nodes(start: Start, redis: RedisProcess | None, *flags: str) -> list[ServerProcess]:
    """Two nodes sharing `redis`, or one memory:// node when `redis` is None."""
    if redis is None:
        return [start(*flags)]
    return [start("--broker", redis.url, "--node-id", name, *flags) for name in "ab"]


async def joined(server: ServerProcess, username: str) -> Client:
    client = await Client.connect(server.ws_url, username, "r1")
    await client.join()
    return client


async def answers(client: Client, count: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Read until `count` answers (acks, errors, pongs) came; also the offsets of the sender's
    own copies of its messages seen meanwhile."""
    got: list[dict[str, Any]] = []
    own: list[int] = []
    async with asyncio.timeout(60):
        while len(got) < count:
            frame = await client.recv(30)
            if frame["topic"] in ("ack", "error", "pong"):
                got.append(frame)
            elif frame["topic"] == "chat":
                own.append(frame["offset"])
    return got, own


async def chat_offsets(client: Client, count: int) -> list[tuple[int, Any]]:
    got: list[tuple[int, Any]] = []
    async with asyncio.timeout(60):
        while len(got) < count:
            frame = await client.recv(30)
            if frame["topic"] == "chat":
                got.append((frame["offset"], frame["payload"]))
    return got


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> RedisProcess | None:
    """Each test runs on one memory:// node and on two nodes sharing a real Redis."""
    if request.param == "memory":
        return None
    redis: RedisProcess = request.getfixturevalue("redis_server")
    return redis


async def test_back_to_back_relays_keep_frame_order(
    start_server: Start, broker: RedisProcess | None
) -> None:
    """500 frames back to back: 500 acks in order, consecutive offsets, one order everywhere."""
    servers = nodes(start_server, broker, "--rate-limit", "off")
    alice = await joined(servers[0], "alice")
    observers = [await joined(s, f"o{i}") for i, s in enumerate(servers)]
    watching = [asyncio.ensure_future(chat_offsets(o, FRAMES)) for o in observers]
    for n in range(FRAMES):
        await alice.send({"topic": "chat", "payload": n, "id": n})
    got, own = await answers(alice, FRAMES)
    assert [a["topic"] for a in got] == ["ack"] * FRAMES
    assert [a["payload"]["id"] for a in got] == list(range(FRAMES))
    offsets = [a["payload"]["offset"] for a in got]
    assert offsets == list(range(offsets[0], offsets[0] + FRAMES))
    assert own == offsets  # every ack came after the sender's own copy of its message
    for seen in await asyncio.gather(*watching):
        assert seen == [(offsets[n], n) for n in range(FRAMES)]
    for client in (alice, *observers):
        await client.barrier()
    for client in (alice, *observers):
        await client.close()


async def test_ping_and_error_between_relays_keep_their_place(
    start_server: Start, broker: RedisProcess | None
) -> None:
    """A ping and a `to` an absent member amid relays are answered in their place in order."""
    servers = nodes(start_server, broker, "--rate-limit", "off")
    alice = await joined(servers[0], "alice")
    bob = await joined(servers[-1], "bob")
    frames: list[dict[str, Any]] = [{"topic": "chat", "payload": n, "id": n} for n in range(300)]
    frames[100] = {"topic": "ping", "payload": "p", "id": 100}
    frames[200] = {"topic": "chat", "payload": 200, "id": 200, "to": "zed"}
    for frame in frames:
        await alice.send(frame)
    got, _ = await answers(alice, 301)  # the ping has a pong and an ack
    assert got[100] == {"topic": "pong", "payload": "p"}
    del got[100]
    assert [a["payload"]["id"] for a in got] == list(range(300))
    assert got[200]["topic"] == "error"
    assert got[200]["payload"]["code"] == "member_not_found"
    assert got[100] == {"topic": "ack", "payload": {"id": 100}}
    acked = [a["payload"]["offset"] for i, a in enumerate(got) if i not in (100, 200)]
    assert acked == list(range(acked[0], acked[0] + 298))
    seen = await chat_offsets(bob, 298)
    assert [p for _, p in seen] == [n for n in range(300) if n not in (100, 200)]
    for client in (alice, bob):
        await client.barrier()
    for client in (alice, bob):
        await client.close()


async def test_rate_limited_frames_answered_after_earlier_acks(
    start_server: Start, broker: RedisProcess | None
) -> None:
    """Past the burst, `rate_limited` errors come after the acks of the frames before them."""
    servers = nodes(start_server, broker, "--rate-limit", "1", "--rate-burst", "20")
    alice = await joined(servers[0], "alice")
    for n in range(25):
        await alice.send({"topic": "chat", "payload": n, "id": n})
    got, _ = await answers(alice, 25)
    assert [a["payload"]["id"] for a in got] == list(range(25))
    topics = [a["topic"] for a in got]
    acks = topics.count("ack")
    assert 20 <= acks < 25
    assert topics == ["ack"] * acks + ["error"] * (25 - acks)
    assert {a["payload"]["code"] for a in got[acks:]} == {"rate_limited"}
    await alice.close()


async def test_relays_while_redis_is_down_get_unavailable_in_order(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """With Redis stopped, every relayed frame gets an `unavailable` error with its id, in order."""
    (a, _) = nodes(start_server, redis_server, "--rate-limit", "off")
    alice = await joined(a, "alice")
    await alice.send({"topic": "chat", "payload": 0, "id": 0})
    got, _ = await answers(alice, 1)
    assert got[0]["topic"] == "ack"
    redis_server.stop()
    for n in range(1, 41):
        await alice.send({"topic": "chat", "payload": n, "id": n})
    got, _ = await answers(alice, 40)
    assert [a["payload"]["id"] for a in got] == list(range(1, 41))
    assert {(a["topic"], a["payload"]["code"]) for a in got} == {("error", "unavailable")}
    await alice.close()
