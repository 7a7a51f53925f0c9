"""PROTOCOL sections 2 and 3 on one node: relay, offsets, `to`, `id`, builtins, bad frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Client, ServerProcess


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    """The module's shared server (see conftest.py)."""
    return shared_server


async def joined(server: ServerProcess, room: str, *names: str) -> list[Client]:
    """Connect `names` to `room` in order; each earlier member has read the later joins."""
    clients: list[Client] = []
    for name in names:
        client = await Client.connect(server.ws_url, name, room)
        await client.join()
        for earlier in clients:
            assert await earlier.recv() == {
                "topic": "presence.join",
                "payload": {"username": name},
                "room": room,
            }
        clients.append(client)
    return clients


async def close_all(*clients: Client) -> None:
    for client in clients:
        await client.close()


async def test_relay_reaches_every_member_with_room_from_offset(
    server: ServerProcess, room: str
) -> None:
    """A relayed frame reaches every member, the sender included, with room, from and offset."""
    alice, bob, carol = await joined(server, room, "alice", "bob", "carol")
    await bob.send({"topic": "chat", "payload": {"text": "hi", "n": [1, 2.5, None, True]}})
    expected = {
        "topic": "chat",
        "payload": {"text": "hi", "n": [1, 2.5, None, True]},
        "room": room,
        "from": "bob",
        "offset": 1,
    }
    for client in (alice, bob, carol):
        assert await client.recv() == expected
    await close_all(alice, bob, carol)


async def test_offsets_increase_by_one_per_room(
    server: ServerProcess, room: str, room2: str
) -> None:
    """Offsets count 1, 2, 3... in each room independently, in the same order for everyone."""
    a1, b1 = await joined(server, room, "alice", "bob")
    (a2,) = await joined(server, room2, "alice")
    for n in range(5):
        await a1.send({"topic": "chat", "payload": n})
        await b1.send({"topic": "chat", "payload": -n})
    for n in range(3):
        await a2.send({"topic": "other", "payload": n})
    seen_a = [await a1.recv() for _ in range(10)]
    seen_b = [await b1.recv() for _ in range(10)]
    assert [f["offset"] for f in seen_a] == list(range(1, 11))
    assert seen_a == seen_b
    assert [f["payload"] for f in seen_a if f["from"] == "alice"] == [0, 1, 2, 3, 4]
    r2 = [await a2.recv() for _ in range(3)]
    assert [(f["offset"], f["payload"], f["room"]) for f in r2] == [
        (1, 0, room2),
        (2, 1, room2),
        (3, 2, room2),
    ]
    await a1.barrier()
    await close_all(a1, b1, a2)


async def test_to_delivers_only_to_the_target(server: ServerProcess, room: str) -> None:
    """A frame with `to` reaches only that member, with a `to` field and an offset."""
    alice, bob, carol = await joined(server, room, "alice", "bob", "carol")
    await alice.send({"topic": "dm", "payload": "psst", "to": "bob", "id": "m1"})
    assert await bob.recv() == {
        "topic": "dm",
        "payload": "psst",
        "room": room,
        "from": "alice",
        "to": "bob",
        "offset": 1,
    }
    assert await alice.recv() == {"topic": "ack", "payload": {"id": "m1", "offset": 1}}
    await alice.barrier()
    await carol.barrier()
    await bob.barrier()
    # The next room message takes the next offset, and carol sees it despite the gap.
    await carol.send({"topic": "chat", "payload": "all"})
    for client in (alice, bob, carol):
        assert (await client.recv())["offset"] == 2
    await close_all(alice, bob, carol)


async def test_to_absent_member_is_member_not_found(server: ServerProcess, room: str) -> None:
    """`to` a member not in the room answers error member_not_found with the id; no delivery."""
    alice, bob = await joined(server, room, "alice", "bob")
    await alice.send({"topic": "dm", "payload": 1, "to": "zed", "id": 9})
    frame = await alice.recv()
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == "member_not_found"
    assert frame["payload"]["id"] == 9
    await alice.barrier()
    await bob.barrier()
    await close_all(alice, bob)


@pytest.mark.parametrize("frame_id", [7, "abc", 0, -3, ""])
async def test_id_is_acked_once_with_offset(
    server: ServerProcess, frame_id: Any, room: str
) -> None:
    """A relayed frame with an id is answered by exactly one ack carrying the id and offset."""
    (alice,) = await joined(server, room, "alice")
    await alice.send({"topic": "chat", "payload": "x", "id": frame_id})
    assert (await alice.recv())["topic"] == "chat"
    assert await alice.recv() == {"topic": "ack", "payload": {"id": frame_id, "offset": 1}}
    await alice.barrier()
    await alice.close()


async def test_frame_without_id_gets_no_ack(server: ServerProcess, room: str) -> None:
    """A frame without an id gets no ack."""
    (alice,) = await joined(server, room, "alice")
    await alice.send({"topic": "chat", "payload": "x"})
    assert (await alice.recv())["topic"] == "chat"
    await alice.barrier()
    await alice.close()


async def test_ping_is_answered_with_pong(server: ServerProcess, room: str) -> None:
    """`ping` is answered with `pong` carrying the same payload (and an ack when it has id)."""
    (alice,) = await joined(server, room, "alice")
    payload = {"t": [1, "two", {"3": None}]}
    await alice.send({"topic": "ping", "payload": payload})
    assert await alice.recv() == {"topic": "pong", "payload": payload}
    await alice.send({"topic": "ping", "payload": 5, "id": 2})
    assert await alice.recv() == {"topic": "pong", "payload": 5}
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 2}}
    await alice.barrier()
    await alice.close()


async def test_presence_lists_members(server: ServerProcess, room: str, room2: str) -> None:
    """`presence` is answered with the room's member list."""
    alice, bob = await joined(server, room, "alice", "bob")
    (other,) = await joined(server, room2, "zed")
    await bob.send({"topic": "presence", "payload": {}})
    assert await bob.recv() == {
        "topic": "presence",
        "payload": {"members": ["alice", "bob"]},
        "room": room,
    }
    await bob.send({"topic": "presence", "payload": {}, "id": "p"})
    assert (await bob.recv())["topic"] == "presence"
    assert await bob.recv() == {"topic": "ack", "payload": {"id": "p"}}
    await bob.barrier()
    await close_all(alice, bob, other)


async def test_presence_join_and_leave(server: ServerProcess, room: str) -> None:
    """Members get presence.join when one joins and presence.leave when one leaves."""
    alice, bob = await joined(server, room, "alice", "bob")  # checks presence.join
    await bob.close()
    assert await alice.recv() == {
        "topic": "presence.leave",
        "payload": {"username": "bob"},
        "room": room,
    }
    await alice.send({"topic": "presence", "payload": {}})
    assert await alice.recv() == {
        "topic": "presence",
        "payload": {"members": ["alice"]},
        "room": room,
    }
    await alice.close()


async def test_joiner_gets_no_presence_join_for_itself(server: ServerProcess, room: str) -> None:
    """The joining member does not receive a presence.join about itself."""
    alice, bob = await joined(server, room, "alice", "bob")
    await bob.barrier()
    await close_all(alice, bob)


MALFORMED: dict[str, tuple[str, str]] = {
    "not json": ("{topic: chat", "invalid_json"),
    "empty text": ("", "invalid_json"),
    "trailing garbage": ('{"topic":"chat","payload":1} x', "invalid_json"),
    "array": ('[{"topic":"chat","payload":1}]', "invalid_frame"),
    "string": ('"chat"', "invalid_frame"),
    "number": ("42", "invalid_frame"),
    "null": ("null", "invalid_frame"),
    "topic missing": ('{"payload":1}', "invalid_frame"),
    "topic a number": ('{"topic":5,"payload":1}', "invalid_frame"),
    "topic null": ('{"topic":null,"payload":1}', "invalid_frame"),
    "topic empty": ('{"topic":"","payload":1}', "invalid_frame"),
    "topic 129 chars": ('{"topic":"' + "t" * 129 + '","payload":1}', "invalid_frame"),
    "topic reserved": ('{"topic":"$system","payload":1}', "invalid_frame"),
    "payload missing": ('{"topic":"chat"}', "invalid_frame"),
    "payload null": ('{"topic":"chat","payload":null}', "invalid_frame"),
    "id a float": ('{"topic":"chat","payload":1,"id":1.5}', "invalid_frame"),
    "id a bool": ('{"topic":"chat","payload":1,"id":true}', "invalid_frame"),
    "id an object": ('{"topic":"chat","payload":1,"id":{}}', "invalid_frame"),
    "id a list": ('{"topic":"chat","payload":1,"id":[1]}', "invalid_frame"),
    "to a number": ('{"topic":"chat","payload":1,"to":3}', "invalid_frame"),
    "to empty": ('{"topic":"chat","payload":1,"to":""}', "invalid_frame"),
    "to with space": ('{"topic":"chat","payload":1,"to":"a b"}', "invalid_frame"),
}


@pytest.mark.parametrize(("text", "code"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_frame_gets_error_and_stays_open(
    server: ServerProcess, text: str, code: str, room: str
) -> None:
    """A malformed frame is answered by one error frame with its code; the connection stays."""
    alice, bob = await joined(server, room, "alice", "bob")
    await alice.send(text)
    frame = await alice.recv()
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == code
    assert isinstance(frame["payload"]["message"], str)
    assert frame["payload"]["message"]
    assert "id" not in frame["payload"]
    await alice.barrier()
    await bob.barrier()
    await alice.send({"topic": "chat", "payload": "ok"})
    assert (await bob.recv())["payload"] == "ok"
    await close_all(alice, bob)


@pytest.mark.parametrize(
    "text",
    [
        '{"topic":"","payload":1,"id":4}',
        '{"topic":"$x","payload":1,"id":4}',
        '{"payload":1,"id":4}',
        '{"topic":"chat","id":4}',
        '{"topic":"chat","payload":null,"id":4}',
        '{"topic":"chat","payload":1,"to":"","id":4}',
    ],
)
async def test_error_carries_the_frame_id(server: ServerProcess, text: str, room: str) -> None:
    """An invalid frame with a readable id gets exactly one error carrying that id."""
    (alice,) = await joined(server, room, "alice")
    await alice.send(text)
    frame = await alice.recv()
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == "invalid_frame"
    assert frame["payload"]["id"] == 4
    await alice.barrier()
    await alice.close()


async def test_unknown_topic_without_relay(
    start_server: Callable[..., ServerProcess], room: str
) -> None:
    """With --relay false a topic without handler gets unknown_topic; builtins still work."""
    server = start_server("--relay", "false")
    alice, bob = await joined(server, room, "alice", "bob")
    await alice.send({"topic": "chat", "payload": 1, "id": 3})
    frame = await alice.recv()
    assert frame["topic"] == "error"
    assert frame["payload"]["code"] == "unknown_topic"
    assert frame["payload"]["id"] == 3
    await bob.barrier()
    await alice.barrier()
    await close_all(alice, bob)


async def test_api_message_comes_from_server(server: ServerProcess, room: str) -> None:
    """A message published through the HTTP API reaches members `from` $server."""
    alice, bob = await joined(server, room, "alice", "bob")
    with server.http() as http:
        response = http.post(
            f"/api/v1/rooms/{room}/messages", json={"topic": "news", "payload": {"a": 1}}
        )
    assert response.status_code == 202
    expected = {"topic": "news", "payload": {"a": 1}, "room": room, "from": "$server", "offset": 1}
    assert await alice.recv() == expected
    assert await bob.recv() == expected
    await close_all(alice, bob)
