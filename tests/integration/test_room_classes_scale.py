"""Presence that scales (docs/configuration.md, "Large rooms"): members joining a room of a
class with `presence = false` or `join_leave = false` cause no presence frames at all, so a
join costs O(1) frames instead of one per member; counted at a few members and in the
servers' `roomcast_frames_out` counter (no timing)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from tests.harness import RECV_TIMEOUT, Client, RedisProcess
from tests.integration.rooms_support import Start, deploy

CLASSES = """
[rooms.crowd]
presence = false

[rooms.quiet]
join_leave = false
"""

OBSERVERS = 3
FRAMES_OUT = re.compile(r"^roomcast_frames_out_total (\S+)$", re.M)


def frames_out(base: str) -> float:
    """The server's count of frames fanned out or broadcast to clients (presence frames
    among them; welcome, joined and ack frames are not counted)."""
    text = httpx.get(f"{base}/metrics", timeout=RECV_TIMEOUT).text
    found = FRAMES_OUT.search(text)
    assert found is not None, text
    return float(found.group(1))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kind", "members", "quiet_members"), [("memory", 5000, 1000), ("redis", 1000, 1000)]
)
async def test_many_members_join_without_presence_frames(
    start_server: Start,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
    members: int,
    quiet_members: int,
) -> None:
    """`members` users join a `crowd:` room (presence off) at connect, the first
    `quiet_members` of them a `quiet:` room (join_leave off) too, with `room.join`: the
    first members, there from the start, get no frame but their own answers, and the
    servers fan out no frame meanwhile; one room message then reaches every member once.

    The quiet room has fewer members: its member lists (in every `joined`) grow with each
    join, O(n^2) bytes in all, though not one frame more."""
    path = tmp_path / "rooms.toml"
    path.write_text(CLASSES)
    redis = request.getfixturevalue("redis_server") if kind == "redis" else None
    assert redis is None or isinstance(redis, RedisProcess)
    pair = deploy(kind, start_server, redis, "--config", str(path), "--rate-limit", "off")
    servers = [pair.a] if kind == "memory" else [pair.a, pair.b]
    crowd, quiet = f"crowd:{uuid.uuid4().hex[:6]}", f"quiet:{uuid.uuid4().hex[:6]}"
    clients: list[Client] = []
    gate = asyncio.Semaphore(64)

    async def join(i: int) -> Client:
        async with gate:
            server = servers[i % len(servers)]
            client = await Client.connect(server.ws_url, f"m{i:05d}", crowd)
            # Frames other than the answers are not parsed: a member list of the quiet room
            # grows with every join (bytes, not frames, are O(n) per join there).
            welcome = await asyncio.wait_for(client.ws.recv(), RECV_TIMEOUT)
            assert str(welcome).startswith('{"topic":"welcome"'), welcome
            if i >= quiet_members:
                return client
            await client.send({"topic": "room.join", "payload": {"roomID": quiet}, "id": 1})
            joined = await asyncio.wait_for(client.ws.recv(), RECV_TIMEOUT)
            assert str(joined).startswith('{"topic":"joined"'), str(joined)[:200]
            ack = orjson.loads(await asyncio.wait_for(client.ws.recv(), RECV_TIMEOUT))
            assert ack == {"topic": "ack", "payload": {"id": 1}}
            return client

    try:
        for i in range(OBSERVERS):
            clients.append(await join(i))
        before = [frames_out(s.url) for s in servers]
        clients += await asyncio.gather(*(join(i) for i in range(OBSERVERS, members)))
        for observer in clients[:OBSERVERS]:
            await observer.barrier()  # nothing queued: not one presence frame
        assert [frames_out(s.url) for s in servers] == before
        async with httpx.AsyncClient(timeout=RECV_TIMEOUT) as http:
            listing = await http.get(f"{servers[-1].url}/api/v1/rooms/{quiet}/members")
            assert len(listing.json()["members"]) == quiet_members
            # One message to the crowd reaches every member exactly once.
            answer = await http.post(
                f"{servers[0].url}/api/v1/rooms/{crowd}/messages",
                json={"topic": "news", "payload": "all"},
            )
            assert answer.status_code == 202
        got = await asyncio.gather(*(c.recv(RECV_TIMEOUT * 4) for c in clients))
        assert {(f["topic"], f["payload"], f["room"]) for f in got} == {("news", "all", crowd)}
        after = sum(frames_out(s.url) for s in servers) - sum(before)
        assert after == members
    finally:
        await asyncio.gather(*(_close(c) for c in clients))


async def test_default_class_announces_every_join(start_server: Start) -> None:
    """The control: in a default room, each join is a frame to every member already there
    (what the classes above leave out), so the counts above can tell."""
    server = start_server()
    room = f"d-{uuid.uuid4().hex[:6]}"
    clients = [await Client.connect(server.ws_url, f"m{i}", room) for i in range(10)]
    try:
        for client in clients:
            await client.join()
        joins = 0
        async with asyncio.timeout(RECV_TIMEOUT):
            while joins < 9:
                frame = await clients[0].recv()
                assert frame["topic"] == "presence.join"
                joins += 1
        assert frames_out(server.url) == 9 * 10 / 2
    finally:
        for client in clients:
            await client.close()


async def _close(client: Client) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await client.close()
