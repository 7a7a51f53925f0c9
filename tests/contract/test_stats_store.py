"""The optional StatsStore capability, on both brokers: each node's latest stats message,
gone once its time to live has passed."""

from __future__ import annotations

import asyncio

from roomcast.brokers import StatsStore
from tests.contract.conftest import Factory


async def test_each_node_keeps_its_latest_message(make_broker: Factory) -> None:
    """Messages of two nodes are both listed; a second put replaces the node's first."""
    broker, _ = await make_broker()
    assert isinstance(broker, StatsStore)
    assert await broker.all_stats() == {}
    await broker.put_stats("n1", b'{"v":1}', 30)
    await broker.put_stats("n2", b'{"v":2}', 30)
    await broker.put_stats("n1", b'{"v":3}', 30)
    assert await broker.all_stats() == {"n1": b'{"v":3}', "n2": b'{"v":2}'}


async def test_a_message_disappears_after_its_ttl(make_broker: Factory) -> None:
    """A node that stops putting (a dead node) drops out once its ttl has run out."""
    broker, _ = await make_broker()
    assert isinstance(broker, StatsStore)
    await broker.put_stats("alive", b"{}", 30)
    await broker.put_stats("dead", b"{}", 0.05)
    # Expiry has no event to wait on: read until it happened, bounded.
    async with asyncio.timeout(5):
        while "dead" in await broker.all_stats():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert set(await broker.all_stats()) == {"alive"}
    await broker.put_stats("dead", b'{"back":1}', 30)  # a node that comes back is listed again
    assert await broker.all_stats() == {"alive": b"{}", "dead": b'{"back":1}'}


async def test_a_stopping_node_drops_its_message(make_broker: Factory) -> None:
    """drop_stats removes the node at once; dropping an absent node is harmless."""
    broker, _ = await make_broker()
    assert isinstance(broker, StatsStore)
    await broker.put_stats("n1", b"{}", 30)
    await broker.put_stats("n2", b"{}", 30)
    await broker.drop_stats("n1")
    await broker.drop_stats("never-put")
    assert set(await broker.all_stats()) == {"n2"}
