"""The direct relay of a room message: handled without a coroutine on a broker that publishes
synchronously, with handlers, the event bus and other brokers on the general path."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from roomcast.admission import open_session
from roomcast.brokers import MemoryBroker, Publication
from roomcast.context import Context
from roomcast.events import MessagePublished
from roomcast.node import Node
from roomcast.session import Session
from roomcast.settings import Settings


class Frames:
    """A Connection that keeps the frames sent to it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        self.sent.append(orjson.loads(data))

    send_later = send

    def close(self, code: int, reason: str = "") -> None:
        pass

    def abort(self, code: int, reason: str = "") -> None:
        pass

    @property
    def buffered(self) -> int:
        return 0


class AsyncOnly:
    """A memory broker seen through `publish` only (no `publish_now`), as any remote one."""

    def __init__(self) -> None:
        self._inner = MemoryBroker()

    def __getattr__(self, name: str) -> Any:
        if name == "publish_now":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def pair(node: Node) -> tuple[Session, Frames, Frames]:
    """Two members of room r1: alice's session and both connections."""
    alice, bob = Frames(), Frames()
    session = await open_session(node, alice, {"username": "alice", "roomID": "r1"}, {})
    assert session is not None
    assert await open_session(node, bob, {"username": "bob", "roomID": "r1"}, {}) is not None
    alice.sent.clear()
    bob.sent.clear()
    return session, alice, bob


async def test_a_room_message_is_handled_without_a_coroutine() -> None:
    """On memory:// a relayed frame is published, delivered and acked in `handle` itself,
    and MessagePublished still reaches its subscriber."""
    node = Node(Settings(stats_interval=None))
    seen: list[MessagePublished] = []
    got = asyncio.Event()

    async def on_published(event: MessagePublished) -> None:
        seen.append(event)
        got.set()

    node.events.subscribe(MessagePublished, on_published)
    session, alice, bob = await pair(node)
    try:
        assert session.handle('{"topic":"chat","payload":"hi","id":7}') is None
        message = {"topic": "chat", "payload": "hi", "room": "r1", "from": "alice", "offset": 1}
        assert bob.sent == [message]
        assert alice.sent == [message, {"topic": "ack", "payload": {"id": 7, "offset": 1}}]
        await asyncio.wait_for(got.wait(), 5)
        assert (seen[0].room, seen[0].offset, seen[0].payload) == ("r1", 1, "hi")
    finally:
        await node.shutdown()


async def test_a_topic_with_a_handler_takes_the_general_path() -> None:
    """A registered handler still sees its frames: `handle` leaves them to a coroutine."""
    node = Node(Settings(stats_interval=None))
    handled: list[Any] = []

    async def handler(ctx: Context) -> None:
        handled.append(ctx.payload)

    node.registry.add("chat", handler)
    session, alice, bob = await pair(node)
    try:
        rest = session.handle('{"topic":"chat","payload":"hi","id":1}')
        assert rest is not None
        assert handled == []
        assert bob.sent == []
        await rest
        assert handled == ["hi"]
        assert bob.sent == []  # the handler published nothing
        assert alice.sent == [{"topic": "ack", "payload": {"id": 1}}]
    finally:
        await node.shutdown()


async def test_a_broker_without_publish_now_is_awaited() -> None:
    """Node.publish_now does nothing on a broker that cannot publish synchronously; the frame
    is then published through `publish`, with the same result."""
    node = Node(Settings(stats_interval=None), broker=AsyncOnly())  # type: ignore[arg-type]
    session, alice, bob = await pair(node)
    try:
        assert node.publish_now("r1", "chat", "x", sender="alice") is None
        assert (await node.history("r1")).offset == 0
        rest = session.handle('{"topic":"chat","payload":"hi","id":2}')
        assert rest is not None
        await rest
        assert [f["offset"] for f in bob.sent] == [1]
        assert alice.sent[-1] == {"topic": "ack", "payload": {"id": 2, "offset": 1}}
    finally:
        await node.shutdown()


async def test_publish_now_counts_a_duplicate_key_once() -> None:
    """A repeated key through publish_now answers the first offset with `duplicate`."""
    node = Node(Settings(stats_interval=None))
    await node.start()
    try:
        first = node.publish_now("r1", "chat", 1, key="k")
        again = node.publish_now("r1", "chat", 2, key="k")
        assert isinstance(first, Publication)
        assert isinstance(again, Publication)
        assert (first.offset, first.duplicate, again.offset, again.duplicate) == (1, False, 1, True)
        assert node.metrics.publications.value == 1
    finally:
        await node.shutdown()
