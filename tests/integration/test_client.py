"""The Python client against a real `roomcast serve` process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from roomcast.client import (
    Client,
    ClientClosed,
    ClientState,
    Frame,
    HttpApi,
    RequestError,
    Welcome,
)
from tests.harness import RedisProcess, ServerProcess
from tests.integration.client_support import FAST, Collector, Proxy, StateLog, poll

StartServer = Callable[..., ServerProcess]


async def test_send_receive_handlers_and_iteration(server: ServerProcess) -> None:
    """Room messages reach handlers and iteration with room, sender and offset; `to` reaches
    one member only."""
    seen = Collector()
    async with (
        Client(server.url, username="alice", room="r1") as alice,
        Client(server.ws_url, username="bob", room="r1") as bob,
    ):
        alice.on("chat")(seen)
        await bob.send("chat", {"text": "hi all"})
        await bob.send("chat", {"text": "psst"}, to="alice")
        first = await seen.wait(2)
        assert [(f.sender, f.payload, f.to, f.offset) for f in first] == [
            ("bob", {"text": "hi all"}, None, 1),
            ("bob", {"text": "psst"}, "alice", 2),
        ]
        assert first[0].room == "r1"
        # bob has no handler: his frames come through iteration, his own message included
        frame = await bob.recv(timeout=5)
        assert (frame.topic, frame.sender, frame.offset) == ("chat", "bob", 1)
        await alice.send("chat", {"text": "hello"})
        async for frame in bob:
            if frame.topic == "chat":
                assert (frame.sender, frame.offset) == ("alice", 3)  # offset 2 was not for bob
                break


async def test_request_ack_and_error_mapping(server: ServerProcess) -> None:
    """request() returns the ack's offset, or raises the error frame's code and message."""
    async with Client(server.url, username="alice", room="r1") as alice:
        assert await alice.request("chat", {"text": "one"}) == 1
        assert await alice.request("chat", {"text": "two"}) == 2
        with pytest.raises(RequestError) as raised:
            await alice.request("chat", {"text": "x"}, to="nobody")
        assert raised.value.wire_code == "member_not_found"
        assert "nobody" in raised.value.message
        with pytest.raises(RequestError) as raised:
            await alice.request("$reserved", {})
        assert raised.value.wire_code == "invalid_frame"
        # without an id the error comes as a frame; the connection stays open
        await alice.send("chat", {"text": "x"}, to="nobody")
        frame = await _next_topic(alice, "error")
        assert frame.payload["code"] == "member_not_found"
        assert await alice.request("chat", {"text": "three"}) == 3


async def test_relayed_server_topic_names_are_messages(server: ServerProcess) -> None:
    """A member may relay a topic named "ack" or "error": the client hands it to the
    application as a message (it carries `from`) and does not take it as an answer."""
    async with (
        Client(server.url, username="alice", room="r1") as alice,
        Client(server.ws_url, username="mallory", room="r1") as mallory,
    ):
        await mallory.send("ack", {"id": 1, "offset": 99})
        await mallory.send("error", {"code": "forbidden", "message": "fake", "id": 2})
        frame = await _next_topic(alice, "ack")
        assert (frame.sender, frame.payload) == ("mallory", {"id": 1, "offset": 99})
        frame = await _next_topic(alice, "error")
        assert frame.sender == "mallory"
        assert await alice.request("chat", {"text": "real"}) == 3


async def _next_topic(client: Client, topic: str) -> Frame:
    async with asyncio.timeout(5):
        while True:
            frame = await client.recv()
            if frame.topic == topic:
                return frame


async def test_presence_and_members(server: ServerProcess) -> None:
    """presence() asks the server; `members` follows welcome and presence frames."""
    joined = Collector()
    async with Client(server.url, username="alice", room="r1") as alice:
        alice.on("presence.join")(joined)
        alice.on("presence.leave")(joined)
        assert alice.members == ["alice"]
        async with Client(server.url, username="bob", room="r1") as bob:
            assert sorted(bob.members) == ["alice", "bob"]
            assert sorted(await alice.presence()) == ["alice", "bob"]
            await joined.wait(1)
            assert sorted(alice.members) == ["alice", "bob"]
        await joined.wait(2)
        assert [f.topic for f in joined.frames] == ["presence.join", "presence.leave"]
        assert alice.members == ["alice"]
        assert await alice.presence() == ["alice"]


async def test_kick_closes_for_good(server: ServerProcess) -> None:
    """A kick (4499) closes the client without a reconnect; sending then raises."""
    states = StateLog()
    client = Client(server.url, username="alice", room="r1", on_state=states, backoff=FAST)
    await client.connect()
    await asyncio.to_thread(HttpApi(server.url).kick, "r1", "alice")
    info = await asyncio.wait_for(client.wait_closed(), 5)
    assert info.code == 4499
    assert states.states == [ClientState.CONNECTING, ClientState.CONNECTED, ClientState.CLOSED]
    with pytest.raises(ClientClosed) as raised:
        await client.send("chat", {"text": "still here?"})
    assert raised.value.close_code == 4499
    assert await asyncio.to_thread(HttpApi(server.url).members, "r1") == []


async def test_duplicate_is_refused(server: ServerProcess) -> None:
    """A second client with a taken username gets 4409 from connect(); the first stays."""
    async with Client(server.url, username="alice", room="r1") as first:
        second = Client(server.url, username="alice", room="r1", backoff=FAST)
        with pytest.raises(ClientClosed) as raised:
            await second.connect()
        assert raised.value.close_code == 4409
        assert raised.value.wire_code == "duplicate"
        assert second.state is ClientState.CLOSED
        assert await first.presence() == ["alice"]


async def test_replaced_client_does_not_come_back(start_server: StartServer) -> None:
    """With --on-duplicate replace, the replaced client closes (4409) and stays closed."""
    server = start_server("--on-duplicate", "replace")
    states = StateLog()
    old = Client(server.url, username="alice", room="r1", on_state=states, backoff=FAST)
    await old.connect()
    async with Client(server.url, username="alice", room="r1") as new:
        info = await asyncio.wait_for(old.wait_closed(), 5)
        assert info.code == 4409
        assert states.states[-1] is ClientState.CLOSED
        assert ClientState.RECONNECTING not in states.states
        assert await new.request("chat", {"text": "mine now"}) == 1
        assert await new.presence() == ["alice"]


async def test_server_restart_reconnects_and_reports_lost_history(
    start_server: StartServer,
) -> None:
    """SIGTERM (1012): the client reconnects to the new server on the same port; the memory
    broker lost history, so on_recovery_failed fires and offsets restart in the new epoch."""
    first = start_server()
    states = StateLog()
    failed: list[Welcome] = []
    seen = Collector()
    client = Client(
        first.url,
        username="alice",
        room="r1",
        on_state=states,
        backoff=FAST,
        on_recovery_failed=failed.append,
    )
    client.on("chat")(seen)
    await client.connect()
    assert await client.request("chat", {"text": "before"}) == 1
    old_epoch = client.epoch
    first.signal(signal.SIGTERM)
    await states.wait(ClientState.RECONNECTING)
    assert client.last_close is not None
    assert client.last_close.code == 1012
    await asyncio.to_thread(first.wait)
    second = await asyncio.to_thread(start_server, "--port", str(first.port))
    await states.wait(ClientState.CONNECTED, count=2)
    assert [w.recovered for w in failed] == [False]
    assert client.epoch != old_epoch
    assert await asyncio.to_thread(HttpApi(second.url).publish, "r1", "chat", {"n": 1}) == 1
    frames = await seen.wait(2)
    assert [(f.offset, f.payload) for f in frames] == [(1, {"text": "before"}), (1, {"n": 1})]
    await client.close()
    assert states.states[-1] is ClientState.CLOSED


async def test_resume_after_network_loss_sees_every_message_once(server: ServerProcess) -> None:
    """Messages published while the client's connection is down are replayed on reconnect:
    every offset once, in order, then live ones."""
    proxy = await Proxy(server.port).start()
    api = HttpApi(server.url)
    states = StateLog()
    seen = Collector()
    client = Client(proxy.ws_url, username="alice", room="r1", on_state=states, backoff=FAST)
    client.on("chat")(seen)
    async with client, Client(server.url, username="bob", room="r1") as bob:
        for n in range(3):
            await asyncio.to_thread(api.publish, "r1", "chat", {"n": n})
        await seen.wait(3)
        proxy.refuse()
        proxy.cut()
        await states.wait(ClientState.RECONNECTING)

        async def alice_gone() -> bool:
            return "alice" not in await asyncio.to_thread(api.members, "r1")

        await poll(alice_gone)
        for n in range(3, 6):
            await asyncio.to_thread(api.publish, "r1", "chat", {"n": n})
            await bob.request("chat", {"from bob": n})
        proxy.accept()
        await states.wait(ClientState.CONNECTED, count=2)
        assert client.welcome is not None
        assert client.welcome.recovered is True
        await bob.request("chat", {"live": True})
        frames = await seen.wait(10)
        assert [f.offset for f in frames] == list(range(1, 11))
        assert frames[-1].payload == {"live": True}
    await proxy.close()


async def test_keepalive_notices_a_dead_connection(start_server: StartServer) -> None:
    """When the peer stops answering, WebSocket pings time out and the client reconnects."""
    server = start_server()
    proxy = await Proxy(server.port).start()
    states = StateLog()
    client = Client(
        proxy.ws_url,
        username="alice",
        room="r1",
        on_state=states,
        backoff=FAST,
        ping_interval=0.2,
        ping_timeout=0.3,
        close_timeout=0.3,
    )
    async with client:
        proxy.freeze()
        await states.wait(ClientState.RECONNECTING)
        assert client.last_close is not None
        assert client.last_close.code is None
        await states.wait(ClientState.CONNECTED, count=2)
        assert client.welcome is not None
        assert client.welcome.recovered is True
        assert await client.request("chat", {"text": "back"}) == 1
    await proxy.close()


SECRET = "client-tests-secret-long-enough-for-hs256-0123456789"


def _token(sub: str, ttl: float) -> str:
    claims: dict[str, Any] = {"sub": sub, "rooms": ["r1"], "exp": time.time() + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_token_refresh_in_band_and_after_4401(start_server: StartServer) -> None:
    """With a provider, the client refreshes its JWT in-band before `exp` (no reconnect); when
    the server refuses the fresh token (4401) it asks the provider again and reconnects. A
    client without a provider is closed at `exp` and stays closed."""
    server = start_server("--jwt-secret", SECRET, "--jwt-leeway", "0")
    calls: list[ClientState] = []

    async def provider() -> str:
        # 1: short-lived; 2: fresh, sent in-band; 3: badly signed, refused in-band (4401);
        # 4: good again, used to reconnect. Each call records the state it was made in.
        calls.append(alice.state)
        n = len(calls)
        token = _token("alice", {1: 2.0, 2: 2.5}.get(n, 60))
        return token[:-4] + "AAAA" if n == 3 else token

    states = StateLog()
    alice = Client(
        server.url,
        username="alice",
        room="r1",
        token_provider=provider,
        on_state=states,
        backoff=FAST,
    )
    async with alice:
        bob = Client(server.url, username="bob", room="r1", token=_token("bob", 2.0))
        await bob.connect()
        bob_closed = await asyncio.wait_for(bob.wait_closed(), 10)
        assert bob_closed.code == 4401
        assert bob_closed.error_code == "unauthenticated"
        await states.wait(ClientState.CONNECTED, count=2)
        # the refreshes came while connected; only the last call followed a disconnect
        assert calls == [
            ClientState.CONNECTING,
            ClientState.CONNECTED,
            ClientState.CONNECTED,
            ClientState.RECONNECTING,
        ]
        assert states.states == [
            ClientState.CONNECTING,
            ClientState.CONNECTED,
            ClientState.RECONNECTING,
            ClientState.CONNECTED,
        ]
        assert alice.last_close is not None
        assert alice.last_close.code == 4401
        assert alice.welcome is not None
        assert alice.welcome.recovered is True
        assert await alice.request("chat", {"text": "still here"}) == 1


async def test_resume_on_another_node_after_kill_9(
    start_server: StartServer, redis_server: RedisProcess
) -> None:
    """With Redis, the node a client was on is killed (-9); the client reconnects to the other
    node and sees every message once, in order, including those published meanwhile."""
    flags = ("--broker", redis_server.url)
    a = start_server(*flags, "--node-id", "a")
    b = start_server(*flags, "--node-id", "b")
    proxy = await Proxy(a.port).start()
    states = StateLog()
    seen = Collector()
    client = Client(proxy.ws_url, username="alice", room="r1", on_state=states, backoff=FAST)
    client.on("chat")(seen)
    async with client:
        for n in range(3):
            await asyncio.to_thread(HttpApi(a.url).publish, "r1", "chat", {"n": n})
        await seen.wait(3)
        proxy.refuse()
        await asyncio.to_thread(a.kill)
        await states.wait(ClientState.RECONNECTING)
        assert client.last_close is not None
        assert client.last_close.code is None
        for n in range(3, 6):
            await asyncio.to_thread(HttpApi(b.url).publish, "r1", "chat", {"n": n})
        proxy.target_port = b.port
        proxy.accept()
        await states.wait(ClientState.CONNECTED, count=2)
        assert client.welcome is not None
        assert client.welcome.recovered is True
        await asyncio.to_thread(HttpApi(b.url).publish, "r1", "chat", {"n": 6})
        frames = await seen.wait(7)
        assert [f.offset for f in frames] == list(range(1, 8))
        assert [f.payload["n"] for f in frames] == list(range(7))
    await proxy.close()
