"""Several rooms on one connection (docs/protocol.md, section 7), on memory:// and on two
nodes sharing Redis: every line of the section, each refusal with the connection still open."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt

from tests.harness import Client, RedisProcess
from tests.integration.rooms_support import Pair, RoomsClient, Start, connect, deploy

SECRET = "rooms-v11-secret-long-enough-for-every-hs-algorithm-0123456789abcdef"


def rid(prefix: str = "r") -> str:
    """A room id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_connect_without_room_opens_a_connection_in_no_room(pair: Pair) -> None:
    """No roomID parameter: the welcome has exactly connectionId, username and rooms []."""
    alice = await RoomsClient.connect(pair.a.ws_url, "alice")
    welcome = await alice.join()
    assert set(welcome) == {"topic", "payload"}
    assert set(welcome["payload"]) == {"connectionId", "username", "rooms"}
    assert welcome["payload"]["username"] == "alice"
    assert welcome["payload"]["rooms"] == []
    assert welcome["payload"]["connectionId"]
    await alice.barrier()
    await alice.close()


async def test_url_room_welcome_lists_it_in_rooms(pair: Pair) -> None:
    """With a roomID the welcome is the v1 one plus `rooms: [roomID]`."""
    room = rid()
    alice = await connect(pair.a, "alice", room)
    payload = alice.welcome["payload"]  # type: ignore[attr-defined]
    assert payload["roomID"] == room
    assert payload["rooms"] == [room]
    assert payload["members"] == ["alice"]
    await alice.close()


async def test_empty_room_id_is_still_refused(pair: Pair) -> None:
    """A roomID that is present but empty is refused with 4400."""
    client = await Client.connect(pair.a.ws_url, "alice", "")
    code, frames = await client.closed()
    assert code == 4400
    assert frames[0]["payload"]["code"] == "bad_request"


async def test_join_answers_joined_then_ack_and_members_hear_it(pair: Pair) -> None:
    """room.join answers a `joined` frame naming the room, then the ack; the room's members
    (on another node too) get presence.join."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    alice = await connect(pair.a, "alice")
    joined = await alice.join_room(room)
    assert joined["room"] == room
    assert set(joined) == {"topic", "room", "payload"}
    assert set(joined["payload"]) == {"roomID", "members", "epoch", "offset"}
    assert joined["payload"]["roomID"] == room
    assert joined["payload"]["members"] == ["alice", "bob"]
    assert joined["payload"]["offset"] == 0
    assert await bob.recv() == {
        "topic": "presence.join",
        "payload": {"username": "alice"},
        "room": room,
    }
    await alice.close()
    await bob.close()


async def test_join_with_backlog_replays_the_last_messages(pair: Pair) -> None:
    """`backlog: N` replays the last N retained messages after `joined`, before the ack."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    for n in range(5):
        await bob.send({"topic": "chat", "payload": n, "room": room})
    for _ in range(5):
        await bob.recv_topic("chat")
    alice = await connect(pair.a, "alice")
    joined = await alice.join_room(room, backlog=3, ack=False)
    assert joined["payload"]["offset"] == 5
    assert "recovered" not in joined["payload"]
    replay = [await alice.recv() for _ in range(3)]
    assert [f["offset"] for f in replay] == [3, 4, 5]
    assert [f["payload"] for f in replay] == [2, 3, 4]
    assert {f["room"] for f in replay} == {room}
    await alice.acked(alice.last_id)
    await alice.barrier()
    await alice.close()
    await bob.close()


async def test_join_with_since_and_epoch_resumes_gap_free(pair: Pair) -> None:
    """`since`+`epoch`: `recovered: true` and every message after `since`, then live ones."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    epoch = bob.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    for n in range(6):
        await bob.send({"topic": "chat", "payload": n})
    for _ in range(6):
        await bob.recv_topic("chat")
    alice = await connect(pair.a, "alice")
    joined = await alice.join_room(room, since=2, epoch=epoch, ack=False)
    assert joined["payload"]["recovered"] is True
    assert [(await alice.recv())["offset"] for _ in range(4)] == [3, 4, 5, 6]
    await alice.acked(alice.last_id)
    await bob.send({"topic": "chat", "payload": "live"})
    live = await alice.recv_topic("chat")
    assert live["offset"] == 7
    assert live["room"] == room
    await alice.close()
    await bob.close()


async def test_join_with_another_epoch_is_not_recovered(pair: Pair) -> None:
    """A `since` with an epoch that is not the room's answers `recovered: false`, no replay."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    await bob.send({"topic": "chat", "payload": 1, "id": 1})
    await bob.recv_topic("ack")
    alice = await connect(pair.a, "alice")
    joined = await alice.join_room(room, since=0, epoch="not-the-epoch")
    assert joined["payload"]["recovered"] is False
    await alice.barrier()
    await alice.close()
    await bob.close()


async def test_join_refusals_are_bad_request_and_keep_the_connection(pair: Pair) -> None:
    """Bad roomID, since, epoch or backlog, since without epoch, since with backlog, a
    payload that is not an object: each one `bad_request` error, the connection stays."""
    alice = await connect(pair.a, "alice")
    bad_payloads = [
        {"roomID": ""},
        {"roomID": "a b"},
        {"roomID": "r" * 129},
        {"roomID": 7},
        {},
        {"roomID": "r1", "since": -1, "epoch": "e"},
        {"roomID": "r1", "since": "3", "epoch": "e"},
        {"roomID": "r1", "since": True, "epoch": "e"},
        {"roomID": "r1", "since": 3},
        {"roomID": "r1", "since": 3, "epoch": 5},
        {"roomID": "r1", "since": 3, "epoch": "e", "backlog": 2},
        {"roomID": "r1", "backlog": -2},
        {"roomID": "r1", "backlog": 1.5},
    ]
    for n, payload in enumerate(bad_payloads):
        error = await alice.error({"topic": "room.join", "payload": payload, "id": n})
        assert error["code"] == "bad_request", (payload, error)
        assert error["id"] == n
    error = await alice.error({"topic": "room.join", "payload": "r1", "id": "s"})
    assert error["code"] == "bad_request"
    await alice.barrier()
    room = rid()
    assert (await alice.join_room(room))["room"] == room
    await alice.close()


async def test_joining_a_room_again_answers_joined_and_changes_nothing(pair: Pair) -> None:
    """A second room.join of a room the connection is in: a fresh `joined`, no presence.join
    for the others, no replay, still one copy of each message."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    alice = await connect(pair.a, "alice")
    await alice.join_room(room)
    await bob.recv_topic("presence.join")
    await bob.send({"topic": "chat", "payload": 1})
    await alice.recv_topic("chat")
    await bob.recv_topic("chat")
    again = await alice.join_room(room, backlog=5)
    assert again["payload"]["members"] == ["alice", "bob"]
    assert again["payload"]["offset"] == 1
    assert "recovered" not in again["payload"]
    # With since+epoch, `recovered` is what a fresh join would answer; nothing is replayed.
    epoch = again["payload"]["epoch"]
    for since, their_epoch, recovered in [
        (0, epoch, True),
        (1, epoch, True),
        (2, epoch, False),
        (0, "another", False),
    ]:
        again = await alice.join_room(room, since=since, epoch=their_epoch)
        assert again["payload"]["recovered"] is recovered, (since, their_epoch)
    await alice.barrier()
    await bob.barrier()
    await bob.send({"topic": "chat", "payload": 2})
    assert (await alice.recv())["payload"] == 2
    await alice.barrier()
    await bob.recv_topic("chat")
    await alice.close()
    await bob.close()


async def test_leave_acks_others_hear_it_and_nothing_more_arrives(pair: Pair) -> None:
    """room.leave: ack; the others get presence.leave; no frame of that room after."""
    room, other = rid(), rid()
    bob = await connect(pair.b, "bob", room)
    alice = await connect(pair.a, "alice", other)
    await alice.join_room(room)
    await bob.recv_topic("presence.join")
    await alice.leave_room(room)
    assert await bob.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "alice"},
        "room": room,
    }
    await bob.send({"topic": "chat", "payload": "gone?", "id": 1})
    await bob.recv_topic("ack")
    await alice.barrier()
    error = await alice.error({"topic": "room.leave", "payload": {"roomID": room}, "id": 2})
    assert error["code"] == "not_joined"
    assert error["id"] == 2
    error = await alice.error({"topic": "room.leave", "payload": {}, "id": 3})
    assert error["code"] == "bad_request"
    await alice.barrier()
    await alice.close()
    await bob.close()


async def test_frames_name_their_room_and_default_to_the_first(pair: Pair) -> None:
    """`room` on a frame picks the room; without it the first room; every relayed message
    names its room; after leaving the first room, the earliest joined one left is first."""
    r1, r2, r3 = rid(), rid(), rid()
    alice = await connect(pair.a, "alice", r1)
    await alice.join_room(r2)
    await alice.join_room(r3)
    watchers = {room: await connect(pair.b, f"w{n}", room) for n, room in enumerate((r1, r2, r3))}
    for _ in range(3):
        await alice.recv_topic("presence.join")
    await alice.send({"topic": "chat", "payload": "to r2", "room": r2, "id": 1})
    got = await alice.recv()
    assert got["room"] == r2
    assert got["from"] == "alice"
    await alice.acked(1)
    await alice.send({"topic": "chat", "payload": "to first", "id": 2})
    assert (await alice.recv())["room"] == r1
    await alice.acked(2)
    assert (await watchers[r2].recv_topic("chat"))["payload"] == "to r2"
    assert (await watchers[r1].recv_topic("chat"))["payload"] == "to first"
    await alice.leave_room(r1)
    assert (await watchers[r1].recv_topic("presence.leave"))["payload"] == {"username": "alice"}
    await alice.send({"topic": "chat", "payload": "first is r2 now", "id": 3})
    assert (await alice.recv())["room"] == r2
    await alice.acked(3)
    assert (await watchers[r2].recv_topic("chat"))["payload"] == "first is r2 now"
    for watcher in watchers.values():
        await watcher.barrier()
    await alice.close()
    for watcher in watchers.values():
        await watcher.close()


async def test_frames_for_rooms_not_joined_answer_not_joined(pair: Pair) -> None:
    """A frame for a room the connection is not in, or without room on a connection in no
    room, answers `not_joined` and is not delivered; the connection stays."""
    room = rid()
    bob = await connect(pair.b, "bob", room)
    alice = await connect(pair.a, "alice")
    error = await alice.error({"topic": "chat", "payload": 1, "id": 1})
    assert error == {"code": "not_joined", "id": 1, "message": error["message"]}
    error = await alice.error({"topic": "chat", "payload": 1, "id": 2, "room": room})
    assert error["code"] == "not_joined"
    error = await alice.error({"topic": "presence", "payload": {}, "id": 3})
    assert error["code"] == "not_joined"
    error = await alice.error({"topic": "presence", "payload": {"roomID": room}, "id": 4})
    assert error["code"] == "not_joined"
    error = await alice.error({"topic": "chat", "payload": 1, "id": 5, "room": "a b"})
    assert error["code"] == "invalid_frame"
    await alice.barrier()
    await bob.barrier()
    await alice.close()
    await bob.close()


async def test_to_names_a_member_of_the_frames_room(pair: Pair) -> None:
    """`to` with `room` reaches that member of that room; a user who is only in another of
    the sender's rooms is `member_not_found` there."""
    r1, r2 = rid(), rid()
    alice = await connect(pair.a, "alice", r1)
    await alice.join_room(r2)
    bob = await connect(pair.b, "bob", r2)
    carol = await connect(pair.b, "carol", r1)
    for _ in range(2):
        await alice.recv_topic("presence.join")
    await alice.send({"topic": "dm", "payload": "hi bob", "room": r2, "to": "bob", "id": 1})
    got = await bob.recv_topic("dm")
    assert got["room"] == r2
    assert got["to"] == "bob"
    await alice.recv_topic("ack")
    error = await alice.error({"topic": "dm", "payload": "x", "room": r1, "to": "bob", "id": 2})
    assert error["code"] == "member_not_found"
    await carol.barrier()
    for client in (alice, bob, carol):
        await client.close()


async def test_presence_takes_a_room_and_names_it(pair: Pair) -> None:
    """`presence` with `{"roomID"}` lists that room; an empty payload the first room; both
    answers carry `room`."""
    r1, r2 = rid(), rid()
    alice = await connect(pair.a, "alice", r1)
    await alice.join_room(r2)
    bob = await connect(pair.b, "bob", r2)
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "presence", "payload": {"roomID": r2}, "id": 1})
    assert await alice.recv() == {
        "topic": "presence",
        "payload": {"members": ["alice", "bob"]},
        "room": r2,
    }
    await alice.acked(1)
    await alice.send({"topic": "presence", "payload": {}})
    assert await alice.recv() == {
        "topic": "presence",
        "payload": {"members": ["alice"]},
        "room": r1,
    }
    await alice.close()
    await bob.close()


async def test_too_many_rooms(
    start_server: Start, kind: str, redis_or_none: RedisProcess | None
) -> None:
    """Past --max-rooms-per-connection a room.join answers `too_many_rooms`; leaving one
    makes room for another; the connection stays open."""
    pair = deploy(kind, start_server, redis_or_none, "--max-rooms-per-connection", "2")
    r1, r2, r3 = rid(), rid(), rid()
    alice = await connect(pair.a, "alice", r1)
    await alice.join_room(r2)
    error = (await alice.join_room(r3, expect="error"))["payload"]
    assert error["code"] == "too_many_rooms"
    await alice.barrier()
    await alice.leave_room(r1)
    assert (await alice.join_room(r3))["room"] == r3
    await alice.close()


async def test_max_rooms_reads_its_environment_variable(start_server: Start) -> None:
    """ROOMCAST_MAX_ROOMS_PER_CONNECTION sets the limit like the flag."""
    server = start_server(env={"ROOMCAST_MAX_ROOMS_PER_CONNECTION": "1"})
    alice = await connect(server, "alice", rid())
    error = (await alice.join_room(rid(), expect="error"))["payload"]
    assert error["code"] == "too_many_rooms"
    await alice.close()


async def test_duplicate_username_under_reject(pair: Pair) -> None:
    """Under `reject` a room.join of a room where the username is already: `duplicate`."""
    room = rid()
    first = await connect(pair.b, "alice", room)
    second = await connect(pair.a, "alice")
    error = (await second.join_room(room, expect="error"))["payload"]
    assert error["code"] == "duplicate"
    await second.barrier()
    await first.barrier()
    await first.close()
    await second.close()


def token(**claims: object) -> str:
    body = {"sub": "alice", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


async def test_rooms_claim_applies_to_every_join(
    start_server: Start, kind: str, redis_or_none: RedisProcess | None
) -> None:
    """A token's `rooms` claim is checked at room.join: a room it does not grant answers
    `forbidden`, one it grants joins, and the connection stays open."""
    pair = deploy(kind, start_server, redis_or_none, "--jwt-secret", SECRET)
    alice = await connect(pair.a, "alice", token=token(rooms=["team-*"]))
    assert alice.welcome["payload"]["rooms"] == []  # type: ignore[attr-defined]
    error = (await alice.join_room("other", expect="error"))["payload"]
    assert error["code"] == "forbidden"
    await alice.barrier()
    assert (await alice.join_room("team-red"))["room"] == "team-red"
    await alice.close()


async def test_refreshed_token_must_grant_every_room(start_server: Start) -> None:
    """auth.refresh with a token that no longer grants one of the connection's rooms is
    refused with 4403."""
    server = start_server("--jwt-secret", SECRET)
    alice = await connect(server, "alice", "team-a", token=token(rooms=["team-*"]))
    await alice.join_room("team-b")
    fresh = token(rooms=["team-a"])
    await alice.send({"topic": "auth.refresh", "payload": {"token": fresh}, "id": 1})
    code, frames = await alice.closed()
    assert code == 4403
    assert frames[0]["payload"]["code"] == "forbidden"


async def test_unavailable_when_the_broker_is_down(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """With Redis gone, room.join answers `unavailable` and the connection stays open."""
    server = start_server("--broker", redis_server.url)
    alice = await connect(server, "alice")
    redis_server.stop()
    error = (await alice.join_room(rid(), expect="error"))["payload"]
    assert error["code"] == "unavailable"
    await alice.barrier()
    await alice.close()


async def test_kick_from_one_room_of_several(pair: Pair) -> None:
    """DELETE of a member in one of its rooms: `left` with reason kicked, the connection stays
    in its other rooms; kicked from its last room it is closed with 4499."""
    r1, r2 = rid(), rid()
    alice = await connect(pair.a, "alice", r1)
    await alice.join_room(r2)
    bob = await connect(pair.b, "bob", r2)
    await alice.recv_topic("presence.join")
    async with httpx.AsyncClient(base_url=pair.b.url) as http:
        response = await http.delete(f"/api/v1/rooms/{r2}/members/alice")
        assert response.status_code == 204
        assert await alice.recv() == {
            "topic": "left",
            "room": r2,
            "payload": {"roomID": r2, "reason": "kicked"},
        }
        assert (await bob.recv_topic("presence.leave"))["payload"] == {"username": "alice"}
        members = await http.get(f"/api/v1/rooms/{r2}/members")
        assert members.json() == {"members": ["bob"]}
        await alice.send({"topic": "chat", "payload": "still here", "id": 1})
        assert (await alice.recv())["room"] == r1
        await alice.acked(1)
        await bob.barrier()
        response = await http.delete(f"/api/v1/rooms/{r1}/members/alice")
        assert response.status_code == 204
    code, frames = await alice.closed()
    assert code == 4499
    assert frames[-1]["payload"]["code"] == "kicked"
    await bob.close()


async def test_room_topics_are_built_in_and_never_relayed(pair: Pair) -> None:
    """A `room.*` topic the server does not know answers `unknown_topic`; nothing is relayed."""
    room = rid()
    alice = await connect(pair.a, "alice", room)
    bob = await connect(pair.b, "bob", room)
    await alice.recv_topic("presence.join")
    error = await alice.error({"topic": "room.whatever", "payload": {}, "id": 1})
    assert error["code"] == "unknown_topic"
    await bob.barrier()
    await alice.close()
    await bob.close()


async def test_interleaved_traffic_in_fifty_rooms_stays_in_its_room(
    start_server: Start, redis_server: RedisProcess
) -> None:
    """Two nodes, 50 rooms, clients each in a different set of rooms, everyone publishing at
    once: every client gets exactly the messages of its rooms, each once, in offset order."""
    pair = deploy("redis", start_server, redis_server)
    rooms = [rid("m") for _ in range(50)]
    clients: list[tuple[RoomsClient, list[str]]] = []
    for n in range(10):
        mine = rooms[n::5] + rooms[n % 5 : n % 5 + 3]  # overlapping sets of 13 rooms
        mine = list(dict.fromkeys(mine))
        node = pair.a if n % 2 else pair.b
        client = await connect(node, f"u{n}")
        for room in mine:
            await client.join_room(room)
        clients.append((client, mine))
    members = {
        room: {f"u{n}" for n, (_, mine) in enumerate(clients) if room in mine} for room in rooms
    }
    per_client = 20

    async def publish(n: int, client: RoomsClient, mine: list[str]) -> None:
        for k in range(per_client):
            room = mine[k % len(mine)]
            await client.send({"topic": "chat", "payload": [n, k], "room": room})

    async def collect(client: RoomsClient, mine: list[str], expected: int) -> list[dict]:
        got: list[dict] = []
        async with asyncio.timeout(30):
            while len(got) < expected:
                frame = await client.recv(30)
                if frame["topic"] == "chat":
                    got.append(frame)
        return got

    sent: dict[str, list[tuple[int, int]]] = {room: [] for room in rooms}
    for n, (_, mine) in enumerate(clients):
        for k in range(per_client):
            sent[mine[k % len(mine)]].append((n, k))
    expected = [sum(len(sent[room]) for room in mine) for _, mine in clients]
    # Presence frames of later joiners are read and skipped by `collect`.
    results = await asyncio.gather(
        *(publish(n, c, mine) for n, (c, mine) in enumerate(clients)),
        *(collect(c, mine, e) for (c, mine), e in zip(clients, expected, strict=True)),
    )
    for (client, mine), got in zip(clients, results[len(clients) :], strict=True):
        assert {f["room"] for f in got} <= set(mine)
        for room in mine:
            offsets = [f["offset"] for f in got if f["room"] == room]
            assert offsets == list(range(1, len(sent[room]) + 1)), room
            payloads = sorted(tuple(f["payload"]) for f in got if f["room"] == room)
            assert payloads == sorted(sent[room])
        await client.barrier()
    assert all(members[room] for room in rooms if sent[room])
    for client, _ in clients:
        await client.close()


async def test_resume_of_several_rooms_while_publishing(
    start_server: Start, kind: str, redis_or_none: RedisProcess | None
) -> None:
    """A client that drops and comes back resumes three rooms at once (URL room with since,
    the others with room.join since+epoch) while publishers keep publishing: per room, every
    offset once, in order."""
    # Publishers go as fast as acks come: past the default frame rate, and far more history
    # than one reconnect needs.
    flags = ("--history-size", "100000", "--rate-limit", "off")
    pair = deploy(kind, start_server, redis_or_none, *flags)
    rooms = [rid("z") for _ in range(3)]
    publishers = [await connect(pair.b, f"p{n}", room) for n, room in enumerate(rooms)]
    stop = asyncio.Event()

    async def keep_publishing(client: RoomsClient) -> int:
        count = 0
        while not stop.is_set():
            await client.send({"topic": "chat", "payload": count, "id": count})
            await client.recv_topic("ack")
            count += 1
        return count

    seen: dict[str, list[int]] = {room: [] for room in rooms}
    epochs: dict[str, str] = {}
    tasks = [asyncio.ensure_future(keep_publishing(p)) for p in publishers]

    async def read(client: RoomsClient, more: int) -> None:
        """Record chat offsets per room until each room got `more` new ones."""
        goal = {room: len(seen[room]) + more for room in rooms}
        async with asyncio.timeout(20):
            while any(len(seen[room]) < goal[room] for room in rooms):
                frame = await client.recv(20)
                if frame["topic"] == "chat":
                    seen[frame["room"]].append(frame["offset"])

    async def join(client: RoomsClient, room: str, **fields: object) -> dict[str, Any]:
        """room.join while other rooms' messages keep arriving (recorded meanwhile)."""
        await client.send({"topic": "room.join", "payload": {"roomID": room, **fields}, "id": room})
        joined: dict[str, Any] = {}
        async with asyncio.timeout(20):
            while True:
                frame = await client.recv(20)
                if frame["topic"] == "chat":
                    seen[frame["room"]].append(frame["offset"])
                elif frame["topic"] == "joined":
                    joined = frame
                elif frame["topic"] == "ack" and frame["payload"]["id"] == room:
                    return joined

    for round_ in range(3):
        if round_ == 0:
            alice = await connect(pair.a, "alice", rooms[0])
            epochs[rooms[0]] = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
            for room in rooms[1:]:
                epochs[room] = (await join(alice, room))["payload"]["epoch"]
        else:
            last = {room: seen[room][-1] if seen[room] else 0 for room in rooms}
            alice = await connect(
                pair.a, "alice", rooms[0], since=last[rooms[0]], epoch=epochs[rooms[0]]
            )
            assert alice.welcome["payload"]["recovered"] is True  # type: ignore[attr-defined]
            for room in rooms[1:]:
                joined = await join(alice, room, since=last[room], epoch=epochs[room])
                assert joined["payload"]["recovered"] is True
        await read(alice, 5)
        await alice.close()
    stop.set()
    counts = await asyncio.gather(*tasks)
    assert all(c > 5 for c in counts)
    for room in rooms:
        offsets = seen[room]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), room
    for publisher in publishers:
        await publisher.close()
