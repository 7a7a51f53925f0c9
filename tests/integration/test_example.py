"""examples/fastapi_app.py under uvicorn: handlers, events and commands through the library."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from roomcast.client import Client as RoomClient
from roomcast.client import ClientClosed
from tests.harness import Client, LogReader, uvicorn_app


@dataclass
class App:
    """The example app running as a real process."""

    url: str
    log: LogReader

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/rt/api/v1/ws"


@pytest.fixture(scope="module")
def example() -> Iterator[App]:
    """`uvicorn --app-dir examples fastapi_app:app` on a free port."""
    with uvicorn_app("fastapi_app:app", "examples") as (url, log):
        yield App(url, log)


async def member(app: App, room: str, name: str) -> Client:
    """Join `room` and read the greeting the MemberJoined subscriber sends."""
    client = await Client.connect(app.ws_url, name, room)
    await client.join()
    greeting = await client.recv()
    assert greeting["topic"] == "greeting"
    assert greeting["payload"] == {"text": f"hi {name}"}
    assert greeting["from"] == "$server"
    assert greeting["to"] == name
    return client


async def test_event_subscriber_greets_new_member(example: App) -> None:
    """The MemberJoined subscriber sends each new member (only) a private greeting."""
    alice = await member(example, "greet", "alice")
    bob = await member(example, "greet", "bob")
    assert (await alice.recv())["topic"] == "presence.join"
    await alice.barrier()
    await alice.close()
    await bob.close()


async def test_handler_replaces_relay(example: App) -> None:
    """A topic with a handler runs the handler instead of the default relay."""
    alice = await member(example, "shout", "alice")
    await alice.send({"topic": "shout", "payload": {"text": "hello"}, "id": 1})
    frame = await alice.recv()
    assert frame["topic"] == "shout"
    assert frame["payload"] == {"text": "HELLO"}
    assert frame["from"] == "alice"
    # the ack carries the offset of the handler's broadcast
    assert await alice.recv() == {"topic": "ack", "payload": {"id": 1, "offset": frame["offset"]}}
    # Topics without a handler are still relayed.
    await alice.send({"topic": "chat", "payload": "plain"})
    assert (await alice.recv())["payload"] == "plain"
    await alice.close()


async def test_handlers_of_a_topic_run_concurrently(example: App) -> None:
    """Every handler of a topic runs, concurrently (one waits for another), then one ack."""
    alice = await member(example, "orders", "alice")
    bob = await member(example, "orders", "bob")
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "order", "payload": {"item": "tea", "card": "4242"}, "id": "o1"})
    frames = [await alice.recv() for _ in range(3)]
    assert frames[0] == {"topic": "order.received", "payload": {"item": "tea"}}
    assert frames[1]["topic"] == "order.placed"
    assert frames[1]["payload"] == {"item": "tea", "by": "alice"}
    assert frames[2] == {"topic": "ack", "payload": {"id": "o1", "offset": frames[1]["offset"]}}
    placed = await bob.recv()
    assert placed["topic"] == "order.placed"
    assert placed["offset"] == frames[1]["offset"]
    await alice.barrier()
    await bob.barrier()
    await alice.close()
    await bob.close()


async def test_raising_handler_gives_handler_error_and_others_run(example: App) -> None:
    """A handler that raises gives the sender one handler_error with the id and a logged
    traceback; the topic's other handlers still run."""
    alice = await member(example, "fail", "alice")
    bob = await member(example, "fail", "bob")
    await alice.recv_topic("presence.join")
    await alice.send({"topic": "order", "payload": {"item": "cake", "card": "0000"}, "id": 9})
    frames = [await alice.recv() for _ in range(3)]
    assert frames[0] == {"topic": "order.received", "payload": {"item": "cake"}}
    assert frames[1]["topic"] == "order.placed"
    assert frames[2]["topic"] == "error"
    assert frames[2]["payload"]["code"] == "handler_error"
    assert frames[2]["payload"]["id"] == 9
    assert (await bob.recv())["topic"] == "order.placed"
    await alice.barrier()
    await bob.barrier()
    example.log.wait_for("handler.error", timeout=5)
    example.log.wait_for("PaymentDeclined: card declined", timeout=5)
    # The connection stays usable.
    await alice.send({"topic": "order", "payload": {"item": "pie"}, "id": 10})
    placed = await alice.recv_topic("order.placed")
    assert (await alice.recv_topic("ack"))["payload"] == {"id": 10, "offset": placed["offset"]}
    await alice.close()
    await bob.close()


async def test_http_routes_send_commands(example: App) -> None:
    """The app's routes send PublishToRoom and SendToMember; an absent member is a 404."""
    alice = await member(example, "cmd", "alice")
    bob = await member(example, "cmd", "bob")
    await alice.recv_topic("presence.join")
    async with httpx.AsyncClient(base_url=example.url, timeout=5) as http:
        response = await http.post("/rooms/cmd/announce", json={"text": "closing soon"})
        assert response.status_code == 202
        offset = response.json()["offset"]
        for client in (alice, bob):
            frame = await client.recv()
            assert frame["topic"] == "announcement"
            assert frame["payload"] == {"text": "closing soon"}
            assert frame["from"] == "$server"
            assert frame["offset"] == offset
        response = await http.post("/rooms/cmd/members/bob/nudge")
        assert response.status_code == 202
        nudge = await bob.recv()
        assert nudge["topic"] == "nudge"
        assert nudge["offset"] == response.json()["offset"]
        await alice.barrier()
        response = await http.post("/rooms/cmd/members/zed/nudge")
        assert response.status_code == 404
        # roomcast's own HTTP API is mounted under /rt.
        members = await http.get("/rt/api/v1/rooms/cmd/members")
        assert members.json() == {"members": ["alice", "bob"]}
    await alice.close()
    await bob.close()


async def test_python_client_at_the_mount_point(example: App) -> None:
    """The Python client given the app's mount point (`.../rt`) adds `/api/v1/ws` as the JS
    client does; request() of a topic whose handler broadcasts returns that offset; a wrong
    path is refused with HTTP 404."""
    base = example.url.replace("http://", "ws://") + "/rt"
    async with RoomClient(base, username="alice", room="mount") as alice:
        assert (await alice.recv(timeout=5)).topic == "greeting"
        offset = await alice.request("shout", {"text": "hi"})
        frame = await alice.recv(timeout=5)
        assert (frame.topic, frame.payload, frame.offset) == ("shout", {"text": "HI"}, offset)
        assert isinstance(offset, int)
    wrong = RoomClient(base + "/api/v1/ws/nope", username="bob", room="mount")
    with pytest.raises(ClientClosed, match="404"):
        await wrong.connect()
