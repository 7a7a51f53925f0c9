"""PROTOCOL section 1 on one node: the welcome frame, refusals and their close codes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import websockets

from tests.harness import RECV_TIMEOUT, Client, ServerProcess


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    """The module's shared server (see conftest.py)."""
    return shared_server


WELCOME_KEYS = {"connectionId", "username", "roomID", "members", "epoch", "offset", "rooms"}


async def refused(server: ServerProcess, query: dict[str, str]) -> tuple[int | None, list]:
    """Connect with `query` (the upgrade succeeds) and return the close code and frames seen."""
    ws = await websockets.connect(f"{server.ws_url}?{urlencode(query)}", open_timeout=RECV_TIMEOUT)
    return await Client(ws).closed()


async def test_welcome_frame_shape(server: ServerProcess, room: str) -> None:
    """The first frame is a welcome with exactly the contract's fields and no `recovered`."""
    alice = await Client.connect(server.ws_url, "alice", room)
    welcome = await alice.recv()
    assert welcome["topic"] == "welcome"
    assert set(welcome) == {"topic", "payload"}
    payload = welcome["payload"]
    assert set(payload) == WELCOME_KEYS
    assert payload["username"] == "alice"
    assert payload["roomID"] == room
    assert payload["members"] == ["alice"]
    assert isinstance(payload["connectionId"], str)
    assert payload["connectionId"]
    assert isinstance(payload["epoch"], str)
    assert payload["epoch"]
    assert payload["offset"] == 0
    await alice.close()


async def test_welcome_lists_every_member_and_latest_offset(
    server: ServerProcess, room: str
) -> None:
    """A later joiner's welcome lists every member including itself and the room's offset."""
    alice = await Client.connect(server.ws_url, "alice", room)
    first = (await alice.join())["payload"]
    for n in range(3):
        await alice.send({"topic": "chat", "payload": n})
    for _ in range(3):
        await alice.recv_topic("chat")
    bob = await Client.connect(server.ws_url, "bob", room)
    payload = (await bob.join())["payload"]
    assert payload["members"] == ["alice", "bob"]
    assert payload["offset"] == 3
    assert payload["epoch"] == first["epoch"]
    assert payload["connectionId"] != first["connectionId"]
    await alice.close()
    await bob.close()


BAD_QUERIES = {
    "missing username": {"roomID": "r1"},
    # A missing roomID opens a connection in no room since v1.1 (test_rooms_v11.py).
    "empty username": {"username": "", "roomID": "r1"},
    "empty roomID": {"username": "alice", "roomID": ""},
    "129-char username": {"username": "u" * 129, "roomID": "r1"},
    "129-char roomID": {"username": "alice", "roomID": "r" * 129},
    "username with space": {"username": "al ice", "roomID": "r1"},
    "roomID with tab": {"username": "alice", "roomID": "r\t1"},
    "username with newline": {"username": "alice\n", "roomID": "r1"},
    "username with control char": {"username": "al\x01ice", "roomID": "r1"},
    "roomID with control char": {"username": "alice", "roomID": "r\x7f1"},
    "roomID with no-break space": {"username": "alice", "roomID": "r\u00a01"},
    "since not a number": {"username": "alice", "roomID": "r1", "since": "abc", "epoch": "e"},
    "negative since": {"username": "alice", "roomID": "r1", "since": "-1", "epoch": "e"},
    # Percent-encoded bytes that are not UTF-8 (a lone byte, an encoded surrogate): refused,
    # not taken for a name of replacement characters.
    "username not UTF-8": {"username": b"\xff", "roomID": "r1"},
    "roomID not UTF-8": {"username": "alice", "roomID": b"r\xed\xa0\x80"},
    "epoch not UTF-8": {"username": "alice", "roomID": "r1", "since": "0", "epoch": b"\xfe"},
    # The name the HTTP API and commands publish as (`from`): no member may pass for it.
    "the server's own name": {"username": "$server", "roomID": "r1"},
}


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
async def test_bad_query_is_refused_with_4400(server: ServerProcess, query: dict[str, str]) -> None:
    """A missing or invalid username/roomID/since gets one error frame, then close 4400."""
    code, frames = await refused(server, query)
    assert code == 4400
    assert len(frames) == 1
    assert frames[0]["topic"] == "error"
    assert frames[0]["payload"]["code"] == "bad_request"
    assert frames[0]["payload"]["message"]


async def test_names_of_128_characters_are_accepted(server: ServerProcess) -> None:
    """Usernames and roomIDs of exactly 128 printable characters join."""
    client = await Client.connect(server.ws_url, "u" * 128, "é" * 128)
    payload = (await client.join())["payload"]
    assert payload["username"] == "u" * 128
    assert payload["roomID"] == "é" * 128
    await client.close()


async def test_duplicate_username_is_refused_and_first_unharmed(
    server: ServerProcess, room: str
) -> None:
    """A second connection with a taken username gets close 4409; the first keeps working."""
    first = await Client.connect(server.ws_url, "alice", room)
    await first.join()
    bob = await Client.connect(server.ws_url, "bob", room)
    await bob.join()
    await first.recv_topic("presence.join")
    code, frames = await refused(server, {"username": "alice", "roomID": room})
    assert code == 4409
    assert [f["payload"]["code"] for f in frames] == ["duplicate"]
    await first.send({"topic": "chat", "payload": "still here"})
    assert (await first.recv())["payload"] == "still here"
    await bob.send({"topic": "chat", "payload": "hello alice"})
    assert (await first.recv())["payload"] == "hello alice"
    assert [(await bob.recv())["payload"] for _ in range(2)] == ["still here", "hello alice"]
    await bob.barrier()
    await first.barrier()
    await first.close()
    await bob.close()


async def test_same_username_in_other_room_is_allowed(
    server: ServerProcess, room: str, room2: str
) -> None:
    """Uniqueness is per room: the same username joins another room."""
    a = await Client.connect(server.ws_url, "alice", room)
    await a.join()
    b = await Client.connect(server.ws_url, "alice", room2)
    assert (await b.join())["payload"]["members"] == ["alice"]
    await a.close()
    await b.close()


async def test_on_duplicate_replace_closes_old_with_4409(
    start_server: Callable[..., ServerProcess], room: str
) -> None:
    """With --on-duplicate replace the old connection is closed with 4409; the new one works."""
    server = start_server("--on-duplicate", "replace")
    bob = await Client.connect(server.ws_url, "bob", room)
    await bob.join()
    old = await Client.connect(server.ws_url, "alice", room)
    await old.join()
    await bob.recv_topic("presence.join")
    new = await Client.connect(server.ws_url, "alice", room)
    welcome = (await new.join())["payload"]
    assert welcome["members"] == ["alice", "bob"]
    code, frames = await old.closed()
    assert code == 4409
    assert [f["payload"]["code"] for f in frames if f["topic"] == "error"] == ["duplicate"]
    await new.send({"topic": "chat", "payload": "i am back", "id": 1})
    assert (await new.recv())["payload"] == "i am back"
    assert await new.recv() == {"topic": "ack", "payload": {"id": 1, "offset": 1}}
    assert (await bob.recv())["payload"] == "i am back"
    # The replacement is neither a leave nor a join for the other members.
    await bob.barrier()
    with server.http() as http:
        assert http.get(f"/api/v1/rooms/{room}/members").json() == {"members": ["alice", "bob"]}
    await new.close()
    await bob.close()


async def test_frame_over_max_message_size_closes_1009(
    start_server: Callable[..., ServerProcess], room: str
) -> None:
    """A frame larger than --max-message-size closes the connection with 1009."""
    server = start_server("--max-message-size", "1024")
    client = await Client.connect(server.ws_url, "alice", room)
    await client.join()
    await client.send({"topic": "chat", "payload": "x" * 900})
    assert (await client.recv())["payload"] == "x" * 900
    await client.send({"topic": "chat", "payload": "x" * 2000})
    code, frames = await client.closed()
    assert code == 1009
    assert all(f["topic"] != "chat" for f in frames)


async def test_invalid_utf8_text_frame_closes_1007(server: ServerProcess, room: str) -> None:
    """A text frame that is not valid UTF-8 closes the connection with 1007."""
    client = await Client.connect(server.ws_url, "alice", room)
    await client.join()
    client.ws.protocol.send_text(b'{"topic":"chat","payload":"\xff\xfe"}')
    client.ws.send_data()
    code, frames = await client.closed()
    assert code == 1007
    assert all(f["topic"] != "chat" for f in frames)


async def test_binary_frame_closes_1008(server: ServerProcess, room: str) -> None:
    """A binary frame gets one error frame and close 1008."""
    client = await Client.connect(server.ws_url, "alice", room)
    await client.join()
    await client.send(orjson.dumps({"topic": "chat", "payload": 1}))
    code, frames = await client.closed()
    assert code == 1008
    assert [f["topic"] for f in frames] == ["error"]
    assert frames[0]["payload"]["code"] == "invalid_frame"


async def test_room_exists_while_it_has_members(server: ServerProcess, room: str) -> None:
    """A room appears in GET /api/v1/rooms on first join and is gone after the last leave."""
    with server.http() as http:
        assert rooms_listed(http, room) == []
        alice = await Client.connect(server.ws_url, "alice", room)
        await alice.join()
        assert rooms_listed(http, room) == [{"roomID": room, "members": ["alice"]}]
        bob = await Client.connect(server.ws_url, "bob", room)
        await bob.join()
        assert rooms_listed(http, room) == [{"roomID": room, "members": ["alice", "bob"]}]
        await alice.close()
        await bob.recv_topic("presence.leave")
        assert rooms_listed(http, room) == [{"roomID": room, "members": ["bob"]}]
        await bob.close()
        # The server handles bob's leave after the close handshake; no event says when.
        async with asyncio.timeout(RECV_TIMEOUT):
            while rooms_listed(http, room):  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # polling with a deadline
        assert http.get(f"/api/v1/rooms/{room}/members").json() == {"members": []}


def rooms_listed(http: httpx.Client, room: str) -> list[dict[str, object]]:
    """The entries of GET /api/v1/rooms that are about `room`."""
    response = http.get("/api/v1/rooms")
    assert response.status_code == 200
    return [r for r in response.json()["rooms"] if r["roomID"] == room]
