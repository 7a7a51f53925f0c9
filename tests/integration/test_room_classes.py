"""Room classes (docs/protocol.md, section 9): every setting of the class table, on one
memory:// server and on two nodes sharing Redis; a room's class comes from its ID's prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from roomcast import Publisher, RoomClass, Settings
from roomcast.brokers.redis import wire
from tests.harness import RECV_TIMEOUT, RedisProcess, ServerProcess
from tests.integration.client_support import poll
from tests.integration.rooms_support import Pair, RoomsClient, connect, deploy

CLASSES = """
[rooms.chat]
history_size = 3
history_ttl = 600
ephemeral_topics = ["typing"]

[rooms.brief]
history_ttl = 1

[rooms.none]
history_size = 0

[rooms.feed]
client_publish = false
presence = false

[rooms.crowd]
presence = false
on_duplicate = "share"

[rooms.hold]
presence = false
on_duplicate = "share"
history_ttl = 1

[rooms.unseen]
presence = false

[rooms.unseenfull]
presence = false
max_members = 2

[rooms.quiet]
join_leave = false

[rooms.small]
max_members = 2

[rooms.fulltabs]
max_members = 1
on_duplicate = "share"

[rooms.fullsolo]
max_members = 1
on_duplicate = "replace"

[rooms.user]
personal = true

[rooms.solo]
on_duplicate = "replace"

[rooms.tabs]
on_duplicate = "share"
"""


def rid(cls: str = "") -> str:
    """A room id no other test uses, of class `cls` (the default class when empty)."""
    suffix = uuid.uuid4().hex[:8]
    return f"{cls}:{suffix}" if cls else f"d-{suffix}"


@pytest.fixture(autouse=True)
async def close_clients(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every client a test opens is closed at its end."""
    opened: list[RoomsClient] = []
    original = RoomsClient.connect.__func__  # type: ignore[attr-defined]

    async def tracked(cls: type[RoomsClient], *args: Any, **kwargs: Any) -> RoomsClient:
        client: RoomsClient = await original(cls, *args, **kwargs)
        opened.append(client)
        return client

    monkeypatch.setattr(RoomsClient, "connect", classmethod(tracked))
    yield
    for client in opened:
        await client.close()


@pytest.fixture(scope="module", params=["memory", "redis"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pair, RedisProcess | None]]:
    """Two nodes (or one memory:// server) reading the classes above from `--config`, for
    the whole module: each test uses rooms of its own."""
    path = tmp_path_factory.mktemp("classes") / "rooms.toml"
    path.write_text(CLASSES)
    servers: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(["--port", "0", *args])
        servers.append(server)
        return server.start()

    redis = RedisProcess().start() if request.param == "redis" else None
    try:
        yield deploy(request.param, start, redis, "--config", str(path)), redis
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()


@pytest.fixture
def classes(deployment: tuple[Pair, RedisProcess | None]) -> Pair:
    """The module's deployment."""
    return deployment[0]


@pytest.fixture
def redis_or_none(deployment: tuple[Pair, RedisProcess | None]) -> RedisProcess | None:
    """Its redis-server, on the redis kind."""
    return deployment[1]


async def publish(base: str, room: str, topic: str, payload: object, **extra: object) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=RECV_TIMEOUT) as http:
        answer = await http.post(
            f"/api/v1/rooms/{room}/messages", json={"topic": topic, "payload": payload, **extra}
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["offset"])


async def history_empty(base: str, room: str) -> bool:
    page = (await get(base, f"/api/v1/rooms/{room}/history")).json()
    return not page["messages"]


async def get(base: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=RECV_TIMEOUT) as http:
        return await http.get(path)


# history_size, history_ttl


async def test_history_size_per_class(classes: Pair, redis_or_none: RedisProcess | None) -> None:
    """A `chat:` room keeps its class's 3 messages, a default room the flag's 100; on Redis
    the stream itself is trimmed to 3 and lives the class's 600 s."""
    chat, plain = rid("chat"), rid()
    for i in range(5):
        await publish(classes.a.url, chat, "m", i)
        await publish(classes.b.url, plain, "m", i)
    kept = (await get(classes.b.url, f"/api/v1/rooms/{chat}/history")).json()["messages"]
    assert [m["payload"] for m in kept] == [2, 3, 4]
    assert [m["offset"] for m in kept] == [3, 4, 5]
    all_kept = (await get(classes.a.url, f"/api/v1/rooms/{plain}/history")).json()["messages"]
    assert [m["payload"] for m in all_kept] == [0, 1, 2, 3, 4]
    if redis_or_none is not None:
        redis = aioredis.from_url(redis_or_none.url)
        try:
            stream = wire.room_keys(chat)[2]
            assert await redis.xlen(stream) == 3
            assert 300_000 < await redis.pttl(stream) <= 600_000
            assert await redis.pttl(wire.room_keys(plain)[2]) <= 300_000
        finally:
            await redis.aclose()


async def test_recovery_within_the_class_history(classes: Pair) -> None:
    """A client that missed more than the class keeps is told `recovered: false`; one that
    missed less gets the missed messages."""
    room = rid("chat")
    alice = await connect(classes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    await alice.close()
    for i in range(2):
        await publish(classes.b.url, room, "m", i)
    back = await connect(classes.b, "alice", room, since=0, epoch=epoch)
    assert back.welcome["payload"]["recovered"] is True  # type: ignore[attr-defined]
    assert [(await back.recv())["payload"] for _ in range(2)] == [0, 1]
    await back.close()
    for i in range(2, 6):
        await publish(classes.a.url, room, "m", i)
    late = await connect(classes.a, "alice", room, since=2, epoch=epoch)
    assert late.welcome["payload"]["recovered"] is False  # type: ignore[attr-defined]
    await late.barrier()


async def test_history_size_zero_keeps_nothing(classes: Pair) -> None:
    """`history_size = 0`: no history, and a missed message means `recovered: false`."""
    room = rid("none")
    alice = await connect(classes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    await alice.close()
    assert await publish(classes.b.url, room, "m", 1) == 1
    page = (await get(classes.a.url, f"/api/v1/rooms/{room}/history")).json()
    assert page["messages"] == []
    back = await connect(classes.b, "alice", room, since=0, epoch=epoch)
    assert back.welcome["payload"]["recovered"] is False  # type: ignore[attr-defined]
    assert back.welcome["payload"]["offset"] == 1  # type: ignore[attr-defined]
    await back.barrier()


async def test_history_ttl_per_class(classes: Pair) -> None:
    """A `brief:` room's messages expire after its class's 1 s, a default room's do not."""
    brief, plain = rid("brief"), rid()
    await publish(classes.a.url, brief, "m", 1)
    await publish(classes.a.url, plain, "m", 1)
    await poll(lambda: history_empty(classes.b.url, brief), 10)
    kept = (await get(classes.b.url, f"/api/v1/rooms/{plain}/history")).json()["messages"]
    assert [m["payload"] for m in kept] == [1]


# ephemeral_topics


async def test_ephemeral_topics_of_the_class(classes: Pair) -> None:
    """A `chat:` room's `typing` frames go out without an offset and take no place in its
    order; in a default room the same topic is a stored message with an offset."""
    chat, plain = rid("chat"), rid()
    alice = await connect(classes.a, "alice", chat)
    bob = await connect(classes.b, "bob", chat)
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "typing", "payload": True, "id": 1})
    own = {"topic": "typing", "payload": True, "room": chat, "from": "alice"}
    answers = [await alice.recv(), await alice.recv()]
    # Without an offset to wait for, the ack may overtake the sender's own copy on Redis.
    assert sorted(answers, key=lambda f: f["topic"]) == [
        {"topic": "ack", "payload": {"id": 1}},
        own,
    ]
    assert await bob.recv() == own
    assert await publish(classes.b.url, chat, "m", 1) == 1
    assert (await alice.recv())["offset"] == 1
    await alice.join_room(plain)
    await alice.send({"topic": "typing", "payload": True, "room": plain, "id": 2})
    stored = await alice.recv()
    assert (stored["topic"], stored["offset"]) == ("typing", 1)
    assert (await alice.acked(2))["payload"]["offset"] == 1


# presence = false


async def test_presence_false_lists_and_announces_nobody(
    classes: Pair, redis_or_none: RedisProcess | None
) -> None:
    """`presence = false`: `members` is [] in welcome and joined, `presence` answers [], the
    members endpoint [], no presence frames; messages still reach everyone; on Redis the
    room has no presence key, no node member entry and is not in the rooms set."""
    room = rid("crowd")
    alice = await connect(classes.a, "alice", room)
    assert alice.welcome["payload"]["members"] == []  # type: ignore[attr-defined]
    bob = await connect(classes.b, "bob")
    joined = await bob.join_room(room)
    assert joined["payload"]["members"] == []
    await alice.send({"topic": "presence", "payload": {}, "id": 1})
    assert await alice.recv() == {"topic": "presence", "payload": {"members": []}, "room": room}
    await alice.acked(1)
    assert (await get(classes.a.url, f"/api/v1/rooms/{room}/members")).json() == {"members": []}
    rooms = (await get(classes.b.url, "/api/v1/rooms")).json()["rooms"]
    assert room not in [r["roomID"] for r in rooms]
    await alice.send({"topic": "chat", "payload": "hi", "id": 2})
    assert (await alice.recv())["payload"] == "hi"
    await alice.acked(2)
    message = await bob.recv()
    assert (message["topic"], message["from"], message["payload"]) == ("chat", "alice", "hi")
    if redis_or_none is not None:
        redis = aioredis.from_url(redis_or_none.url)
        try:
            assert not await redis.exists(wire.presence_key(room))
            for node in ("a", "b"):
                entries = await redis.smembers(wire.member_set_key(node))
                assert not [e for e in entries if e.decode().startswith(f"{room}\n")]
            # Offset, epoch, stream, and the hold key that the serving nodes renew.
            keys = [k.decode() async for k in redis.scan_iter(match=f"*{{{room}}}*")]
            assert sorted(keys) == sorted(wire.room_keys(room, listed=False))
        finally:
            await redis.aclose()
    await bob.leave_room(room)
    await bob.barrier()
    await alice.close()
    await alice.ws.wait_closed()
    await bob.barrier()  # no presence.leave either


async def test_presence_false_room_is_held_while_served(
    classes: Pair, redis_or_none: RedisProcess | None
) -> None:
    """A room without presence has no member entry to hold it, yet its offsets and epoch
    outlive its `history_ttl` while a node serves it: a quiet spell longer than the ttl
    loses the retained messages, not the room's order (no new epoch, no reconnect)."""
    room = rid("hold")
    alice = await connect(classes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    assert await publish(classes.b.url, room, "m", 1) == 1
    assert (await alice.recv())["offset"] == 1
    # Past the ttl: the retained message expires ...
    await poll(lambda: history_empty(classes.b.url, room), 10)
    if redis_or_none is not None:
        redis = aioredis.from_url(redis_or_none.url)
        try:
            offset_key = wire.room_keys(room)[0]

            async def renewed() -> bool:
                return bool(await redis.pttl(offset_key) > 1000)

            await poll(renewed, 10)
        finally:
            await redis.aclose()
    # ... the offsets go on in the same epoch, and alice stays connected.
    assert await publish(classes.b.url, room, "m", 2) == 2
    frame = await alice.recv()
    assert (frame["payload"], frame["offset"]) == (2, 2)
    page = (await get(classes.a.url, f"/api/v1/rooms/{room}/history")).json()
    assert page["epoch"] == epoch
    await alice.barrier()


async def test_presence_false_to_still_works(classes: Pair) -> None:
    """`to` reaches the member (from a client and from the HTTP API, which cannot check
    presence there and answers 202); the others do not get it."""
    room = rid("crowd")
    alice = await connect(classes.a, "alice", room)
    bob = await connect(classes.b, "bob", room)
    carol = await connect(classes.a, "carol", room)
    await alice.send({"topic": "dm", "payload": "psst", "to": "bob", "id": 1})
    await alice.acked(1)
    frame = await bob.recv()
    assert (frame["topic"], frame["from"], frame["payload"]) == ("dm", "alice", "psst")
    await publish(classes.b.url, room, "note", "for carol", to="carol")
    assert (await carol.recv())["payload"] == "for carol"
    await publish(classes.a.url, room, "note", "nobody", to="nobody")
    await alice.barrier()
    await bob.barrier()
    await carol.barrier()


async def test_presence_false_under_reject_keeps_its_members_unseen(classes: Pair) -> None:
    """Without presence but under the server's `reject` (or with `max_members`), the room
    keeps its members unseen: nobody is listed or announced, yet a second connection of a
    name is refused (4409, `duplicate` for a room.join), `to` and a kick of someone absent
    answer `member_not_found`, and `max_members` refuses the joiner past it."""
    room = rid("unseen")
    alice = await connect(classes.a, "alice", room)
    assert alice.welcome["payload"]["members"] == []  # type: ignore[attr-defined]
    again = await RoomsClient.connect(classes.b.ws_url, "alice", room)
    code, frames = await again.closed()
    assert code == 4409
    assert [f["payload"]["code"] for f in frames] == ["duplicate"]
    other = await connect(classes.b, "alice")
    error = await other.join_room(room, expect="error")
    assert error["payload"]["code"] == "duplicate"
    bob = await connect(classes.b, "bob", room)
    assert bob.welcome["payload"]["members"] == []  # type: ignore[attr-defined]
    error = await bob.error({"topic": "dm", "payload": 1, "to": "nobody", "id": 5})
    assert error["code"] == "member_not_found"
    await bob.send({"topic": "dm", "payload": "psst", "to": "alice", "id": 6})
    assert (await alice.recv())["payload"] == "psst"
    await bob.acked(6)
    async with httpx.AsyncClient(base_url=classes.a.url, timeout=RECV_TIMEOUT) as http:
        missing = await http.post(
            f"/api/v1/rooms/{room}/messages", json={"topic": "t", "payload": 1, "to": "nobody"}
        )
        assert missing.status_code == 404
        assert (await http.delete(f"/api/v1/rooms/{room}/members/nobody")).status_code == 404
        assert (await http.get(f"/api/v1/rooms/{room}/members")).json() == {"members": []}
        rooms = (await http.get("/api/v1/rooms")).json()["rooms"]
        assert room not in [r["roomID"] for r in rooms]
    await alice.barrier()  # no presence.join of bob
    full = rid("unseenfull")
    first, second = await connect(classes.a, "u1", full), await connect(classes.b, "u2", full)
    third = await RoomsClient.connect(classes.a.ws_url, "u3", full)
    code, frames = await third.closed()
    assert (code, [f["payload"]["code"] for f in frames]) == (4429, ["room_full"])
    await second.close()  # once its close completed, its place is free, on every node
    fourth = await connect(classes.a, "u4", full)
    await first.barrier()  # nobody announced
    for client in (alice, other, bob, first, fourth):
        await client.close()


async def test_presence_false_same_username_twice(classes: Pair) -> None:
    """Under `share`, a room without presence keeps no member list: both connections of a
    name stay, and each gets the room's messages; a kick closes both."""
    room = rid("crowd")
    first = await connect(classes.a, "alice", room)
    second = await connect(classes.b, "alice", room)
    await publish(classes.a.url, room, "m", 1)
    assert (await first.recv())["payload"] == 1
    assert (await second.recv())["payload"] == 1
    async with httpx.AsyncClient(base_url=classes.b.url) as http:
        assert (await http.delete(f"/api/v1/rooms/{room}/members/alice")).status_code == 204
    for client in (first, second):
        code, _ = await client.closed()
        assert code == 4499


# join_leave = false


async def test_join_leave_false(classes: Pair) -> None:
    """`join_leave = false`: member lists as usual, no presence.join/leave frames."""
    room = rid("quiet")
    alice = await connect(classes.a, "alice", room)
    bob = await connect(classes.b, "bob", room)
    assert bob.welcome["payload"]["members"] == ["alice", "bob"]  # type: ignore[attr-defined]
    await alice.barrier()  # no presence.join
    carol = await connect(classes.a, "carol")
    assert (await carol.join_room(room))["payload"]["members"] == ["alice", "bob", "carol"]
    await alice.send({"topic": "presence", "payload": {}})
    assert (await alice.recv())["payload"] == {"members": ["alice", "bob", "carol"]}
    members = (await get(classes.b.url, f"/api/v1/rooms/{room}/members")).json()
    assert members == {"members": ["alice", "bob", "carol"]}
    await carol.leave_room(room)
    await bob.close()
    await bob.ws.wait_closed()

    async def only_alice() -> bool:
        members = (await get(classes.a.url, f"/api/v1/rooms/{room}/members")).json()
        return bool(members == {"members": ["alice"]})

    await poll(only_alice)
    await alice.barrier()  # no presence.leave


# client_publish = false


async def test_client_publish_false(classes: Pair) -> None:
    """`client_publish = false`: client frames answer `forbidden`, with and without `to`;
    the HTTP API still publishes; built-ins still work."""
    room = rid("feed")
    alice = await connect(classes.a, "alice", room)
    bob = await connect(classes.b, "bob", room)
    error = await alice.error({"topic": "chat", "payload": "hi", "id": 7})
    assert error["code"] == "forbidden"
    assert error["id"] == 7
    error = await alice.error({"topic": "chat", "payload": "hi", "to": "bob", "id": 8})
    assert error["code"] == "forbidden"
    await alice.send({"topic": "chat", "payload": "no id"})
    assert (await alice.recv())["payload"]["code"] == "forbidden"
    offset = await publish(classes.b.url, room, "news", "from the server")
    for client in (alice, bob):
        frame = await client.recv()
        assert (frame["payload"], frame["from"], frame["offset"]) == (
            "from the server",
            "$server",
            offset,
        )
    await bob.barrier()


async def test_client_publish_false_in_a_second_room(classes: Pair) -> None:
    """The rule follows the frame's room: a connection in a feed and a default room may
    publish to the second only."""
    feed, plain = rid("feed"), rid()
    alice = await connect(classes.a, "alice", plain)
    await alice.join_room(feed)
    error = await alice.error({"topic": "chat", "payload": 1, "room": feed, "id": 1})
    assert error["code"] == "forbidden"
    await alice.send({"topic": "chat", "payload": 2, "id": 2})
    assert (await alice.recv())["payload"] == 2
    await alice.acked(2)


# max_members


async def test_max_members(classes: Pair) -> None:
    """`max_members = 2`: a third user is refused at connect (4429, `room_full`) and by
    `room.join` (`room_full`, the connection stays); a member's own second connection is
    not a new member; once one leaves, the third gets in."""
    room = rid("small")
    alice = await connect(classes.a, "alice", room)
    bob = await connect(classes.b, "bob", room)
    carol = await RoomsClient.connect(classes.a.ws_url, "carol", room)
    code, frames = await carol.closed()
    assert code == 4429
    assert frames[0]["topic"] == "error"
    assert frames[0]["payload"]["code"] == "room_full"
    dave = await connect(classes.b, "dave")
    error = await dave.join_room(room, expect="error")
    assert error["payload"]["code"] == "room_full"
    await dave.barrier()
    again = await RoomsClient.connect(classes.b.ws_url, "alice", room)
    code, frames = await again.closed()
    assert code == 4409  # the name is taken (reject), not a full room
    await bob.close()
    await bob.ws.wait_closed()
    async with asyncio.timeout(RECV_TIMEOUT):
        # bob's leave reaches presence once his close is handled: until then, still full.
        while True:
            await dave.send({"topic": "room.join", "payload": {"roomID": room}})
            dave_in = await dave.recv()
            if dave_in["topic"] == "joined":
                break
            assert dave_in["payload"]["code"] == "room_full"
    assert dave_in["payload"]["members"] == ["alice", "dave"]
    seen = [(f["topic"], f["payload"]["username"]) for f in [await alice.recv() for _ in "abc"]]
    assert seen == [("presence.join", "bob"), ("presence.leave", "bob"), ("presence.join", "dave")]
    await alice.barrier()  # carol's and the second alice's attempts were never announced


async def test_max_members_cluster_wide_race(
    classes: Pair, redis_or_none: RedisProcess | None
) -> None:
    """Twelve users join a `max_members = 2` room at once through both nodes: exactly two
    get in, cluster-wide, and the member list says which."""
    room = rid("small")
    names = [f"u{i}" for i in range(12)]

    async def attempt(i: int) -> RoomsClient | None:
        server = classes.a if i % 2 else classes.b
        client = await RoomsClient.connect(server.ws_url, names[i], room)
        frame = await client.recv()
        if frame["topic"] == "welcome":
            return client
        assert frame["payload"]["code"] == "room_full", frame
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 4429
        return None

    results = await asyncio.gather(*(attempt(i) for i in range(12)))
    admitted = sorted(names[i] for i, r in enumerate(results) if r is not None)
    assert len(admitted) == 2
    members = (await get(classes.b.url, f"/api/v1/rooms/{room}/members")).json()
    assert members == {"members": admitted}


async def test_max_members_counts_usernames(classes: Pair) -> None:
    """A full room still admits its members' own names: another tab under `share`, a
    `replace` of the name; a new name is refused."""
    tabs, solo = rid("fulltabs"), rid("fullsolo")
    alice = await connect(classes.a, "alice", tabs)
    second = await connect(classes.b, "alice", tabs)
    assert second.welcome["payload"]["members"] == ["alice"]  # type: ignore[attr-defined]
    bob = await RoomsClient.connect(classes.a.ws_url, "bob", tabs)
    code, frames = await bob.closed()
    assert (code, frames[0]["payload"]["code"]) == (4429, "room_full")
    first = await connect(classes.a, "carol", solo)
    await connect(classes.b, "carol", solo)  # takes the place over
    code, _ = await first.closed()
    assert code == 4409
    dave = await RoomsClient.connect(classes.b.ws_url, "dave", solo)
    code, frames = await dave.closed()
    assert (code, frames[0]["payload"]["code"]) == (4429, "room_full")
    await alice.barrier()


async def test_publisher_applies_the_classes(redis_server: RedisProcess) -> None:
    """A Publisher given the servers' classes keeps a `chat:` room's 3 messages for 600 s,
    as the servers do (the history a publish keeps is the publisher's)."""
    room = rid("chat")
    settings = Settings(room_classes={"chat": RoomClass(history_size=3, history_ttl=600)})
    async with Publisher(redis_server.url, settings=settings) as publisher:
        for i in range(5):
            await publisher.publish(room, "m", i)
    redis = aioredis.from_url(redis_server.url)
    try:
        stream = wire.room_keys(room)[2]
        assert await redis.xlen(stream) == 3
        assert 300_000 < await redis.pttl(stream) <= 600_000
    finally:
        await redis.aclose()


# personal


async def test_personal_room(classes: Pair) -> None:
    """`personal = true`: `user:alice` admits alice only: bob gets 4403 at connect and
    `forbidden` for `room.join`; the server publishes to her room."""
    room = "user:alice-" + uuid.uuid4().hex[:6]
    owner = room.split(":", 1)[1]
    alice = await connect(classes.a, owner, room)
    bob = await RoomsClient.connect(classes.b.ws_url, "bob", room)
    code, frames = await bob.closed()
    assert code == 4403
    assert frames[0]["payload"]["code"] == "forbidden"
    eve = await connect(classes.a, "eve")
    error = await eve.join_room(room, expect="error")
    assert error["payload"]["code"] == "forbidden"
    await eve.barrier()
    tab = await connect(classes.b, "nobody")
    assert (await tab.join_room(f"user:{owner}x", expect="error"))["payload"]["code"] == (
        "forbidden"
    )
    await publish(classes.b.url, room, "note", "just for you")
    assert (await alice.recv())["payload"] == "just for you"
    other = await connect(classes.b, owner)
    await other.join_room(room.replace("user:", "other:"))  # another class: not personal


# on_duplicate


async def test_on_duplicate_per_class(classes: Pair) -> None:
    """A `solo:` room replaces (the first connection closes with 4409), a `tabs:` room
    shares (both stay), a default room rejects (the server's policy): 4409 at connect."""
    solo, tabs, plain = rid("solo"), rid("tabs"), rid()
    first = await connect(classes.a, "alice", solo)
    await connect(classes.b, "alice", solo)
    code, _ = await first.closed()
    assert code == 4409
    tab1 = await connect(classes.a, "alice", tabs)
    tab2 = await connect(classes.b, "alice", tabs)
    assert tab2.welcome["payload"]["members"] == ["alice"]  # type: ignore[attr-defined]
    await publish(classes.a.url, tabs, "m", 1)
    assert (await tab1.recv())["payload"] == 1
    assert (await tab2.recv())["payload"] == 1
    await connect(classes.a, "alice", plain)
    refused_client = await RoomsClient.connect(classes.b.ws_url, "alice", plain)
    code, frames = await refused_client.closed()
    assert code == 4409
    assert frames[0]["payload"]["code"] == "duplicate"


async def test_prefix_without_a_class_is_the_default(classes: Pair) -> None:
    """A prefix that names no class, or none at all, keeps the flags: presence as usual."""
    room = "nosuchclass:" + uuid.uuid4().hex[:6]
    alice = await connect(classes.a, "alice", room)
    bob = await connect(classes.b, "bob", room)
    assert bob.welcome["payload"]["members"] == ["alice", "bob"]  # type: ignore[attr-defined]
    assert (await alice.recv())["topic"] == "presence.join"
