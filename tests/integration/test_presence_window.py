"""`--presence-window`: presence frames wait to share one write per member with the frames
after them, and keep their place among the connection's frames (PROTOCOL sections 3 and 8).

The window under test is 1 s, far longer than any of these exchanges: a frame that may not
wait (a message, a pong, a frame of another room) must take the presence frames held before it
along, in order, instead of overtaking them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Client, ServerProcess, running_server


@pytest.fixture(scope="module", params=["1", "0"], ids=["window-1s", "no-window"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server whose presence frames wait up to 1 s (or not at all)."""
    with running_server("--presence-window", str(request.param)) as process:
        yield process


def presence(kind: str, room: str, username: str) -> dict[str, object]:
    return {"topic": f"presence.{kind}", "payload": {"username": username}, "room": room}


async def test_presence_frames_arrive_without_other_traffic(
    server: ServerProcess, room: str
) -> None:
    """With nothing after them, presence frames still go out (at the window's end)."""
    alice = await Client.connect(server.ws_url, "alice", room)
    await alice.join()
    bob = await Client.connect(server.ws_url, "bob", room)
    await bob.join()
    assert await alice.recv() == presence("join", room, "bob")
    await bob.close()
    assert await alice.recv() == presence("leave", room, "bob")
    await alice.close()


async def test_a_message_takes_the_presence_before_it_along(
    server: ServerProcess, room: str
) -> None:
    """A join announced and then a message from the joiner: every member gets the
    presence.join first, then the message, whatever the window."""
    alice = await Client.connect(server.ws_url, "alice", room)
    await alice.join()
    carol = await Client.connect(server.ws_url, "carol", room)
    await carol.join()
    assert await alice.recv() == presence("join", room, "carol")
    bob = await Client.connect(server.ws_url, "bob", room)
    await bob.join()
    await bob.send({"topic": "chat", "payload": "hi"})
    chat = {"topic": "chat", "payload": "hi", "room": room, "from": "bob", "offset": 1}
    for member in (alice, carol):
        assert await member.recv() == presence("join", room, "bob")
        assert await member.recv() == chat
    assert await bob.recv() == chat
    for client in (alice, bob, carol):
        await client.close()


async def test_joins_and_leaves_keep_their_order(server: ServerProcess, room: str) -> None:
    """Several joins and leaves within one window reach a member in the order they
    happened, and a pong after them comes after them."""
    alice = await Client.connect(server.ws_url, "alice", room)
    await alice.join()
    others = []
    for name in ("bob", "carol", "dave"):
        other = await Client.connect(server.ws_url, name, room)
        await other.join()
        others.append(other)
    await others[1].close()
    await alice.send({"topic": "ping", "payload": "p"})
    assert [await alice.recv() for _ in range(5)] == [
        presence("join", room, "bob"),
        presence("join", room, "carol"),
        presence("join", room, "dave"),
        presence("leave", room, "carol"),
        {"topic": "pong", "payload": "p"},
    ]
    for client in (alice, others[0], others[2]):
        await client.close()


async def test_another_rooms_frame_does_not_overtake_presence(
    server: ServerProcess, room: str, room2: str
) -> None:
    """A member of two rooms: a message in the second room comes after a presence.join of
    the first that was announced before it."""
    alice = await Client.connect(server.ws_url, "alice", room)
    await alice.join()
    await alice.send({"topic": "room.join", "payload": {"roomID": room2}, "id": 1})
    assert (await alice.recv())["topic"] == "joined"
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1}}
    bob = await Client.connect(server.ws_url, "bob", room)
    await bob.join()
    with server.http() as http:
        answer = http.post(f"/api/v1/rooms/{room2}/messages", json={"topic": "n", "payload": 1})
    assert answer.status_code == 202
    assert await alice.recv() == presence("join", room, "bob")
    message = await alice.recv()
    assert (message["topic"], message["room"]) == ("n", room2)
    await bob.close()
    await alice.close()
