"""The first steps a user takes: start the server, join a room, chat."""

from __future__ import annotations

from tests.harness import Client, ServerProcess


async def test_two_members_chat(server: ServerProcess) -> None:
    """A relayed message reaches both members with room, from and offset 1."""
    alice = await Client.connect(server.ws_url, "alice", "r1")
    welcome = await alice.join()
    assert welcome["payload"]["members"] == ["alice"]
    bob = await Client.connect(server.ws_url, "bob", "r1")
    await bob.join()
    assert (await alice.recv()) == {
        "topic": "presence.join",
        "payload": {"username": "bob"},
        "room": "r1",
    }
    await alice.send({"topic": "chat", "payload": {"text": "hi"}, "id": 1})
    expected = {
        "topic": "chat",
        "payload": {"text": "hi"},
        "room": "r1",
        "from": "alice",
        "offset": 1,
    }
    assert await alice.recv() == expected
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    assert await bob.recv() == expected
    await alice.close()
    await bob.close()
