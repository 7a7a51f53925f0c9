"""The Python client's reconnect rules per close code, token refresh and dedupe, played against
a scripted WebSocket server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import pytest
from websockets.asyncio.server import ServerConnection

from roomcast.client import (
    Client,
    ClientClosed,
    ClientState,
    ConnectionLost,
    RequestError,
    RequestTimeout,
    Welcome,
)
from tests.harness import free_port
from tests.integration.client_support import (
    FAST,
    Collector,
    FakeServer,
    StateLog,
    message,
    welcome,
)

NO_RECONNECT = [1000, 1007, 1008, 1009, 4400, 4403, 4409, 4499]
RECONNECT = [1001, 1012, 1011, 4408, 4429, 4503, 4999]


def close_after_welcome(code: int):  # type: ignore[no-untyped-def]
    """A script: the first connection is welcomed then closed with `code`; later ones stay."""

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0))
        if number == 0:
            await ws.close(code, "test")
        else:
            await ws.wait_closed()

    return script


@pytest.mark.parametrize("code", [*NO_RECONNECT, 4401])
async def test_no_reconnect_after_final_codes(code: int) -> None:
    """After 1000, 1007, 1008, 1009, 4400, 4403, 4409 or 4499 the client stays closed, and
    after 4401 without a token provider (no new token to come), never `reconnecting`."""
    async with FakeServer(close_after_welcome(code)) as server:
        states = StateLog()
        client = Client(server.url, username="alice", room="r1", on_state=states, backoff=FAST)
        await client.connect()
        info = await asyncio.wait_for(client.wait_closed(), 5)
        assert info.code == code
        assert states.states == [ClientState.CONNECTING, ClientState.CONNECTED, ClientState.CLOSED]
        assert len(server.queries) == 1
        with pytest.raises(ClientClosed) as raised:
            await client.send("chat", {"text": "late"})
        assert raised.value.close_code == code


@pytest.mark.parametrize("code", RECONNECT)
async def test_reconnect_with_resume_after_transient_codes(code: int) -> None:
    """After 1001, 1012, 1011, 4408, 4429 and 45xx the client reconnects with since and epoch."""
    async with FakeServer(close_after_welcome(code)) as server:
        states = StateLog()
        client = Client(server.url, username="alice", room="r1", on_state=states, backoff=FAST)
        await client.connect()
        await states.wait(ClientState.CONNECTED, count=2)
        assert states.states == [
            ClientState.CONNECTING,
            ClientState.CONNECTED,
            ClientState.RECONNECTING,
            ClientState.CONNECTED,
        ]
        assert client.last_close is not None
        assert client.last_close.code == code
        assert server.queries[1] == {
            "username": "alice",
            "roomID": "r1",
            "since": "0",
            "epoch": "e1",
        }
        await client.close()


async def test_reconnect_skips_duplicates_and_keeps_order() -> None:
    """Messages replayed again after a reconnect reach the application once, in order."""

    async def script(ws: ServerConnection, number: int) -> None:
        if number == 0:
            await ws.send(welcome(offset=0))
            for offset in (1, 2, 3):
                await ws.send(message(offset))
            await ws.close(1012)
        else:
            await ws.send(welcome(offset=5, recovered=True))
            for offset in (2, 3, 4, 5):
                await ws.send(message(offset))
            await ws.wait_closed()

    async with FakeServer(script) as server:
        seen = Collector()
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        client.on("chat")(seen)
        await client.connect()
        await seen.wait(5)
        assert seen.offsets == [1, 2, 3, 4, 5]
        assert server.queries[1]["since"] == "3"
        await client.close()


async def test_recovery_failed_callback_and_new_epoch() -> None:
    """`recovered: false` calls on_recovery_failed, then counts offsets in the new epoch."""

    async def script(ws: ServerConnection, number: int) -> None:
        if number == 0:
            await ws.send(welcome(offset=0))
            await ws.send(message(1))
            await ws.close(1012)
        else:
            await ws.send(welcome(offset=1, epoch="e2", recovered=False))
            await ws.send(message(1, "stale"))  # at or below the welcome's offset: skipped
            await ws.send(message(2, "new"))
            await ws.wait_closed()

    async with FakeServer(script) as server:
        failed: list[Welcome] = []
        seen = Collector()
        client = Client(
            server.url, username="alice", room="r1", backoff=FAST, on_recovery_failed=failed.append
        )
        client.on("chat")(seen)
        await client.connect()
        frames = await seen.wait(2)
        assert [(f.offset, f.payload["text"]) for f in frames] == [(1, "m"), (2, "new")]
        assert [w.epoch for w in failed] == ["e2"]
        assert client.epoch == "e2"
        assert client.offset == 2
        await client.close()


def refuse_unless(token: str):  # type: ignore[no-untyped-def]
    """A script refusing (error frame + 4401) any connection without `Bearer <token>`."""

    async def script(ws: ServerConnection, number: int) -> None:
        assert ws.request is not None
        if ws.request.headers.get("Authorization") != f"Bearer {token}":
            await ws.send(
                json.dumps(
                    {
                        "topic": "error",
                        "payload": {"code": "unauthenticated", "message": "token expired"},
                    }
                )
            )
            await ws.close(4401, "token expired")
            return
        await ws.send(welcome())
        await ws.wait_closed()

    return script


async def test_4401_asks_the_token_provider_again() -> None:
    """4401 makes the client call its token provider and connect with the fresh token."""
    tokens = iter(["old", "fresh"])

    async def provider() -> str | None:
        return next(tokens)

    async with FakeServer(refuse_unless("fresh")) as server:
        client = Client(
            server.url, username="alice", room="r1", token_provider=provider, backoff=FAST
        )
        await client.connect()
        assert server.tokens == ["Bearer old", "Bearer fresh"]
        assert client.connected
        await client.close()


async def test_4401_without_a_provider_is_final() -> None:
    """4401 with no token provider: connect() raises with the server's error code."""
    async with FakeServer(refuse_unless("fresh")) as server:
        client = Client(server.url, username="alice", room="r1", token="old", backoff=FAST)
        with pytest.raises(ClientClosed) as raised:
            await client.connect()
        assert raised.value.close_code == 4401
        assert raised.value.wire_code == "unauthenticated"
        assert client.state is ClientState.CLOSED
        assert len(server.queries) == 1


async def test_4401_when_the_provider_has_no_token() -> None:
    """A provider returning None after 4401 closes the client for good."""
    calls: list[int] = []

    async def provider() -> str | None:
        calls.append(1)
        return "old" if len(calls) == 1 else None

    async with FakeServer(refuse_unless("fresh")) as server:
        client = Client(
            server.url, username="alice", room="r1", token_provider=provider, backoff=FAST
        )
        with pytest.raises(ClientClosed) as raised:
            await client.connect()
        assert raised.value.close_code == 4401
        assert len(calls) == 2
        assert len(server.queries) == 1


async def test_request_timeout_and_connection_lost() -> None:
    """A request with no answer times out; a built-in topic's request cut by a disconnect
    raises ConnectionLost (a publish would be sent again after the reconnect)."""

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome())
        async for raw in ws:
            if json.loads(raw)["topic"] == "presence":
                await ws.close(1012)

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        with pytest.raises(RequestTimeout):
            await client.request("chat", {"text": "x"}, timeout=0.2)
        with pytest.raises(ConnectionLost):
            await client.presence()
        await server.wait_connections(2)
        await client.close()


async def send_duplicate_ack(ws: ServerConnection, frame_id: object, offset: int) -> None:
    """The ack a server sends for a key that published already."""
    ack = {"id": frame_id, "offset": offset, "duplicate": True}
    await ws.send(json.dumps({"topic": "ack", "payload": ack}))


@pytest.mark.parametrize("answers", [[], ["unavailable"]], ids=["ack", "unavailable-then-ack"])
async def test_a_publish_cut_by_a_disconnect_is_sent_again_with_its_key(answers: list[str]) -> None:
    """A request without an answer when the connection drops is sent again after the
    reconnect, the same frame with the same key, and returns the offset its ack gives. Its
    first copy may have been published: an `unavailable` answer to the resend is retried
    too, not raised (the application would publish it again, under a new key)."""
    frames: list[dict[str, object]] = []

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0, recovered=True if number else None))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["topic"] != "chat":
                continue
            frames.append(frame)
            if number == 0:
                await ws.close(1011)
            elif answers:
                error = {"code": answers.pop(0), "message": "", "id": frame["id"]}
                await ws.send(json.dumps({"topic": "error", "payload": error}))
            else:
                await send_duplicate_ack(ws, frame["id"], 1)

    expected = 2 + len(answers)
    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        assert await client.request("chat", {"text": "x"}) == 1
        assert len(frames) == expected
        assert isinstance(frames[0]["key"], str)
        assert all(f == frames[0] for f in frames)
        await client.close()


async def test_a_publish_answered_timeout_is_sent_again_until_acked() -> None:
    """`timeout` (outcome unknown) sends the frame again with its key, and so do the
    `unavailable` answers after it; without a `timeout` first, `unavailable` is raised."""
    answers = ["timeout", "unavailable", "unavailable"]
    frames: list[dict[str, object]] = []

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["topic"] != "chat":
                continue
            frames.append(frame)
            if answers:
                error = {"code": answers.pop(0), "message": "", "id": frame["id"]}
                await ws.send(json.dumps({"topic": "error", "payload": error}))
            else:
                await send_duplicate_ack(ws, frame["id"], 7)

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        assert await client.request("chat", "maybe") == 7
        assert len(frames) == 4
        assert all(f == frames[0] for f in frames)
        answers.append("unavailable")
        with pytest.raises(RequestError) as raised:
            await client.request("chat", "not handled")
        assert raised.value.wire_code == "unavailable"
        await client.close()


async def test_first_connect_to_nothing_raises() -> None:
    """connect() to a port where nothing listens raises ClientClosed without a close code."""
    client = Client(f"ws://127.0.0.1:{free_port()}", username="alice", room="r1")
    with pytest.raises(ClientClosed) as raised:
        await client.connect()
    assert raised.value.close_code is None
    assert "cannot connect" in raised.value.message
    assert client.state is ClientState.CLOSED


async def test_max_attempts_gives_up() -> None:
    """With max_attempts, the client closes after that many failed reconnects in a row."""

    async def script(ws: ServerConnection, number: int) -> None:
        if number > 0:
            await ws.close(4503, "broker unavailable")  # refused before the welcome
            return
        await ws.send(welcome())
        await ws.close(4503)

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST, max_attempts=3)
        await client.connect()
        info = await asyncio.wait_for(client.wait_closed(), 5)
        assert info.code == 4503
        assert len(server.queries) == 4  # the first connection and three failed reconnects


async def test_cancelled_connect_leaves_nothing_running() -> None:
    """A connect() cancelled by a timeout closes the client instead of retrying behind."""

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.wait_closed()  # never sends the welcome

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", open_timeout=30)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.connect(), 0.3)
        assert client.state is ClientState.CLOSED
        info = await asyncio.wait_for(client.wait_closed(), 5)
        assert info.code == 1000


async def test_backoff_grows_when_each_connection_is_closed_after_its_welcome() -> None:
    """A server that welcomes and then closes at once (4429) is backed off from more and
    more: a welcome alone does not reset the backoff, a connection that lasted does."""
    times: list[float] = []

    async def script(ws: ServerConnection, number: int) -> None:
        times.append(asyncio.get_running_loop().time())
        await ws.send(welcome(offset=0, recovered=True if number else None))
        await ws.close(4429)

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        await server.wait_connections(7)
        await client.close()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # FAST: 0.05 s doubling up to 0.3 s, each delay between half and all of its ceiling.
    assert max(gaps[:6]) >= 0.15, gaps
    assert sum(gaps[3:6]) >= 3 * 0.15, gaps


async def test_refused_tokens_in_a_row_end_the_client() -> None:
    """Once connected, a provider that keeps handing out a token the server refuses (4401)
    is tried three times in a row; then the client closes instead of reconnecting for ever."""
    tokens = iter(["fresh"])
    refuse = refuse_unless("fresh")

    async def provider() -> str | None:
        return next(tokens, "stale")

    async def script(ws: ServerConnection, number: int) -> None:
        if number:
            await refuse(ws, number)
            return
        await ws.send(welcome(offset=0))
        await ws.close(4401, "token expired")

    async with FakeServer(script) as server:
        client = Client(
            server.url, username="alice", room="r1", token_provider=provider, backoff=FAST
        )
        await client.connect()
        async with asyncio.timeout(10):
            info = await client.wait_closed()
        assert info.code == 4401
        assert server.tokens == ["Bearer fresh"] + ["Bearer stale"] * 3


async def test_close_stops_a_hanging_handshake_and_passes_cancellation_on() -> None:
    """close() during a first handshake that never completes returns at once; a timeout
    around close() (a handler that never returns) raises, as the caller asked."""

    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    started = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)  # the upgrade request, never answered
        started.set()
        await done.wait()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = Client(f"ws://127.0.0.1:{port}", username="alice", room="r1", backoff=FAST)
        connecting = asyncio.ensure_future(client.connect())
        async with asyncio.timeout(5):
            await started.wait()
        async with asyncio.timeout(2):
            await client.close()
        with pytest.raises(ClientClosed):
            await connecting
    finally:
        done.set()
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0))
        await ws.send(message(1))
        await ws.wait_closed()

    blocked, release = asyncio.Event(), asyncio.Event()
    async with FakeServer(script) as fake:
        client = Client(fake.url, username="alice", room="r1", backoff=FAST)

        async def stuck(frame: object) -> None:
            blocked.set()
            await release.wait()

        client.add_handler("chat", stuck)
        await client.connect()
        async with asyncio.timeout(5):
            await blocked.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await client.close()
        release.set()
        async with asyncio.timeout(5):
            await client.close()


async def test_a_rejoin_answered_unavailable_is_asked_again() -> None:
    """After a reconnect, a room whose `room.join` finds the broker unavailable (its server is
    down for now) is joined again after a backoff, not dropped: its messages still come."""
    joins: list[list[int]] = [[], []]

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["topic"] != "room.join":
                continue
            joins[number].append(frame["id"])
            if number == 1 and len(joins[1]) == 1:
                error = {"code": "unavailable", "message": "down", "id": frame["id"]}
                await ws.send(json.dumps({"topic": "error", "payload": error}))
                continue
            joined = {"roomID": "r2", "members": ["alice"], "epoch": "e2", "offset": 0}
            if "since" in frame["payload"]:
                joined["recovered"] = True
            await ws.send(json.dumps({"topic": "joined", "payload": joined, "room": "r2"}))
            await ws.send(json.dumps({"topic": "ack", "payload": {"id": frame["id"]}}))
            if number == 0:
                await ws.close(1012)
                return
            note = {"topic": "news", "payload": 1, "room": "r2", "from": "bob", "offset": 1}
            await ws.send(json.dumps(note))

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        seen = Collector()
        room = await client.join("r2")
        room.on("news")(seen)
        frames = await seen.wait(1)
        assert [f.offset for f in frames] == [1]
        assert len(joins[1]) == 2  # refused once, asked again
        assert not room.left
        assert "r2" in client.rooms
        await client.close()


async def test_a_resend_into_a_room_not_yet_joined_again_is_retried() -> None:
    """A request into a joined room, cut off before its answer, is resent after the reconnect;
    while that room's join is still refused (`unavailable`), the resend is answered
    `not_joined`, and is sent again until the room is back: request() returns the offset
    the first attempt had published, not an error."""

    async def script(ws: ServerConnection, number: int) -> None:
        await ws.send(welcome(offset=0))
        joined_r2, joins = False, 0
        async for raw in ws:
            frame = json.loads(raw)
            if frame["topic"] == "room.join":
                joins += 1
                if number == 1 and joins == 1:
                    error = {"code": "unavailable", "message": "down", "id": frame["id"]}
                    await ws.send(json.dumps({"topic": "error", "payload": error}))
                    continue
                joined_r2 = True
                joined = {"roomID": "r2", "members": ["alice"], "epoch": "e2", "offset": 4}
                await ws.send(json.dumps({"topic": "joined", "payload": joined, "room": "r2"}))
                await ws.send(json.dumps({"topic": "ack", "payload": {"id": frame["id"]}}))
            elif frame["topic"] == "chat" and number == 0:
                await ws.close(1012)  # published (offset 5), but the answer is lost
                return
            elif frame["topic"] == "chat" and not joined_r2:
                error = {"code": "not_joined", "message": "not in r2", "id": frame["id"]}
                await ws.send(json.dumps({"topic": "error", "payload": error}))
            elif frame["topic"] == "chat":
                ack = {"id": frame["id"], "offset": 5, "duplicate": True}
                await ws.send(json.dumps({"topic": "ack", "payload": ack}))

    async with FakeServer(script) as server:
        client = Client(server.url, username="alice", room="r1", backoff=FAST)
        await client.connect()
        room = await client.join("r2")
        assert await room.request("chat", {"text": "once"}, timeout=10) == 5
        await client.close()
