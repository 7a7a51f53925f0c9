"""The Redis broker's wire format (brokers/redis/wire.py), offline."""

from __future__ import annotations

import pytest

from roomcast.brokers import Publication, Signal
from roomcast.brokers.redis import wire


def test_signal_round_trips() -> None:
    """A signal encoded by one node decodes to the same signal on another."""
    signal = Signal("leave", "r1", "bob", "c1", "n1", "node_lost")
    assert wire.decode("r1", wire.encode_signal(signal)) == signal


def test_publication_in_the_scripts_format_decodes() -> None:
    """`p<epoch>\\n<offset>\\n<to>\\n<frame>` decodes to a publication, the frame untouched."""
    frame = '{"topic":"t","payload":"a\\nb","room":"r1","from":"x","offset":7}'
    data = f"pE1\n7\nbob\n{frame}".encode()
    assert wire.decode("r1", data) == Publication("r1", 7, frame, "bob", "E1")
    assert wire.decode("r1", f"pE1\n7\n\n{frame}".encode()).to is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"p",
        b"pE1\n7\n",
        b"pE1\nseven\n\n{}",
        b"p\xff\xfe\n1\n\n{}",
        b"s",
        b"snot json",
        b'{"a":1}',
        b's["join","bob"]',
        b's["wave","bob","c1","n1",""]',
        b's["join",1,"c1","n1",""]',
    ],
)
def test_foreign_messages_are_refused(data: bytes) -> None:
    """Anything else on a room channel is a WireError, never a crash of the reader."""
    with pytest.raises(wire.WireError):
        wire.decode("r1", data)


def test_room_keys_share_the_rooms_hash_tag() -> None:
    """Every key of a room carries `{room}`, so a Redis Cluster keeps them in one slot."""
    keys = wire.room_keys("r1") + wire.presence_keys("r1")
    assert all("{r1}" in key for key in keys)
    assert b"{r1}" in wire.channel(wire.channel_prefix(0), "r1")


def test_member_entries_parse_back() -> None:
    """A node's member entry gives back its room, username and connection; junk gives None."""
    entry = wire.member_entry("r1", "bob", "c1").encode()
    assert wire.parse_member_entry(entry) == ("r1", "bob", "c1")
    assert wire.parse_member_entry(b"r1\nbob") is None


def test_targets_round_trip() -> None:
    """A target holds `to` and the excluded connection; either may be absent."""
    for to, exclude in [(None, None), ("bob", None), (None, "c1"), ("bob", "c1")]:
        assert wire.decode_target(wire.encode_target(to, exclude)) == (to, exclude)
    assert wire.encode_target(None, None) == ""
    assert wire.encode_target("bob", None) == "bob"


def test_echo_false_publication_decodes_with_its_exclusion() -> None:
    """A publication whose target names an excluded connection decodes with `exclude`."""
    frame = '{"topic":"t","payload":1,"room":"r1","from":"x","offset":3}'
    data = f"pE1\n3\n c9\n{frame}".encode()
    assert wire.decode("r1", data) == Publication("r1", 3, frame, None, "E1", "c9")


def test_ephemeral_message_round_trips_without_offset() -> None:
    """An ephemeral message decodes to a publication with offset 0, its frame untouched."""
    frame = '{"topic":"typing","payload":"a\\nb","room":"r1","from":"x"}'
    decoded = wire.decode("r1", wire.encode_ephemeral(frame, "bob", "c2"))
    assert decoded == Publication("r1", 0, frame, "bob", "", "c2")
    assert isinstance(decoded, Publication)
    assert decoded.ephemeral
