"""Broker URLs naming several servers (a list of Redis servers, Sentinel) and the room hash."""

from __future__ import annotations

import collections

import pytest

from roomcast.brokers import check_url, from_url, is_shared
from roomcast.brokers.sharded import ShardedBroker, jump_hash, shard_of
from roomcast.brokers.urls import SentinelURL, parse_sentinel, shard_urls
from roomcast.errors import ConfigError

BAD = {
    "empty part": ("redis://a:1/0,,redis://b:2/0", "#1 of 3 is empty"),
    "trailing comma": ("redis://a:1/0,", "#1 of 2 is empty"),
    "mixed schemes": ("redis://a:1/0,rediss://b:2/0", "mixed schemes"),
    "another scheme": ("redis://a:1/0,memory://", "must be a redis://"),
    "sentinel in a list": ("redis://a:1/0,redis+sentinel://b:2/m/0", "must be a redis://"),
    "no host": ("redis://a:1/0,redis://:2/0", "no host"),
    "bad port": ("redis://a:1/0,redis://b:port/0", "bad host or port"),
    "bad database": ("redis://a:1/0,redis://b:2/zero", "the database must be a number"),
    "duplicate server": ("redis://a:1/0,redis://b:2/0,redis://a:1/1", "same server as #0"),
    "duplicate default port": ("redis://a/0,redis://a:6379/0", "same server as #0"),
    "options": ("redis://a:1/0,redis://b:2/0?ssl=1", "options"),
    "sentinel without master": ("redis+sentinel://s:26379", "master name is missing"),
    "sentinel empty master": ("redis+sentinel://s:26379//0", "master name is missing"),
    "sentinel without address": ("redis+sentinel:///m/0", "no Sentinel address"),
    "sentinel empty address": ("redis+sentinel://s:1,,t:2/m/0", "address #1 is empty"),
    "sentinel twice": ("redis+sentinel://s:1,s:1/m/0", "listed twice"),
    "sentinel bad port": ("redis+sentinel://s:x/m/0", "bad host or port"),
    "sentinel bad database": ("redis+sentinel://s:1/m/x", "must be a number"),
    "sentinel long path": ("redis+sentinel://s:1/m/0/1", "unexpected path"),
    "unknown scheme": ("redis+nope://a:1", "broker must be"),
}


@pytest.mark.parametrize(("url", "mention"), BAD.values(), ids=BAD.keys())
def test_a_malformed_url_is_refused_saying_why(url: str, mention: str) -> None:
    """Each malformed form gets a ConfigError that names what is wrong."""
    with pytest.raises(ConfigError) as caught:
        check_url(url)
    assert mention in caught.value.message


def test_a_list_keeps_its_order() -> None:
    """The servers of a list come back as given, in order; a TLS list is one too."""
    url = "redis://a:1/0,redis://:pw@b:2/3,redis://[::1]:3"
    assert shard_urls(url) == ["redis://a:1/0", "redis://:pw@b:2/3", "redis://[::1]:3"]
    assert shard_urls("rediss://a:1/0,rediss://b:1/0") == ["rediss://a:1/0", "rediss://b:1/0"]
    assert is_shared(url)
    assert is_shared("redis+sentinel://s:1/m/0")


def test_sentinel_url_parts() -> None:
    """Addresses (default port 26379), master name, database, credentials for the master."""
    assert parse_sentinel("redis+sentinel://u:p%40ss@s1:5000,s2,[::1]:7/my%20master/2") == (
        SentinelURL(
            (("s1", 5000), ("s2", 26379), ("::1", 7)), "my master", 2, "u", "p@ss", tls=False
        )
    )
    assert parse_sentinel("rediss+sentinel://s/m") == SentinelURL(
        (("s", 26379),), "m", 0, None, None, tls=True
    )


def test_from_url_builds_a_sharded_broker_in_list_order() -> None:
    """A list becomes one broker per server, named by its redacted URL, in order."""
    broker = from_url("redis://a:1/0,redis://:secret@b:2/0")
    assert isinstance(broker, ShardedBroker)
    assert broker.names == ["redis://a:1/0", "redis://***@b:2/0"]
    assert len(broker.shards) == 2


def test_jump_hash_known_values_and_range() -> None:
    """Values other implementations of the algorithm agree on; always a bucket in range."""
    assert jump_hash(10863919174838991, 11) == 6
    assert jump_hash(2016238256797177309, 11) == 3
    assert [jump_hash(key, 1) for key in (0, 1, 2**63, 2**64 - 1)] == [0, 0, 0, 0]
    assert all(0 <= jump_hash(key * 7919, 13) < 13 for key in range(2000))


def test_rooms_spread_evenly_and_move_only_to_a_new_server() -> None:
    """Rooms spread about evenly; adding a 4th server moves about a quarter of the rooms, every
    one of them to the new server; the others stay where they were."""
    rooms = [f"room-{i}" for i in range(20000)]
    counts = collections.Counter(shard_of(room, 3) for room in rooms)
    assert all(6200 < counts[i] < 7100 for i in range(3)), counts
    moved = [room for room in rooms if shard_of(room, 3) != shard_of(room, 4)]
    assert 4500 < len(moved) < 5500
    assert {shard_of(room, 4) for room in moved} == {3}
    assert shard_of("lobby", 2) == shard_of("lobby", 2) == 1  # stable across runs
