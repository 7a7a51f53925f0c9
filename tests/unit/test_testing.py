"""roomcast.testing: an application's roomcast in-process, test clients and tokens."""

from __future__ import annotations

import httpx
import pytest

from roomcast import (
    CloseCode,
    ConnectRequest,
    Context,
    ErrorCode,
    Identity,
    MemberJoined,
    PublishToRoom,
    Refused,
    Roomcast,
    Settings,
)
from roomcast.testing import ClientClosed, TestServer, make_token

SECRET = "a-test-secret-that-is-long-enough-for-hs512-0123456789abcdef0123456789abcdef"


def chat_app() -> Roomcast:
    """A small application: a handler, a relay topic and an event subscriber."""
    rc = Roomcast()

    @rc.on("shout")
    async def shout(ctx: Context) -> None:
        await ctx.broadcast("shout", {"text": str(ctx.payload["text"]).upper()})

    @rc.on_event(MemberJoined)
    async def joined(event: MemberJoined) -> None:
        await rc.send(PublishToRoom(event.room, "hello", {"to": event.username}))

    return rc


async def test_handler_and_relay_and_ack() -> None:
    """A client's frame reaches the handler; its broadcast and the ack come back."""
    async with TestServer(chat_app()) as server:
        alice = await server.connect("alice", "lobby")
        assert alice.welcome["topic"] == "welcome"
        assert (await alice.receive_topic("hello"))["payload"] == {"to": "alice"}
        await alice.send("shout", {"text": "hi"}, id=1)
        frame = await alice.receive()
        assert (frame["topic"], frame["payload"], frame["from"]) == (
            "shout",
            {"text": "HI"},
            "alice",
        )
        # the ack carries the offset of the handler's broadcast
        ack = {"topic": "ack", "payload": {"id": 1, "offset": frame["offset"]}}
        assert await alice.receive() == ack
        await alice.send("chat", "plain")
        assert (await alice.receive())["payload"] == "plain"


async def test_two_clients_see_each_other() -> None:
    """A second member's join is announced to the first; a relayed message reaches both."""
    async with TestServer(chat_app()) as server:
        alice = await server.connect("alice", "room1")
        bob = await server.connect("bob", "room1")
        assert (await alice.receive_topic("presence.join"))["payload"]["username"] == "bob"
        await bob.send("chat", {"text": "yo"})
        assert (await alice.receive_topic("chat"))["payload"] == {"text": "yo"}
        assert (await bob.receive_topic("chat"))["from"] == "bob"


async def test_commands_reach_test_clients() -> None:
    """A command sent by the application is delivered to the test clients."""
    rc = Roomcast()
    async with TestServer(rc) as server:
        alice = await server.connect("alice", "news")
        offset = await rc.send(PublishToRoom("news", "headline", {"text": "x"}))
        frame = await alice.receive_topic("headline")
        assert frame["offset"] == offset


async def test_malformed_frame_gets_an_error() -> None:
    """`send_raw` sends text as it is: a frame that is not JSON gets an error frame."""
    async with TestServer(Roomcast()) as server:
        alice = await server.connect("alice", "r")
        await alice.send_raw("{not json")
        frame = await alice.receive()
        assert frame["topic"] == "error"
        assert frame["payload"]["code"] == "invalid_json"


async def test_duplicate_name_is_refused() -> None:
    """A refusal raises ClientClosed with its close code, or is returned with joined=False."""
    async with TestServer(Roomcast()) as server:
        await server.connect("alice", "r")
        with pytest.raises(ClientClosed) as refused:
            await server.connect("alice", "r")
        assert refused.value.code == 4409
        again = await server.connect("alice", "r", joined=False)
        assert again.welcome["topic"] == "error"
        code, _ = await again.wait_closed()
        assert code == 4409
        assert again.closed is not None


async def test_client_close_leaves_the_room() -> None:
    """Closing a test client makes it leave: the others see presence.leave."""
    async with TestServer(Roomcast()) as server:
        alice = await server.connect("alice", "r")
        bob = await server.connect("bob", "r")
        await alice.receive_topic("presence.join")
        await bob.close()
        assert (await alice.receive_topic("presence.leave"))["payload"]["username"] == "bob"


async def test_tokens_from_make_token() -> None:
    """make_token signs tokens the JWT resolver accepts; rooms and expiry are enforced."""
    rc = Roomcast(Settings(jwt_secret=SECRET))
    async with TestServer(rc) as server:
        ok = await server.connect(
            None, "team-a", token=make_token(SECRET, "alice", rooms=["team-*"])
        )
        assert ok.welcome["payload"]["username"] == "alice"
        for token, code in (
            (make_token(SECRET, "bob", rooms=["lobby"]), CloseCode.FORBIDDEN),
            (make_token(SECRET, "bob", expires_in=-60), CloseCode.UNAUTHENTICATED),
            (make_token("another-secret-also-long-enough-0123456789abcdef", "bob"), 4401),
        ):
            refused = await server.connect(None, "team-a", token=token, joined=False)
            assert refused.welcome["topic"] == "error"
            code_seen, _ = await refused.wait_closed()
            assert code_seen == code


async def test_custom_resolver_sees_headers() -> None:
    """Headers passed to connect reach the application's identity resolver."""

    async def resolve(request: ConnectRequest) -> Identity:
        if request.headers.get("cookie") != "sid=good":
            raise Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "log in")
        return Identity(username="carol")

    async with TestServer(Roomcast(resolver=resolve)) as server:
        carol = await server.connect(None, "r", headers={"cookie": "sid=good"})
        assert carol.welcome["payload"]["username"] == "carol"
        with pytest.raises(ClientClosed) as refused:
            await server.connect(None, "r", headers={"cookie": "sid=bad"})
        assert refused.value.code == CloseCode.UNAUTHENTICATED


async def test_http_api_in_process_beside_test_clients() -> None:
    """The HTTP API answers in-process through httpx's ASGI transport, as docs/testing.md says."""
    rc = Roomcast()
    async with TestServer(rc) as server:
        await server.connect("alice", "r")
        transport = httpx.ASGITransport(app=rc)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            members = (await http.get("/api/v1/rooms/r/members")).json()
        assert members == {"members": ["alice"]}


async def test_connection_in_no_room_joins_and_leaves_rooms() -> None:
    """With room None the connection starts in no room (v1.1); join and leave change rooms."""
    async with TestServer(Roomcast()) as server:
        alice = await server.connect("alice", None)
        assert alice.welcome["payload"]["rooms"] == []
        bob = await server.connect("bob", "r2")
        joined = await alice.join("r2")
        assert sorted(joined["payload"]["members"]) == ["alice", "bob"]
        await bob.send("chat", "hi")
        assert (await alice.receive_topic("chat"))["room"] == "r2"
        await bob.send("chat", "kept")
        await bob.receive_topic("chat")  # delivered to the room: alice has it queued too
        await alice.join("r3")
        assert (await alice.receive())["payload"] == "kept"  # kept across the join
        await alice.leave("r2")
        assert (await bob.receive_topic("presence.leave"))["payload"]["username"] == "alice"
        with pytest.raises(AssertionError, match="not_joined"):
            await alice.leave("r2")
