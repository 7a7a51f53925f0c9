"""The Python client's API for protocol section 10 against a real server: a backlog at connect
and on join, history pages, echo control and ephemeral topics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from roomcast.client import Client, HistoryPage, HttpApi, RequestError
from tests.harness import ServerProcess
from tests.integration.client_support import Collector

APP = "tests.integration.ephemeral_app"


@pytest.fixture(scope="module")
def app() -> Iterator[ServerProcess]:
    """One server where `typing` is ephemeral in every room; each test has rooms of its own."""
    server = ServerProcess(["--port", "0"], module=APP)
    try:
        yield server.start()
    finally:
        server.stop()


def rid() -> str:
    """A room id no other test uses."""
    return f"ch-{uuid.uuid4().hex[:8]}"


async def test_backlog_at_connect_and_on_join_come_once_then_live(app: ServerProcess) -> None:
    """`backlog=3` at connect replays the URL room's last three messages, `join(backlog=2)`
    another room's last two; then live messages; each once, in order."""
    r1, r2 = rid(), rid()
    api = HttpApi(app.url)
    for n in range(5):
        api.publish(r1, "chat", n)
        api.publish(r2, "chat", n * 10)
    async with Client(app.url, username="alice", room=r1, backlog=3) as alice:
        assert [(await alice.recv(timeout=5)).offset for _ in range(3)] == [3, 4, 5]
        other = await alice.join(r2, backlog=2)
        seen = Collector()
        other.on("chat")(seen)
        assert [f.payload for f in await seen.wait(2)] == [30, 40]
        api.publish(r1, "chat", "live")
        live = await alice.recv(timeout=5)
        assert (live.payload, live.offset) == ("live", 6)
        assert alice.offset == 6


def test_backlog_needs_a_room_and_no_since() -> None:
    """A backlog without a room, with `since`, or negative is refused before connecting."""
    for kwargs in ({"room": None}, {"since": 1, "epoch": "e"}, {"backlog": -1}):
        with pytest.raises(ValueError, match="backlog"):
            Client("ws://127.0.0.1:1", username="a", **{"room": "r", "backlog": 2, **kwargs})


async def test_history_pages_back_oldest_first(app: ServerProcess) -> None:
    """history() gives the latest page, `before` the one before it; a joined room's handle
    pages its own room; refusals are RequestError with the server's code."""
    r1, r2 = rid(), rid()
    api = HttpApi(app.url)
    for n in range(7):
        api.publish(r1, "chat", n)
    api.publish(r2, "news", "only")
    async with Client(app.url, username="alice", room=r1) as alice:
        latest = await alice.history(limit=3)
        assert isinstance(latest, HistoryPage)
        assert latest.epoch == alice.epoch
        assert [(f.payload, f.offset, f.room) for f in latest.messages] == [
            (4, 5, r1),
            (5, 6, r1),
            (6, 7, r1),
        ]
        older = await alice.history(before=latest.messages[0].offset, limit=10)
        assert [f.offset for f in older.messages] == [1, 2, 3, 4]
        assert (await alice.history(before=1)).messages == ()
        news = await alice.join(r2)
        assert [f.payload for f in (await news.history()).messages] == ["only"]
        with pytest.raises(RequestError) as refused:
            await alice.history(limit=0)
        assert refused.value.wire_code == "bad_request"
        with pytest.raises(RequestError) as refused:
            await alice.history(room=rid())
        assert refused.value.wire_code == "not_joined"
        # the history answers went to history(), not to iteration
        assert await alice.request("chat", "after") == 8
        assert (await alice.recv(timeout=5)).payload == "after"


async def test_echo_false_and_an_ephemeral_topic(app: ServerProcess) -> None:
    """`echo=False`: the sender gets the offset but not the message; an ephemeral topic comes
    without offset and its request returns None."""
    room = rid()
    bob_seen = Collector()
    async with (
        Client(app.url, username="alice", room=room) as alice,
        Client(app.url, username="bob", room=room) as bob,
    ):
        alice_seen = Collector()
        for client, seen in ((alice, alice_seen), (bob, bob_seen)):
            client.on("chat")(seen)
            client.on("typing")(seen)
        assert await alice.request("chat", "quiet", echo=False) == 1
        assert await alice.request("typing", {"on": True}) is None
        await alice.send("chat", "loud")
        frames = await bob_seen.wait(3)
        assert [(f.topic, f.payload, f.offset) for f in frames] == [
            ("chat", "quiet", 1),
            ("typing", {"on": True}, None),
            ("chat", "loud", 2),
        ]
        own = await alice_seen.wait(2)
        assert [(f.topic, f.offset) for f in own] == [("typing", None), ("chat", 2)]
        assert alice.offset == 2
