"""Leaks: a bounded run of connection churn and messages leaves no room, connection, task or
Redis key behind (the longer run with memory numbers is bench/soak.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pytest

from tests.harness import RedisProcess, ServerProcess
from tests.integration.reliability import churn, metric, poll_until

StartServer = Callable[..., ServerProcess]

SECONDS = float(os.environ.get("ROOMCAST_SOAK_SECONDS", "4"))


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_churn_leaves_nothing_behind(
    start_server: StartServer, request: pytest.FixtureRequest, broker: str
) -> None:
    """After churn (joins, acknowledged frames, clean closes and dropped TCP connections, HTTP
    publishes) stops: no room listed, no connection, the task count back to its idle value,
    and in Redis only the rooms' history keys (all with a TTL) and the live nodes' leases."""
    redis: RedisProcess | None = None
    if broker == "memory":
        nodes = [start_server()]
    else:
        redis = request.getfixturevalue("redis_server")
        assert redis is not None
        nodes = [start_server("--broker", redis.url, "--node-id", f"n{i}") for i in range(2)]
    idle = [metric(node, "roomcast_tasks") for node in nodes]
    stats = await churn(
        [n.ws_url for n in nodes], [n.url for n in nodes], seconds=SECONDS, workers=12, rooms=8
    )
    assert stats.sessions > 30, stats
    assert stats.dropped > 3, stats
    assert stats.acked == stats.sent
    # Dropped connections are noticed by the server's read; poll until all are gone.
    await poll_until(
        lambda: (
            not any(metric(n, "roomcast_connections") for n in nodes)
            and all(metric(n, "roomcast_tasks") <= b for n, b in zip(nodes, idle, strict=True))
        ),
        timeout=15,
        every=0.2,
    )
    for node in nodes:
        with node.http() as http:
            assert http.get("/api/v1/rooms").json() == {"rooms": []}
        assert metric(node, "roomcast_rooms") == 0.0
    if redis is not None:
        await _assert_only_history_keys(redis, [f"n{i}" for i in range(len(nodes))])


async def _assert_only_history_keys(redis: RedisProcess, node_ids: list[str]) -> None:
    import redis.asyncio as aioredis

    store = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        keys = sorted(await store.keys("*"))
        history = re.compile(r"^rc:\{soak-\d+\}:[oes]$")
        from roomcast.brokers.redis import wire
        from roomcast.brokers.redis.layout import LAYOUT_KEY

        stats = {wire.stats_key(n) for n in node_ids}
        nodes = {wire.lease_key(n) for n in node_ids} | {wire.NODES_KEY, wire.STATS_KEY} | stats
        nodes.add(LAYOUT_KEY)  # the server's place in the nodes' list, kept for good
        leftovers = [k for k in keys if not history.match(k) and k not in nodes]
        assert leftovers == [], leftovers
        for key in stats:  # the live nodes' stats messages expire by themselves
            assert await store.pttl(key) > 0, key
        for key in keys:
            if history.match(key):
                assert await store.ttl(key) > 0, key
    finally:
        await store.aclose()
