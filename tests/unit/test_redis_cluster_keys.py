"""Redis Cluster: the URL form, and every script's keys (and a room's channel) in one slot."""

from __future__ import annotations

import pytest

from roomcast.brokers import check_url
from roomcast.brokers.redis import wire
from roomcast.brokers.redis.cluster import parse_cluster_url, shard_url
from roomcast.brokers.redis.redispy import key_slot
from roomcast.errors import ConfigError

ROOMS = ["r1", "a}b", "}x", "{y}", "}", "{", "a{b}c", "é", "x" * 128]


def test_seed_nodes_and_credentials_are_read() -> None:
    """Seeds in order, with an optional user and password (percent-decoded)."""
    assert parse_cluster_url("redis+cluster://127.0.0.1:7000,h2:7001") == (
        [("127.0.0.1", 7000), ("h2", 7001)],
        None,
        None,
    )
    assert parse_cluster_url("redis+cluster://u:p%40ss@h:7000/0") == ([("h", 7000)], "u", "p@ss")
    assert parse_cluster_url("redis+cluster://:secret@[::1]:7000") == (
        [("::1", 7000)],
        None,
        "secret",
    )
    assert shard_url("redis+cluster://u:p%40ss@h:7000", "10.0.0.2", 7002) == (
        "redis://u:p%40ss@10.0.0.2:7002/0"
    )


BAD = {
    "no node": ("redis+cluster://", "HOST:PORT"),
    "no port": ("redis+cluster://h1", "HOST:PORT"),
    "port not a number": ("redis+cluster://h1:x", "HOST:PORT"),
    "port too high": ("redis+cluster://h1:70000", "HOST:PORT"),
    "empty node": ("redis+cluster://h1:7000,,h2:7001", "HOST:PORT"),
    "node twice": ("redis+cluster://h1:7000,h1:7000", "twice"),
    "database 1": ("redis+cluster://h1:7000/1", "database 0"),
    "options": ("redis+cluster://h1:7000?timeout=1", "no options"),
}


@pytest.mark.parametrize(("url", "mention"), BAD.values(), ids=BAD.keys())
def test_bad_cluster_urls_are_refused_clearly(url: str, mention: str) -> None:
    """A malformed redis+cluster:// URL is a ConfigError naming the rule it breaks."""
    with pytest.raises(ConfigError, match=mention):
        check_url(url)


@pytest.mark.parametrize("room", ROOMS)
def test_every_key_of_a_room_and_its_channel_share_one_slot(room: str) -> None:
    """The keys of each room script (and of a join's or a sweep's room step) and the room's
    channel hash to one slot, whatever braces the room id holds."""
    keys = wire.room_keys(room) + wire.presence_keys(room) + [wire.room_slot_key(room)]
    slots = {key_slot(key) for key in keys}
    slots.add(key_slot(wire.channel(wire.channel_prefix(0), room)))
    assert len(slots) == 1, (room, keys)


@pytest.mark.parametrize("node_id", ["n1", "}n", "{a}", "host-1234"])
def test_every_key_of_a_node_shares_one_slot(node_id: str) -> None:
    """LEASE, SWEEP_CLAIM and SWEEP_DONE touch one node's keys only: one slot."""
    keys = [*wire.node_keys(node_id), wire.stats_key(node_id)]
    assert len({key_slot(key) for key in keys}) == 1, keys


def test_rooms_whose_ids_differ_do_not_share_keys() -> None:
    """A room id starting with `}` gets a tag no other room id can have."""
    names = {key for room in ROOMS for key in wire.room_keys(room)}
    assert len(names) == 4 * len(ROOMS)
