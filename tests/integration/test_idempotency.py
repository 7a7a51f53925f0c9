"""Idempotent publish (docs/protocol.md, section 10): a frame's `key` and the HTTP API's
`Idempotency-Key`, per room, shared by both, on one memory:// node and across two Redis nodes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import RECV_TIMEOUT, RedisProcess, ServerProcess
from tests.integration.rooms_support import Pair, RoomsClient, Start, deploy
from tests.integration.rooms_support import connect as connect_client

Connect = Callable[..., Awaitable[RoomsClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect clients (reading their welcome); all are closed at the end of the test."""
    clients: list[RoomsClient] = []

    async def open_client(server: ServerProcess, username: str, room: str) -> RoomsClient:
        client = await connect_client(server, username, room)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def chat(n: int, frame_id: int, key: str | None, **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"topic": "chat", "payload": {"n": n}, "id": frame_id, **fields}
    if key is not None:
        frame["key"] = key
    return frame


async def answer(client: RoomsClient, frame_id: int) -> dict[str, Any]:
    """The ack or error of `frame_id` (room messages before it are skipped)."""
    return await client.recv_until(
        lambda f: f["topic"] in ("ack", "error") and f["payload"].get("id") == frame_id
    )


async def post(
    server: ServerProcess, room: str, body: dict[str, Any], key: str | None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    async with httpx.AsyncClient(base_url=server.url, timeout=RECV_TIMEOUT) as http:
        return await http.post(f"/api/v1/rooms/{room}/messages", json=body, headers=headers)


async def test_a_resent_frame_is_acked_with_the_first_offset(
    connect: Connect, pair: Pair, room: str
) -> None:
    """The same key from another node gets an ack with the first offset and
    `duplicate: true`; the room gets the message once."""
    alice = await connect(pair.a, "alice", room)
    bob = await connect(pair.b, "bob", room)
    carol = await connect(pair.b, "carol", room)
    await alice.send(chat(1, 1, "k-1"))
    first = await answer(alice, 1)
    assert first == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    await bob.send(chat(1, 7, "k-1"))
    again = await answer(bob, 7)
    assert again == {"topic": "ack", "payload": {"id": 7, "offset": 1, "duplicate": True}}
    await alice.send(chat(2, 2, "k-2"))
    assert (await answer(alice, 2))["payload"] == {"id": 2, "offset": 2}
    seen = [await carol.recv_topic("chat"), await carol.recv_topic("chat")]
    assert [f["offset"] for f in seen] == [1, 2]
    await carol.barrier()


async def test_a_duplicate_frame_without_id_is_dropped_silently(
    connect: Connect, pair: Pair, room: str
) -> None:
    """A keyed frame without `id` that repeats a key is neither published nor answered."""
    alice = await connect(pair.a, "alice", room)
    bob = await connect(pair.b, "bob", room)
    await alice.send({"topic": "chat", "payload": 1, "key": "k"})
    await alice.send({"topic": "chat", "payload": 2, "key": "k"})
    await alice.send({"topic": "chat", "payload": 3})
    assert [(await bob.recv_topic("chat"))["payload"] for _ in range(2)] == [1, 3]
    await bob.barrier()


async def test_keys_are_per_room(connect: Connect, pair: Pair, room: str, room2: str) -> None:
    """One key in two rooms publishes in each."""
    alice = await connect(pair.a, "alice", room)
    await alice.join_room(room2)
    await alice.send(chat(1, 1, "k"))
    await alice.send(chat(1, 2, "k", room=room2))
    assert (await answer(alice, 1))["payload"] == {"id": 1, "offset": 1}
    assert (await answer(alice, 2))["payload"] == {"id": 2, "offset": 1}


async def test_http_idempotency_key_answers_the_first_status(
    connect: Connect, pair: Pair, room: str
) -> None:
    """A repeated `Idempotency-Key` answers 202 with the first offset and `duplicate`."""
    bob = await connect(pair.b, "bob", room)
    body = {"topic": "news", "payload": "once"}
    first = await post(pair.a, room, body, "h-1")
    assert (first.status_code, first.json()) == (202, {"offset": 1})
    again = await post(pair.b, room, body, "h-1")
    assert (again.status_code, again.json()) == (202, {"offset": 1, "duplicate": True})
    other = await post(pair.b, room, body, None)
    assert other.json() == {"offset": 2}
    assert [(await bob.recv_topic("news"))["offset"] for _ in range(2)] == [1, 2]
    await bob.barrier()


async def test_frames_and_http_share_a_rooms_keys(connect: Connect, pair: Pair, room: str) -> None:
    """A key published by a frame is a duplicate over HTTP, and the other way round."""
    alice = await connect(pair.a, "alice", room)
    await alice.send(chat(1, 1, "mixed-1"))
    assert (await answer(alice, 1))["payload"] == {"id": 1, "offset": 1}
    response = await post(pair.b, room, {"topic": "chat", "payload": 1}, "mixed-1")
    assert response.json() == {"offset": 1, "duplicate": True}
    response = await post(pair.b, room, {"topic": "chat", "payload": 2}, "mixed-2")
    assert response.json() == {"offset": 2}
    await alice.send(chat(2, 2, "mixed-2"))
    assert (await answer(alice, 2))["payload"] == {"id": 2, "offset": 2, "duplicate": True}


async def test_a_keyed_message_to_one_member(connect: Connect, pair: Pair, room: str) -> None:
    """A keyed frame with `to` is published once: its repeat is a duplicate."""
    alice = await connect(pair.a, "alice", room)
    bob = await connect(pair.b, "bob", room)
    await alice.send(chat(1, 1, "to-1", to="bob"))
    assert (await answer(alice, 1))["payload"] == {"id": 1, "offset": 1}
    await alice.send(chat(1, 2, "to-1", to="bob"))
    assert (await answer(alice, 2))["payload"] == {"id": 2, "offset": 1, "duplicate": True}
    assert (await bob.recv_topic("chat"))["offset"] == 1
    await bob.barrier()


@pytest.mark.parametrize("kind", ["redis"])
async def test_one_key_raced_from_two_nodes_publishes_once(
    connect: Connect, pair: Pair, room: str
) -> None:
    """Many connections on two nodes send one key at the same moment: exactly one offset,
    every ack carries it, and every member receives the message once."""
    senders = [await connect(pair.a if n % 2 else pair.b, f"s{n}", room) for n in range(8)]
    watcher = await connect(pair.a, "watcher", room)
    for round_ in range(5):
        key = f"race-{round_}-{uuid.uuid4().hex[:6]}"
        await asyncio.gather(*(s.send(chat(round_, 100 + round_, key)) for s in senders))
        acks = [await answer(s, 100 + round_) for s in senders]
        offsets = {a["payload"]["offset"] for a in acks}
        assert len(offsets) == 1, acks
        assert sum(not a["payload"].get("duplicate", False) for a in acks) == 1, acks
        message = await watcher.recv_topic("chat")
        assert message["offset"] == offsets.pop() == round_ + 1
    await watcher.barrier()


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("k" * 129, "too long"),
        (7, "not a string"),
        (["k"], "not a string"),
        (True, "not a string"),
    ],
)
async def test_a_bad_key_is_an_invalid_frame(
    connect: Connect, shared_server: ServerProcess, room: str, key: Any, why: str
) -> None:
    """A `key` that is not a string of 1-128 characters answers `invalid_frame` with the
    frame's id; nothing is published and the connection stays open."""
    alice = await connect(shared_server, "alice", room)
    error = await alice.error({"topic": "chat", "payload": 1, "id": 3, "key": key})
    assert error["code"] == "invalid_frame", why
    assert error["id"] == 3
    assert "key must be a string of 1-128 characters" in error["message"]
    await alice.send(chat(2, 4, "k" * 128))
    assert (await answer(alice, 4))["payload"] == {"id": 4, "offset": 1}


@pytest.mark.parametrize("key", ["", "k" * 129])
async def test_a_bad_idempotency_key_header_is_refused(
    shared_server: ServerProcess, room: str, key: str
) -> None:
    """An `Idempotency-Key` that is empty or longer than 128 characters answers 400."""
    response = await post(shared_server, room, {"topic": "t", "payload": 1}, key)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_frame"
    assert "Idempotency-Key" in error["message"]
    good = await post(shared_server, room, {"topic": "t", "payload": 1}, "k")
    assert good.json() == {"offset": 1}


EPHEMERAL_CLASS = '[rooms.eph]\nephemeral_topics = ["typing"]\n'


@pytest.fixture
def eph_pair(
    kind: str, start_server: Start, redis_or_none: RedisProcess | None, tmp_path: Path
) -> Pair:
    """Two nodes (or one memory:// server) where `typing` is ephemeral in rooms `eph:*`."""
    config = tmp_path / "rooms.toml"
    config.write_text(EPHEMERAL_CLASS)
    return deploy(kind, start_server, redis_or_none, "--config", str(config))


def typing(frame_id: int, key: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"topic": "typing", "payload": frame_id, "id": frame_id}
    if key is not None:
        frame["key"] = key
    return frame


async def test_a_keyed_ephemeral_frame_is_delivered_once(
    connect: Connect, eph_pair: Pair, room: str
) -> None:
    """A repeat of an ephemeral frame's key, from any node, is not delivered again: its ack
    says `duplicate`, without `offset` (the first had none). The key is the room's: a room
    message with it is a duplicate without offset (frame and HTTP), and an ephemeral frame
    repeating a room message's key answers that one's offset."""
    eph = f"eph:{room}"
    alice = await connect(eph_pair.a, "alice", eph)
    bob = await connect(eph_pair.b, "bob", eph)
    await alice.send(typing(1, "t"))
    assert (await answer(alice, 1))["payload"] == {"id": 1}
    assert (await bob.recv_topic("typing"))["payload"] == 1
    await bob.send(typing(2, "t"))
    assert (await answer(bob, 2))["payload"] == {"id": 2, "duplicate": True}
    await bob.send(typing(3, None))  # the next one alice gets: the repeat never came
    # (Her own copy of 1 may come after her ack: an ephemeral publish does not wait for it.)
    got = await alice.recv_until(lambda f: f["topic"] == "typing" and f["payload"] != 1)
    assert got["payload"] == 3
    await alice.send(chat(1, 4, "t"))
    assert (await answer(alice, 4))["payload"] == {"id": 4, "duplicate": True}
    response = await post(eph_pair.b, eph, {"topic": "chat", "payload": 1}, "t")
    assert (response.status_code, response.json()) == (202, {"duplicate": True})
    await alice.send(chat(1, 5, "m"))
    assert (await answer(alice, 5))["payload"] == {"id": 5, "offset": 1}
    await bob.send(typing(6, "m"))
    assert (await answer(bob, 6))["payload"] == {"id": 6, "offset": 1, "duplicate": True}
    await bob.send(chat(2, 7, None))  # alice got her own chat before her ack: this one next
    assert (await alice.recv_topic("chat"))["offset"] == 2


async def test_a_repeat_to_a_member_who_left_is_a_duplicate(
    connect: Connect, eph_pair: Pair, room: str
) -> None:
    """A keyed message `to` a member is answered as a duplicate when repeated after that
    member left (frame and HTTP, room messages and ephemeral frames); a new key to them
    answers `member_not_found`."""
    eph = f"eph:{room}"
    alice = await connect(eph_pair.a, "alice", eph)
    bob = await connect(eph_pair.b, "bob", eph)
    await alice.send(chat(1, 1, "to-bob", to="bob"))
    assert (await answer(alice, 1))["payload"] == {"id": 1, "offset": 1}
    await alice.send({**typing(2, "typing-bob"), "to": "bob"})
    assert (await answer(alice, 2))["payload"] == {"id": 2}
    assert (await bob.recv_topic("typing"))["payload"] == 2
    await bob.close()
    await alice.recv_topic("presence.leave")
    await alice.send(chat(1, 3, "to-bob", to="bob"))
    assert (await answer(alice, 3))["payload"] == {"id": 3, "offset": 1, "duplicate": True}
    await alice.send({**typing(4, "typing-bob"), "to": "bob"})
    assert (await answer(alice, 4))["payload"] == {"id": 4, "duplicate": True}
    response = await post(eph_pair.b, eph, {"topic": "chat", "payload": 1, "to": "bob"}, "to-bob")
    assert (response.status_code, response.json()) == (202, {"offset": 1, "duplicate": True})
    await alice.send(chat(1, 5, "new", to="bob"))
    assert (await answer(alice, 5))["payload"]["code"] == "member_not_found"
    response = await post(eph_pair.b, eph, {"topic": "chat", "payload": 1, "to": "bob"}, "new")
    assert response.status_code == 404, response.text
