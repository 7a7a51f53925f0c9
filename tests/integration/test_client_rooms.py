"""Room handles of the Python client (protocol v1.1 section 7) against a scripted server:
join with a backlog, frames only in their room, publish and request with `room`, refusals,
leave and kick, and every room joined again with its own since + epoch after a reconnect;
then against a real server, several rooms resumed across a network cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection

from roomcast.client import Client, ClientState, HttpApi, RequestError, RequestTimeout, Room
from tests.harness import ServerProcess
from tests.integration.client_support import (
    FAST,
    Collector,
    FakeServer,
    Proxy,
    StateLog,
    poll,
    welcome,
)

StartServer = Callable[..., ServerProcess]


class Rooms:
    """The script of a v1.1 server: `room.join` gets `joined`, the backlog (offsets up to
    `offset`) and an ack; other frames with an id get an ack. `frames[n]` is what connection n
    sent, `sockets[n]` its server side."""

    def __init__(self, offset: int = 3, refuse: dict[str, str] | None = None) -> None:
        self.offset = offset
        self.refuse = refuse or {}
        self.recovered = True
        self.frames: list[list[dict[str, Any]]] = []
        self.sockets: list[ServerConnection] = []
        self.server = FakeServer(self)

    async def send(self, ws: ServerConnection, topic: str, payload: Any, **extra: Any) -> None:
        await ws.send(orjson.dumps({"topic": topic, "payload": payload, **extra}).decode())

    async def chat(self, ws: ServerConnection, text: str, room: str, offset: int) -> None:
        await self.send(ws, "chat", text, room=room, offset=offset, **{"from": "bob"})

    async def __call__(self, ws: ServerConnection, n: int) -> None:
        query = self.server.queries[n]
        self.frames.append([])
        self.sockets.append(ws)
        name = query["username"]
        if "roomID" in query:
            welcome: dict[str, Any] = {"connectionId": "c", "username": name}
            welcome.update(roomID=query["roomID"], members=[name], epoch="e1")
            welcome.update(offset=self.offset, rooms=[query["roomID"]])
            if "since" in query:
                welcome["recovered"] = self.recovered
        else:
            welcome = {"connectionId": "c", "username": name, "rooms": []}
        await self.send(ws, "welcome", welcome)
        async for raw in ws:
            frame = orjson.loads(raw)
            self.frames[n].append(frame)
            payload = frame["payload"]
            if frame["topic"] == "room.join":
                room = payload["roomID"]
                if room in self.refuse:
                    error = {"code": self.refuse[room], "message": "no", "id": frame["id"]}
                    await self.send(ws, "error", error)
                    continue
                joined = {"roomID": room, "members": [name], "epoch": f"e-{room}"}
                joined["offset"] = self.offset
                if "since" in payload:
                    joined["recovered"] = self.recovered
                await self.send(ws, "joined", joined, room=room)
                start = payload.get("since", self.offset - payload.get("backlog", 0))
                for offset in range(start + 1, self.offset + 1):
                    await self.chat(ws, f"m{offset}", room, offset)
            elif frame["topic"] == "presence":
                members = {"members": [name, "zed"]}
                await self.send(ws, "presence", members, room=payload.get("roomID"))
            if "id" in frame:
                ack = {"id": frame["id"], "offset": 9 if "room" in frame else None}
                await self.send(ws, "ack", ack)


@contextlib.asynccontextmanager
async def connected(rooms: Rooms, room: str | None = "lobby") -> AsyncIterator[Client]:
    async with (
        rooms.server,
        Client(rooms.server.url, username="alice", room=room, backoff=FAST) as c,
    ):
        yield c


async def test_join_with_a_backlog_gives_it_to_a_handler_added_after_the_join() -> None:
    """The backlog a join replays waits for the room's first handler of its topic."""
    rooms = Rooms(offset=5)
    async with connected(rooms) as c:
        room = await c.join("news", backlog=2)
        assert isinstance(room, Room)
        assert (room.id, room.members, room.epoch) == ("news", ["alice"], "e-news")
        seen = Collector()
        room.on("chat")(seen)
        assert [f.offset for f in await seen.wait(2)] == [4, 5]
        assert room.offset == 5
        first = rooms.frames[0][0]
        assert (first["topic"], first["payload"]) == ("room.join", {"roomID": "news", "backlog": 2})
        assert await c.join("news") is room
        assert c.rooms == {"lobby": c.first_room, "news": room}


async def test_frames_reach_only_their_rooms_handlers() -> None:
    """A room's handlers get its frames only; the client's handlers get every room's."""
    rooms = Rooms(offset=0)
    async with connected(rooms) as c:
        a, b = await c.join("a"), await c.join("b")
        in_a, in_b, everywhere = Collector(), Collector(), Collector()
        a.on("chat")(in_a)
        b.on("*")(in_b)
        c.on("chat")(everywhere)
        ws = rooms.sockets[0]
        for room in ("a", "b", "lobby", "never-joined"):
            await rooms.chat(ws, room, room, 1)
        await rooms.send(ws, "presence.join", {"username": "carl"}, room="b")
        await in_b.wait(3)
        assert [f.payload for f in in_a.frames] == ["a"]
        assert [f.topic for f in in_b.frames] == ["joined", "chat", "presence.join"]
        assert [f.payload for f in await everywhere.wait(3)] == ["a", "b", "lobby"]
        assert b.members == ["alice", "carl"]
        assert c.members == ["alice"]


async def test_publish_request_and_presence_name_the_room() -> None:
    """A room's publish, request and presence carry its id; so do the client's own frames
    for its URL room (once that room was left, they answer `not_joined` instead of reaching
    the connection's next room), but not its built-in ones."""
    rooms = Rooms(offset=0)
    async with connected(rooms) as c:
        room = await c.join("r2")
        await room.publish("chat", {"text": "hi"}, to="bob")
        assert await room.request("chat", {"text": "again"}) == 9
        assert await room.presence() == ["alice", "zed"]
        await c.send("chat", "v1")
        await c.request("ping", 1)  # answered after everything sent before it
        sent = [(f["topic"], f.get("room"), f.get("to")) for f in rooms.frames[0][1:]]
        assert sent == [
            ("chat", "r2", "bob"),
            ("chat", "r2", None),
            ("presence", None, None),
            ("chat", "lobby", None),
            ("ping", None, None),
        ]


async def test_a_refused_join_raises_and_leaves_no_handle() -> None:
    """join() raises the server's error code; the connection stays up."""
    rooms = Rooms(refuse={"secret": "forbidden", "full": "too_many_rooms"})
    async with connected(rooms) as c:
        with pytest.raises(RequestError) as refused:
            await c.join("secret")
        assert refused.value.wire_code == "forbidden"
        with pytest.raises(RequestError) as full:
            await c.join("full")
        assert full.value.wire_code == "too_many_rooms"
        assert list(c.rooms) == ["lobby"]
        assert c.connected


async def test_leave_and_a_kick_end_the_rooms_delivery() -> None:
    """After leave() nothing of the room is delivered; a `left` frame drops the room too."""
    rooms = Rooms(offset=0)
    async with connected(rooms) as c:
        gone, kicked = await c.join("gone"), await c.join("kicked")
        seen, left = Collector(), Collector()
        gone.on("chat")(seen)
        kicked.on("left")(left)
        await gone.leave()
        assert gone.left
        assert rooms.frames[0][-1]["payload"] == {"roomID": "gone"}
        ws = rooms.sockets[0]
        await rooms.chat(ws, "late", "gone", 1)
        await rooms.send(ws, "left", {"roomID": "kicked", "reason": "kicked"}, room="kicked")
        assert (await left.wait(1))[0].payload["reason"] == "kicked"
        assert kicked.left
        assert seen.frames == []
        assert list(c.rooms) == ["lobby"]


async def test_every_room_is_joined_again_with_its_own_since_and_epoch() -> None:
    """After a reconnect the URL room resumes through the URL and every other room with a
    `room.join` of its own since + epoch, before anything else; nothing is delivered twice."""
    rooms = Rooms(offset=2)
    async with connected(rooms) as c:
        a = await c.join("a")
        b = await c.join("b", backlog=1)
        got: list[str] = []
        a.on("chat")(lambda f: got.append(f"a{f.offset}"))
        b.on("chat")(lambda f: got.append(f"b{f.offset}"))
        await rooms.sockets[0].close(1012)
        await rooms.server.wait_connections(2)

        async def rejoined() -> bool:
            return len(rooms.frames) == 2 and len(rooms.frames[1]) >= 2

        await poll(rejoined)
        assert rooms.server.queries[1]["since"] == "2"
        joins = [f["payload"] for f in rooms.frames[1][:2]]
        assert joins == [
            {"roomID": "a", "since": 2, "epoch": "e-a"},
            {"roomID": "b", "since": 2, "epoch": "e-b"},
        ]
        await c.request("ping", 1)
        assert got == ["b2"]


async def test_a_rejoin_that_cannot_resume_calls_on_recovery_failed() -> None:
    """A re-join answered `recovered: false` calls the room's on_recovery_failed."""
    rooms = Rooms(offset=2)
    failed: list[tuple[Room, dict[str, Any]]] = []
    async with connected(rooms) as c:
        a = await c.join("a", on_recovery_failed=lambda room, joined: failed.append((room, joined)))
        rooms.recovered = False
        await rooms.sockets[0].close(1012)

        async def reported() -> bool:
            return len(failed) == 1

        await poll(reported)
        assert failed[0][0] is a
        assert failed[0][1]["recovered"] is False


async def test_a_connection_in_no_room() -> None:
    """room=None opens the connection without roomID; rooms are joined on it."""
    rooms = Rooms(offset=0)
    async with connected(rooms, room=None) as c:
        assert c.welcome is not None
        assert c.welcome.rooms == ()
        assert "roomID" not in rooms.server.queries[0]
        assert (await c.join("r1")).members == ["alice"]


async def test_rooms_on_a_real_server_resume_each_across_a_network_cut(
    start_server: StartServer,
) -> None:
    """Against a v1.1 server: alice in three rooms on one connection; while her network is
    cut, messages are published to each room; after the reconnect every room has every
    offset once, in order, and nothing of one room reached another."""
    server = start_server()
    proxy = await Proxy(server.port).start()
    api = HttpApi(server.url)
    states = StateLog()
    names = ("ra", "rb", "rc")
    seen = {name: Collector() for name in names}
    async with Client(proxy.ws_url, username="alice", on_state=states, backoff=FAST) as alice:
        rooms = [await alice.join(name) for name in names]
        for room in rooms:
            room.on("chat")(seen[room.id])
        for n in range(2):
            for name in names:
                await asyncio.to_thread(api.publish, name, "chat", {"room": name, "n": n})
        for name in names:
            await seen[name].wait(2)
        proxy.refuse()
        proxy.cut()
        await states.wait(ClientState.RECONNECTING)
        for n in range(2, 5):
            for name in names:
                await asyncio.to_thread(api.publish, name, "chat", {"room": name, "n": n})
        proxy.accept()
        await states.wait(ClientState.CONNECTED, count=2)
        for name in names:
            await asyncio.to_thread(api.publish, name, "chat", {"room": name, "n": 5})
        for name in names:
            frames = await seen[name].wait(6)
            assert [f.offset for f in frames] == [1, 2, 3, 4, 5, 6], name
            assert {f.payload["room"] for f in frames} == {name}
        assert sorted(alice.rooms) == sorted(names)
    await proxy.close()


async def test_the_url_room_is_a_room_handle() -> None:
    """The URL's room is a Room too: listed in `rooms`, returned by `join()`, with the
    client's members, offset and epoch; its handlers get its frames beside the client's."""
    rooms = Rooms(offset=2)
    async with connected(rooms) as c:
        lobby = c.first_room
        assert isinstance(lobby, Room)
        assert c.rooms == {"lobby": lobby}
        assert await c.join("lobby") is lobby
        assert (lobby.id, lobby.members, lobby.epoch, lobby.offset) == ("lobby", ["alice"], "e1", 2)
        mine, everyone = Collector(), Collector()
        lobby.on("chat")(mine)
        c.on("chat")(everyone)
        await rooms.chat(rooms.sockets[0], "hi", "lobby", 3)
        assert [f.payload for f in await mine.wait(1)] == ["hi"]
        assert [f.payload for f in await everyone.wait(1)] == ["hi"]
        assert (c.offset, lobby.offset) == (3, 3)
        assert await lobby.presence() == ["alice", "zed"]
        assert c.members == ["alice", "zed"]
        assert rooms.frames[0][-1]["payload"] == {"roomID": "lobby"}


async def test_leaving_the_url_room_reconnects_without_it() -> None:
    """After `first_room.leave()` the handle is left, gone from `rooms`, and the next
    connection names no room."""
    rooms = Rooms(offset=0)
    async with connected(rooms) as c:
        lobby = c.first_room
        assert lobby is not None
        await lobby.leave()
        assert lobby.left
        assert c.rooms == {}
        await rooms.sockets[0].close(1012)
        await rooms.server.wait_connections(2)
        assert "roomID" not in rooms.server.queries[1]


async def test_frames_for_a_left_url_room_answer_not_joined(start_server: StartServer) -> None:
    """Once the client left its URL room, its own publish and history answer `not_joined`
    (a real server): they do not reach the other room the connection is in."""
    server = start_server()
    async with Client(server.ws_url, username="alice", room="lobby", backoff=FAST) as c:
        news = await c.join("news")
        assert c.first_room is not None
        await c.first_room.leave()
        with pytest.raises(RequestError) as refused:
            await c.request("chat", {"text": "meant for lobby"})
        assert refused.value.wire_code == "not_joined"
        with pytest.raises(RequestError) as refused:
            await c.history()
        assert refused.value.wire_code == "not_joined"
        assert (await news.history()).messages == ()


async def test_a_join_that_times_out_leaves_no_room_behind() -> None:
    """join() raising RequestTimeout (no answer in time) failed: the room is not in
    client.rooms, the server is asked to leave it, and it is not joined again after a
    reconnect."""
    frames: list[tuple[int, dict[str, Any]]] = []

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0, recovered=True if number else None))
        async for raw in ws:
            frame = orjson.loads(raw)
            frames.append((number, frame))
            if frame["topic"] == "drop" and number == 0:
                await ws.close(1012)

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="lobby", backoff=FAST)
        await client.connect()
        with pytest.raises(RequestTimeout):
            await client.join("slow", timeout=0.2)
        assert "slow" not in client.rooms
        await client.send("drop", 1)  # the server ends this connection on it
        await server.wait_connections(2)
        await client.send("marker", 1)  # sent after whatever the reconnect sends first

        async def marked() -> bool:
            return any(f["topic"] == "marker" for _, f in frames)

        await poll(marked)
        topics = [
            (n, f["topic"], f["payload"].get("roomID"))
            for n, f in frames
            if f["topic"].startswith("room.")
        ]
        assert topics == [(0, "room.join", "slow"), (0, "room.leave", "slow")]
        await client.close()
