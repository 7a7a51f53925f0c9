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


class Deferred:
    """A memory broker that batches publishes (`DeferredPublish`): each publish waits in a
    future until the test answers it, in any order it likes."""

    batches_publishes = True

    def __init__(self) -> None:
        self._inner = MemoryBroker()
        self.pending: list[tuple[asyncio.Future[Publication], tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "publish_now":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def publish_soon(
        self,
        room: str,
        prefix: str,
        to: str | None = None,
        exclude: str | None = None,
        *,
        key: str | None = None,
    ) -> asyncio.Future[Publication]:
        future: asyncio.Future[Publication] = asyncio.get_running_loop().create_future()
        self.pending.append((future, (room, prefix, to, exclude, key)))
        return future

    async def answer(self, index: int, error: Exception | None = None) -> None:
        """Publish the `index`-th pending call for real (or fail it with `error`)."""
        future, (room, prefix, to, exclude, key) = self.pending[index]
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(await self._inner.publish(room, prefix, to, exclude, key=key))


async def test_deferred_relays_are_answered_in_frame_order() -> None:
    """On a broker that batches (`DeferredPublish`), a connection's frames are all asked for
    at once, without a task each, and answered in frame order whatever order the broker
    answers them in; a failed one answers its error in its place."""
    from roomcast.errors import BrokerUnavailable

    broker = Deferred()
    node = Node(Settings(stats_interval=None), broker=broker)  # type: ignore[arg-type]
    seen: list[int] = []

    async def on_published(event: MessagePublished) -> None:
        seen.append(event.offset)

    node.events.subscribe(MessagePublished, on_published)
    session, alice, _bob = await pair(node)
    try:
        tasks = len(asyncio.all_tasks())
        for i in (1, 2, 3):
            assert session.handle(f'{{"topic":"chat","payload":{i},"id":{i}}}') is None
        assert len(broker.pending) == 3
        assert len(asyncio.all_tasks()) == tasks  # futures, not tasks
        assert session.dispatching
        await broker.answer(2)
        await broker.answer(1, BrokerUnavailable("the broker (redis) is unavailable"))
        await asyncio.sleep(0)  # callbacks run on the next loop iteration
        assert [f["topic"] for f in alice.sent] == ["chat"]  # frame 1 is not answered yet
        await broker.answer(0)
        await asyncio.wait_for(session.wait_idle(), 5)
        answers = [f["payload"] for f in alice.sent if f["topic"] in ("ack", "error")]
        assert [a["id"] for a in answers] == [1, 2, 3]
        assert answers[1]["code"] == "unavailable"
        assert [answers[0]["offset"], answers[2]["offset"]] == [2, 1]
        assert node._publishing == 0
        assert node.metrics.registry.get_sample_value("roomcast_broker_errors_total") == 1
        await node.events.drain(5)
        assert sorted(seen) == [1, 2]
    finally:
        await node.shutdown()
