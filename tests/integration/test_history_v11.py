"""Ephemeral topics, backlog, history paging and echo control (docs/protocol.md, section 10),
on one memory:// node and on two nodes sharing Redis: every line of those bullets, each bad
value with its error and the connection still open."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import Client, RedisProcess, ServerProcess
from tests.integration.rooms_support import Pair, RoomsClient, connect

APP = "tests.integration.ephemeral_app"
"""A server where `typing` and `cursor` are ephemeral in every room."""

Deploy = Callable[..., Pair]


def rid() -> str:
    """A room id no other test uses."""
    return f"h-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def deploy_app(kind: str, redis_or_none: RedisProcess | None) -> Iterator[Deploy]:
    """Start the ephemeral app: one memory:// node (`a` is `b`), or two nodes on Redis."""
    servers: list[ServerProcess] = []

    def start(*flags: str) -> Pair:
        def one(*more: str) -> ServerProcess:
            server = ServerProcess(["--port", "0", *more, *flags], module=APP)
            servers.append(server)
            return server.start()

        if redis_or_none is None:
            server = one()
            return Pair(server, server, kind)
        url = redis_or_none.url
        return Pair(
            one("--broker", url, "--node-id", "a"), one("--broker", url, "--node-id", "b"), kind
        )

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nodes(deploy_app: Deploy) -> Pair:
    """Two nodes of the ephemeral app with the default flags."""
    return deploy_app()


async def chat(client: RoomsClient, payload: Any, frame_id: int, **fields: Any) -> int:
    """Send a chat message with an id; return the offset of its ack (other frames skipped)."""
    await client.send({"topic": "chat", "payload": payload, "id": frame_id, **fields})
    ack = await client.recv_until(lambda f: f["topic"] == "ack" and f["payload"]["id"] == frame_id)
    return int(ack["payload"]["offset"])


async def history(client: RoomsClient, frame_id: int, **payload: Any) -> dict[str, Any]:
    """Send `room.history`; return its answer, after checking that the ack follows it."""
    await client.send({"topic": "room.history", "payload": payload, "id": frame_id})
    answer = await client.recv_until(lambda f: f["topic"] in ("room.history", "error"))
    assert answer["topic"] == "room.history", answer
    await client.acked(frame_id)
    return answer


# ephemeral topics


async def test_ephemeral_frame_has_room_and_from_but_no_offset(nodes: Pair) -> None:
    """An ephemeral topic is delivered like a room message (room, from), on every node, with
    no offset; its ack has no offset; the room's offset does not move."""
    room = rid()
    bob = await connect(nodes.b, "bob", room)
    alice = await connect(nodes.a, "alice", room)
    await bob.recv_topic("presence.join")
    await alice.send({"topic": "typing", "payload": {"on": True}, "id": 1})
    own = {"topic": "typing", "payload": {"on": True}, "room": room, "from": "alice"}
    # The ack does not wait for the sender's own copy (it travels through the broker).
    answers = [await alice.recv(), await alice.recv()]
    assert sorted(answers, key=lambda f: f["topic"]) == [
        {"topic": "ack", "payload": {"id": 1}},
        own,
    ]
    assert await bob.recv() == own
    await bob.send({"topic": "room.join", "payload": {"roomID": room}, "id": 2})
    assert (await bob.recv())["payload"]["offset"] == 0
    await bob.acked(2)
    await alice.close()
    await bob.close()


async def test_offsets_stay_consecutive_around_ephemeral_frames(nodes: Pair) -> None:
    """Stored messages interleaved with ephemeral ones take consecutive offsets; every member
    sees the ephemeral frames between them, in the order they were sent."""
    room = rid()
    bob = await connect(nodes.b, "bob", room)
    alice = await connect(nodes.a, "alice", room)
    await bob.recv_topic("presence.join")
    offsets = []
    for n in range(3):
        offsets.append(await chat(alice, n, 10 + n))
        await alice.send({"topic": "cursor", "payload": n, "id": 20 + n})
        await alice.recv_until(lambda f, n=n: f["topic"] == "ack" and f["payload"]["id"] == 20 + n)
    assert offsets == [1, 2, 3]
    seen = [await bob.recv() for _ in range(6)]
    assert [(f["topic"], f["payload"], f.get("offset")) for f in seen] == [
        ("chat", 0, 1),
        ("cursor", 0, None),
        ("chat", 1, 2),
        ("cursor", 1, None),
        ("chat", 2, 3),
        ("cursor", 2, None),
    ]
    await bob.barrier()
    await alice.close()
    await bob.close()


async def test_ephemeral_frames_are_not_kept_replayed_or_paged(nodes: Pair) -> None:
    """Ephemeral frames are in no history: not in GET .../history, not in a backlog, not
    in a recovery, not in room.history."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    for n in range(3):
        await alice.send({"topic": "typing", "payload": n})
        await chat(alice, n, n + 1)
    with nodes.b.http() as http:
        body = http.get(f"/api/v1/rooms/{room}/history").json()
    assert [m["topic"] for m in body["messages"]] == ["chat"] * 3
    late = await connect(nodes.b, "late", room, backlog=10)
    assert [(await late.recv())["offset"] for _ in range(3)] == [1, 2, 3]
    await late.barrier()
    resumed = await connect(nodes.b, "resumed", room, since=0, epoch=epoch)
    assert resumed.welcome["payload"]["recovered"] is True  # type: ignore[attr-defined]
    assert [(await resumed.recv())["offset"] for _ in range(3)] == [1, 2, 3]
    await resumed.barrier()
    page = await history(resumed, 9)
    assert [m["topic"] for m in page["payload"]["messages"]] == ["chat"] * 3
    for client in (alice, late, resumed):
        await client.close()


async def test_ephemeral_burst_during_recovery_replays_stored_messages_only(
    nodes: Pair,
) -> None:
    """While a member is away and while it recovers, another member sends a burst of
    ephemeral frames between stored messages: the recovered member gets every stored message,
    in order, and no ephemeral frame before its replay ends."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    bob = await connect(nodes.b, "bob", room)
    await alice.recv_topic("presence.join")
    last = await chat(alice, "before", 1)
    await bob.recv_topic("chat")
    await bob.close()
    await alice.recv_topic("presence.leave")
    for n in range(40):
        await alice.send({"topic": "typing", "payload": n})
        if n % 4 == 0:
            await alice.send({"topic": "chat", "payload": n})
    offset = await chat(alice, "last stored", 99)
    stop = asyncio.Event()

    async def burst() -> int:
        """Ephemeral frames one after the other (each acked) until bob has recovered."""
        n = 0
        while not stop.is_set():
            n += 1
            await alice.send({"topic": "cursor", "payload": n, "id": f"c{n}"})
            await alice.recv_until(
                lambda f, want=f"c{n}": f["topic"] == "ack" and f["payload"]["id"] == want
            )
        return n

    bursting = asyncio.create_task(burst())
    bob = await connect(nodes.b, "bob", room, since=last, epoch=epoch)
    welcome = bob.welcome["payload"]  # type: ignore[attr-defined]
    assert welcome["recovered"] is True
    assert welcome["offset"] >= offset
    replay = [await bob.recv() for _ in range(welcome["offset"] - last)]
    assert [f["topic"] for f in replay] == ["chat"] * len(replay)
    assert [f["offset"] for f in replay] == list(range(last + 1, welcome["offset"] + 1))
    assert [f["payload"] for f in replay] == [*range(0, 40, 4), "last stored"]
    stop.set()
    assert await bursting > 0
    await alice.send({"topic": "chat", "payload": "live", "id": 100})
    live = await bob.recv_until(lambda f: f["topic"] == "chat")
    assert (live["payload"], live["offset"]) == ("live", welcome["offset"] + 1)
    await alice.close()
    await bob.close()


async def test_ephemeral_frame_to_one_member(nodes: Pair) -> None:
    """An ephemeral frame with `to` reaches that member only (with `to`, no offset); to a
    member connected nowhere it answers `member_not_found`."""
    room = rid()
    bob = await connect(nodes.b, "bob", room)
    carol = await connect(nodes.b, "carol", room)
    alice = await connect(nodes.a, "alice", room)
    await bob.recv_topic("presence.join")
    await bob.recv_topic("presence.join")
    await carol.recv_topic("presence.join")
    await alice.send({"topic": "typing", "payload": 1, "to": "bob", "id": 1})
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1}}
    assert await bob.recv() == {
        "topic": "typing",
        "payload": 1,
        "room": room,
        "from": "alice",
        "to": "bob",
    }
    error = await alice.error({"topic": "typing", "payload": 1, "to": "nobody", "id": 2})
    assert (error["code"], error["id"]) == ("member_not_found", 2)
    await chat(alice, "after", 3)
    assert (await carol.recv())["payload"] == "after"
    await carol.barrier()
    for client in (alice, bob, carol):
        await client.close()


# backlog


async def test_connect_with_backlog_replays_the_last_messages(nodes: Pair) -> None:
    """`&backlog=N` at connect: the welcome, then the last N retained messages, gap-free and
    in order, then live ones; the welcome has no `recovered`."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    for n in range(6):
        await chat(alice, n, n + 1)
    bob = await connect(nodes.b, "bob", room, backlog=4)
    welcome = bob.welcome["payload"]  # type: ignore[attr-defined]
    assert welcome["offset"] == 6
    assert "recovered" not in welcome
    replay = [await bob.recv() for _ in range(4)]
    assert [(f["offset"], f["payload"], f["room"]) for f in replay] == [
        (3, 2, room),
        (4, 3, room),
        (5, 4, room),
        (6, 5, room),
    ]
    await chat(alice, "live", 9)
    live = await bob.recv()
    assert (live["offset"], live["payload"]) == (7, "live")
    await alice.close()
    await bob.close()


async def test_backlog_leaves_out_messages_to_other_members(nodes: Pair) -> None:
    """A backlog is the room's last N retained messages: of those, messages `to` another
    member are not sent to the joiner, messages `to` it are."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    carol = await connect(nodes.a, "carol", room)
    bob = await connect(nodes.b, "bob", room)
    await chat(alice, "all", 1)
    await chat(alice, "to bob", 2, to="bob")
    await chat(alice, "to carol", 3, to="carol")
    await chat(alice, "all again", 4)
    await bob.close()
    await alice.recv_until(lambda f: f["topic"] == "presence.leave")
    bob = await connect(nodes.b, "bob", room, backlog=3)
    replay = [await bob.recv() for _ in range(2)]
    assert [(f["payload"], f["offset"]) for f in replay] == [("to bob", 2), ("all again", 4)]
    await bob.barrier()
    for client in (alice, bob, carol):
        await client.close()


async def test_backlog_is_bounded_by_what_is_retained(deploy_app: Deploy) -> None:
    """A backlog beyond what the room retains (or beyond --history-size) replays what is
    retained; `backlog=0` replays nothing; `room.join` with a backlog likewise."""
    nodes = deploy_app("--history-size", "5")
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    for n in range(8):
        await chat(alice, n, n + 1)
    bob = await connect(nodes.b, "bob", room, backlog=1000)
    assert [(await bob.recv())["offset"] for _ in range(5)] == [4, 5, 6, 7, 8]
    await bob.barrier()
    carol = await connect(nodes.b, "carol", room, backlog=0)
    await carol.barrier()
    dave = await connect(nodes.b, "dave")
    joined = await dave.join_room(room, backlog=2**62, ack=False)
    assert joined["payload"]["offset"] == 8
    assert [(await dave.recv())["offset"] for _ in range(5)] == [4, 5, 6, 7, 8]
    await dave.acked(dave.last_id)
    for client in (alice, bob, carol, dave):
        await client.close()


async def test_a_backlog_longer_than_the_history_replays_all_of_it(nodes: Pair) -> None:
    """A backlog within --history-size but past what the room retains replays every
    retained message, at connect and by `room.join`."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    for n in range(3):
        await chat(alice, n, n + 1)
    for backlog in (4, 5, 6):
        bob = await connect(nodes.b, "bob", room, backlog=backlog)
        assert [(await bob.recv())["offset"] for _ in range(3)] == [1, 2, 3]
        await bob.barrier()
        await bob.close()
        await alice.recv_until(lambda f: f["topic"] == "presence.leave")
    carol = await connect(nodes.b, "carol")
    joined = await carol.join_room(room, backlog=5, ack=False)
    assert joined["payload"]["offset"] == 3
    assert [(await carol.recv())["offset"] for _ in range(3)] == [1, 2, 3]
    await carol.acked(carol.last_id)
    await alice.close()
    await carol.close()


@pytest.mark.parametrize(
    "params",
    [
        {"backlog": "-1"},
        {"backlog": "x"},
        {"backlog": "1.5"},
        {"backlog": ""},
        {"backlog": "99999999999999999999"},
        {"backlog": "3", "since": "1", "epoch": "e"},
    ],
)
async def test_bad_backlog_at_connect_is_refused_with_4400(
    shared_server: ServerProcess, params: dict[str, str]
) -> None:
    """A backlog that is not a non-negative 64-bit integer, or one with `since`, is refused:
    one `bad_request` error frame, then close 4400."""
    client = await Client.connect(shared_server.ws_url, "alice", rid(), **params)
    code, frames = await client.closed()
    assert code == 4400
    assert [f["payload"]["code"] for f in frames] == ["bad_request"]
    assert "backlog" in frames[0]["payload"]["message"]


async def test_backlog_without_room_is_refused_with_4400(shared_server: ServerProcess) -> None:
    """`&backlog=N` on a connection without `roomID` is a bad request (4400)."""
    client = await Client.connect(shared_server.ws_url, "alice", backlog="3")
    code, frames = await client.closed()
    assert code == 4400
    assert frames[0]["payload"]["code"] == "bad_request"


async def test_bad_backlog_in_room_join_is_bad_request(shared_server: ServerProcess) -> None:
    """room.join with a negative, huge, fractional, boolean or string backlog, or one with
    `since`: `bad_request` each, and the connection stays."""
    alice = await connect(shared_server, "alice")
    bad = [-1, 2**63, 1.5, True, "3", [3]]
    for n, backlog in enumerate(bad):
        payload = {"roomID": rid(), "backlog": backlog}
        error = await alice.error({"topic": "room.join", "payload": payload, "id": n})
        assert (error["code"], error["id"]) == ("bad_request", n), backlog
        assert "backlog" in error["message"]
    payload = {"roomID": rid(), "backlog": 2, "since": 1, "epoch": "e"}
    error = await alice.error({"topic": "room.join", "payload": payload, "id": "s"})
    assert error["code"] == "bad_request"
    await alice.join_room(rid(), backlog=0)
    await alice.close()


# history paging


async def test_room_history_defaults_to_the_latest_fifty(nodes: Pair) -> None:
    """room.history with an empty payload: the first room's latest 50 retained messages,
    oldest first, exactly as members received them, with the epoch; then the ack."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    epoch = alice.welcome["payload"]["epoch"]  # type: ignore[attr-defined]
    received = []
    for n in range(60):
        await alice.send({"topic": "chat", "payload": {"n": n}})
        received.append(await alice.recv())
    bob = await connect(nodes.b, "bob", room)
    answer = await history(bob, 1)
    assert set(answer) == {"topic", "room", "payload"}
    assert answer["room"] == room
    assert answer["payload"] == {"epoch": epoch, "messages": received[10:]}
    await alice.close()
    await bob.close()


async def test_room_history_pages_back_with_before_and_limit(nodes: Pair) -> None:
    """`before` and `limit` page back through the history without gap or overlap, until an
    empty page; a page of a room other than the first names it with roomID."""
    room, first = rid(), rid()
    alice = await connect(nodes.a, "alice", room)
    for n in range(23):
        await chat(alice, n, n + 1)
    bob = await connect(nodes.b, "bob", first)
    await bob.join_room(room)
    offsets: list[int] = []
    before = None
    for n in range(5):
        payload: dict[str, Any] = {"roomID": room, "limit": 10}
        if before is not None:
            payload["before"] = before
        page = (await history(bob, 100 + n, **payload))["payload"]["messages"]
        if not page:
            break
        assert len(page) <= 10
        assert all(m["room"] == room for m in page)
        offsets[:0] = [m["offset"] for m in page]
        before = page[0]["offset"]
    assert offsets == list(range(1, 24))
    assert before == 1
    page = (await history(bob, 7, roomID=room, before=5, limit=100))["payload"]["messages"]
    assert [m["offset"] for m in page] == [1, 2, 3, 4]
    page = (await history(bob, 8, roomID=room, before=10**9, limit=1))["payload"]["messages"]
    assert [m["offset"] for m in page] == [23]
    page = (await history(bob, 9))["payload"]
    assert page["messages"] == []
    await alice.close()
    await bob.close()


async def test_room_history_leaves_out_messages_to_other_members(nodes: Pair) -> None:
    """Messages `to` another member are left out of a member's page (and it still holds
    `limit` messages when older ones exist); messages to the reader are in it."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    bob = await connect(nodes.b, "bob", room)
    carol = await connect(nodes.b, "carol", room)
    for n in range(4):
        await chat(alice, f"all {n}", 10 + n)
    for n in range(6):
        await chat(alice, f"to carol {n}", 20 + n, to="carol")
    await chat(alice, "to bob", 30, to="bob")
    page = (await history(bob, 1, limit=3))["payload"]["messages"]
    assert [m["payload"] for m in page] == ["all 2", "all 3", "to bob"]
    assert page[-1]["to"] == "bob"
    page = (await history(carol, 2, limit=7))["payload"]["messages"]
    assert [m["payload"] for m in page] == ["all 3", *(f"to carol {n}" for n in range(6))]
    for client in (alice, bob, carol):
        await client.close()


async def test_room_history_is_for_members_only(nodes: Pair) -> None:
    """room.history of a room the connection is not in, or on a connection in no room,
    answers `not_joined` and the connection stays open."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    await chat(alice, "secret", 1)
    bob = await connect(nodes.b, "bob")
    error = await bob.error({"topic": "room.history", "payload": {}, "id": 1})
    assert (error["code"], error["id"]) == ("not_joined", 1)
    await bob.join_room(rid())
    payload = {"roomID": room}
    error = await bob.error({"topic": "room.history", "payload": payload, "id": 2})
    assert (error["code"], error["id"]) == ("not_joined", 2)
    await bob.barrier()
    await alice.close()
    await bob.close()


@pytest.mark.parametrize(
    "payload",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -5},
        {"limit": "5"},
        {"limit": 2.5},
        {"limit": True},
        {"before": -1},
        {"before": "3"},
        {"before": 1.5},
        {"before": False},
        {"before": 2**63},
        {"roomID": ""},
        {"roomID": "a b"},
        {"roomID": 7},
        "r1",
        [],
        7,
    ],
)
async def test_bad_room_history_is_bad_request(shared_server: ServerProcess, payload: Any) -> None:
    """A bad limit (not 1-100), before (not a non-negative integer), roomID or payload:
    `bad_request` with the frame's id, and the connection stays."""
    room = rid()
    alice = await connect(shared_server, "alice", room)
    error = await alice.error({"topic": "room.history", "payload": payload, "id": 5})
    assert (error["code"], error["id"]) == ("bad_request", 5)
    answer = await history(alice, 6, limit=100, before=0)
    assert answer["payload"]["messages"] == []
    await alice.close()


# echo control


async def test_echo_false_is_not_delivered_back_to_its_sender(deploy_app: Deploy) -> None:
    """`"echo": false`: the sending connection does not get the message, its ack still has
    the offset; the other members and the sender's other connection (share) get it, and the
    next message comes back to the sender with the next offset."""
    nodes = deploy_app("--on-duplicate", "share")
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    alice_tab = await connect(nodes.b, "alice", room)
    bob = await connect(nodes.b, "bob", room)
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "chat", "payload": "quiet", "echo": False, "id": 1})
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    for other in (alice_tab, bob):
        frame = await other.recv_until(lambda f: f["topic"] == "chat")
        assert (frame["payload"], frame["offset"], frame["from"]) == ("quiet", 1, "alice")
    await alice.send({"topic": "chat", "payload": "loud", "echo": True, "id": 2})
    echoed = await alice.recv()
    assert (echoed["payload"], echoed["offset"]) == ("loud", 2)
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 2, "offset": 2}}
    page = (await history(alice, 3))["payload"]["messages"]
    assert [m["payload"] for m in page] == ["quiet", "loud"]
    for client in (alice, alice_tab, bob):
        await client.close()


async def test_echo_false_on_an_ephemeral_topic(nodes: Pair) -> None:
    """An ephemeral frame with `"echo": false` reaches the others, not its sender."""
    room = rid()
    alice = await connect(nodes.a, "alice", room)
    bob = await connect(nodes.b, "bob", room)
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "typing", "payload": 1, "echo": False, "id": 1})
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1}}
    assert (await bob.recv())["topic"] == "typing"
    await chat(alice, "next", 2)  # would come after an echo of the typing frame
    await alice.barrier()
    await alice.close()
    await bob.close()


@pytest.mark.parametrize("echo", ["no", 0, 1, None, {}])
async def test_bad_echo_is_invalid_frame(shared_server: ServerProcess, echo: Any) -> None:
    """`echo` other than true or false answers `invalid_frame` with the frame's id."""
    alice = await connect(shared_server, "alice", rid())
    error = await alice.error({"topic": "chat", "payload": 1, "echo": echo, "id": 4})
    assert (error["code"], error["id"]) == ("invalid_frame", 4)
    assert "echo" in error["message"]
    await alice.barrier()
    await alice.close()
