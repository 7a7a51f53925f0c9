"""Random frames against a live server: each is answered (or not) exactly as the contract says,
and the server keeps serving."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast.errors import FrameError
from roomcast.protocol import parse_client_frame
from tests.harness import Client, ServerProcess, running_server

SENDER, OBSERVER = "alice", "bob"
_rooms = itertools.count()

text_no_surrogates = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text_no_surrogates
)
# Flat containers only: nesting makes generation, not the server, the slow part.
json_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(text_no_surrogates, scalars, max_size=3)
)
topics = (
    st.sampled_from(
        [
            "chat",
            "ping",
            "presence",
            "auth.refresh",
            "$sys",
            "",
            "t" * 128,
            "t" * 129,
            "a.b",
            "room.nope",
        ]
    )
    | text_no_surrogates
)
names = st.sampled_from([SENDER, OBSERVER, "zed", "", "a b", "x" * 129]) | json_values
frame_ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | text_no_surrogates | json_values
frame_objects = st.fixed_dictionaries(
    {"topic": topics, "payload": json_values},
    optional={"id": frame_ids, "to": names, "extra": json_values},
)
frames = st.one_of(
    frame_objects.map(lambda d: orjson.dumps(d).decode()),
    st.dictionaries(st.sampled_from(["topic", "payload", "id", "to"]), json_values).map(
        lambda d: orjson.dumps(d).decode()
    ),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    text_no_surrogates,
    frame_objects.map(lambda d: orjson.dumps(d).decode()[:-1]),  # cut short
)


def expected(text: str, offset: int) -> tuple[list[Any], list[Any], int]:
    """What the sender and the observer must receive for `text`, given the room's last offset.

    Each expected frame is a dict compared exactly, or a (topic, code, id) triple for errors.
    """
    try:
        frame = parse_client_frame(text)
    except FrameError as exc:
        return [("error", exc.code.value, exc.frame_id)], [], offset
    ack_id = frame.id
    if frame.topic == "ping":
        mine: list[Any] = [{"topic": "pong", "payload": frame.payload}]
    elif frame.topic == "presence":
        mine = [{"topic": "presence", "payload": {"members": [SENDER, OBSERVER]}, "room": None}]
    elif frame.topic.startswith("room.") and frame.topic not in ("room.join", "room.leave"):
        return [("error", "unknown_topic", frame.id)], [], offset
    elif frame.topic == "auth.refresh":
        return [("error", "invalid_frame", frame.id)], [], offset
    elif frame.to is not None and frame.to not in (SENDER, OBSERVER):
        return [("error", "member_not_found", frame.id)], [], offset
    else:
        offset += 1
        message: dict[str, Any] = {"topic": frame.topic, "payload": frame.payload}
        message["room"] = None  # filled by the caller
        message["from"] = SENDER
        if frame.to is not None:
            message["to"] = frame.to
        message["offset"] = offset
        theirs = [message] if frame.to in (None, OBSERVER) else []
        mine = [message] if frame.to in (None, SENDER) else []
        if ack_id is not None:
            mine.append({"topic": "ack", "payload": {"id": ack_id, "offset": offset}})
        return mine, theirs, offset
    if ack_id is not None:
        mine.append({"topic": "ack", "payload": {"id": ack_id}})
    return mine, [], offset


def check(got: dict[str, Any], want: Any, room: str, text: str) -> None:
    if isinstance(want, tuple):
        topic, code, frame_id = want
        assert got["topic"] == topic, (text, got)
        assert got["payload"]["code"] == code, (text, got)
        assert got["payload"].get("id") == frame_id, (text, got)
    else:
        if "room" in want:
            want = {**want, "room": room}
        assert got == want, (text, got)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One server without the rate limit, so that the frames come as fast as they can."""
    with running_server("--rate-limit", "off") as process:
        yield process


async def exchange(server: ServerProcess, texts: list[str]) -> None:
    room = f"fuzz-{next(_rooms)}"
    alice = await Client.connect(server.ws_url, SENDER, room)
    await alice.join()
    bob = await Client.connect(server.ws_url, OBSERVER, room)
    await bob.join()
    assert (await alice.recv())["topic"] == "presence.join"
    for text in texts:
        await alice.send(text)
    offset = 0
    async with asyncio.timeout(20):
        for text in texts:
            mine, theirs, offset = expected(text, offset)
            for want in mine:
                check(await alice.recv(), want, room, text)
            for want in theirs:
                check(await bob.recv(), want, room, text)
        await alice.barrier()
        await bob.barrier()
    await alice.close()
    await bob.close()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(st.lists(frames, min_size=100, max_size=300))
def test_random_frames_are_answered_per_contract(server: ServerProcess, texts: list[str]) -> None:
    """Random text, JSON and frame-like objects each get exactly the contract's answer."""
    asyncio.run(exchange(server, texts))


async def test_server_still_serves_after_fuzzing(server: ServerProcess) -> None:
    """After the random frames a new client joins and chats normally."""
    carol = await Client.connect(server.ws_url, "carol", "after-fuzz")
    welcome = (await carol.join())["payload"]
    assert welcome["members"] == ["carol"]
    await carol.send({"topic": "chat", "payload": "still fine", "id": 1})
    assert (await carol.recv())["payload"] == "still fine"
    assert await carol.recv() == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    await carol.close()
