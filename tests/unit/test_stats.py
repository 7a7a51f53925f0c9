"""Node stats: the cluster view built from the nodes' messages, one node's measure, and the
settings that turn the admin page on."""

from __future__ import annotations

import pytest

from roomcast.commands import PublishToRoom
from roomcast.errors import ConfigError
from roomcast.node import Node
from roomcast.settings import Settings
from roomcast.stats import TOP_ROOMS, cluster_view


def message(node: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node": node,
        "started": 100.0,
        "connections": 0,
        "rooms": 0,
        "in": 0.0,
        "out": 0.0,
        "published": 0.0,
        "broker": True,
        "disconnects": {},
        "busiest": [],
    }
    return {**base, **fields}


def test_cluster_view_sums_nodes_rooms_and_closes() -> None:
    """Totals, room member counts and rates, and closes by code add up over the nodes; nodes
    come sorted by id with their uptime."""
    view = cluster_view(
        [
            message(
                "n2",
                connections=2,
                **{"in": 1.5, "out": 3.0},
                disconnects={"4499": 1},
                busiest=[{"roomID": "r1", "members": 2, "rate": 1.0}],
            ),
            message(
                "n1",
                connections=1,
                started=130.0,
                **{"in": 0.5, "out": 1.0},
                disconnects={"4499": 2, "4408": 1},
                busiest=[
                    {"roomID": "r1", "members": 1, "rate": 0.5},
                    {"roomID": "r2", "members": 5, "rate": 0.0},
                ],
            ),
        ],
        now=160.0,
    )
    assert [n["node"] for n in view["nodes"]] == ["n1", "n2"]
    assert [n["uptime"] for n in view["nodes"]] == [30.0, 60.0]
    assert view["totals"] == {
        "nodes": 2,
        "connections": 3,
        "in": 2.0,
        "out": 4.0,
        "published": 0.0,
    }
    assert view["rooms"] == [
        {"roomID": "r1", "members": 3, "rate": 1.5},
        {"roomID": "r2", "members": 5, "rate": 0.0},
    ]
    assert view["disconnects"] == {"4408": 1, "4499": 3}


def test_cluster_view_lists_the_busiest_rooms_only() -> None:
    """Rooms rank by message rate, then members; the view keeps TOP_ROOMS of them."""
    rows = [{"roomID": f"r{i:03d}", "members": i, "rate": 0.0} for i in range(TOP_ROOMS + 5)]
    rows[0]["rate"] = 9.0
    view = cluster_view([message("n1", busiest=rows)], now=100.0)
    assert len(view["rooms"]) == TOP_ROOMS
    assert view["rooms"][0]["roomID"] == "r000"
    assert view["rooms"][1]["members"] == TOP_ROOMS + 4


async def test_a_node_measures_its_publishes_per_room() -> None:
    """A started node's stats count its publishes per room and per second, then start over."""
    node = Node(Settings(node_id="n1", stats_interval=60))
    await node.start()
    try:
        for _ in range(3):
            await node.commands.send(PublishToRoom("busy", "t", 1))
        await node.commands.send(PublishToRoom("calm", "t", 1))
        stats = node.stats.measure()
        assert stats["node"] == "n1"
        assert stats["broker"] is True
        rates = {row["roomID"]: row["rate"] for row in stats["busiest"]}
        assert list(rates) == ["busy", "calm"]
        assert rates["busy"] > rates["calm"] > 0
        assert all(row["rate"] == 0 for row in node.stats.measure()["busiest"])
        view = await node.stats.cluster()
        assert [n["node"] for n in view["nodes"]] == ["n1"]
    finally:
        await node.shutdown()
    assert node.publish_counts is None


def test_node_without_stats_counts_nothing() -> None:
    """With --stats-interval none the node keeps no per-room counts."""
    assert Node(Settings(stats_interval=None)).publish_counts is None


@pytest.mark.parametrize(
    ("changes", "enabled"),
    [
        ({}, False),
        ({"api_keys": ("k",)}, True),
        ({"admin": True}, True),
        ({"admin": False, "api_keys": ("k",)}, False),
        ({"admin": True, "host": "0.0.0.0", "api_keys": ("k",)}, True),
    ],
)
def test_admin_is_on_with_the_flag_or_an_api_key(changes: dict[str, object], enabled: bool) -> None:
    """`--admin` unset follows the API key; true or false wins."""
    assert Settings(**changes).admin_enabled is enabled  # type: ignore[arg-type]


def test_admin_without_key_beyond_loopback_is_refused() -> None:
    """The admin page is never open without a key on a non-loopback address."""
    with pytest.raises(ConfigError, match="--api-key"):
        Settings(admin=True, host="0.0.0.0")


def test_stats_interval_must_be_positive() -> None:
    """A zero or negative interval is a configuration error (none turns the stats off)."""
    with pytest.raises(ConfigError, match="stats-interval"):
        Settings(stats_interval=0)
    env = {"ROOMCAST_STATS_INTERVAL": "none", "ROOMCAST_ADMIN": "auto"}
    settings = Settings.from_sources({}, env)
    assert settings.stats_interval is None
    assert settings.admin is None
    with pytest.raises(ConfigError, match="ROOMCAST_ADMIN"):
        Settings.from_sources({}, {"ROOMCAST_ADMIN": "maybe"})
