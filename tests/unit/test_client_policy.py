"""The Python client's pure parts: the close-code table, the backoff, frame parsing."""

from __future__ import annotations

import random

import pytest

from roomcast.client import Backoff, Reconnect, reconnect_rule
from roomcast.client._client import _token_expiry, _ws_url
from roomcast.client._frames import parse_frame, parse_welcome


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        (1000, Reconnect.NEVER),
        (1007, Reconnect.NEVER),
        (1008, Reconnect.NEVER),
        (1009, Reconnect.NEVER),
        (4400, Reconnect.NEVER),
        (4403, Reconnect.NEVER),
        (4409, Reconnect.NEVER),
        (4499, Reconnect.NEVER),
        (4401, Reconnect.NEW_TOKEN),
        (1001, Reconnect.AT_ONCE),
        (1012, Reconnect.AT_ONCE),
        (1011, Reconnect.BACKOFF),
        (4408, Reconnect.BACKOFF),
        (4429, Reconnect.BACKOFF),
        (4500, Reconnect.BACKOFF),
        (4503, Reconnect.BACKOFF),
        (4999, Reconnect.BACKOFF),
        (1006, Reconnect.BACKOFF),
        (None, Reconnect.BACKOFF),
    ],
)
def test_close_code_table(code: int | None, rule: Reconnect) -> None:
    """Each close code of the protocol's table maps to its reconnect rule."""
    assert reconnect_rule(code) is rule


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    """Attempt n waits between half and all of min(max, min * factor**n)."""
    backoff = Backoff(min_delay=0.5, max_delay=8.0, factor=2.0, jitter=0.25)
    rng = random.Random(7)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0), (500, 8.0)]:
        delays = [backoff.delay(Reconnect.BACKOFF, attempt, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # spread, not one fixed value


def test_immediate_reconnect_only_right_after_a_working_connection() -> None:
    """1012 and 4401 reconnect within the jitter at first, then back off like the rest."""
    backoff = Backoff(min_delay=1.0, max_delay=30.0, jitter=0.1)
    rng = random.Random(3)
    for rule in (Reconnect.AT_ONCE, Reconnect.NEW_TOKEN):
        assert all(0 <= backoff.delay(rule, 0, rng) <= 0.1 for _ in range(100))
        assert all(1.0 <= backoff.delay(rule, 1, rng) <= 2.0 for _ in range(100))


def test_backoff_refuses_nonsense() -> None:
    """Negative or inverted delays are refused with a message."""
    with pytest.raises(ValueError, match="min_delay"):
        Backoff(min_delay=2.0, max_delay=1.0)
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)


def test_urls() -> None:
    """The default path is added; http(s) become ws(s); a query is kept."""
    assert _ws_url("ws://h:1") == "ws://h:1/api/v1/ws"
    assert _ws_url("http://h:1/") == "ws://h:1/api/v1/ws"
    assert _ws_url("https://h/rt/api/v1/ws?x=1") == "wss://h/rt/api/v1/ws?x=1"
    # the rule of both clients: any other path is a base (an app mounted at /rt)
    assert _ws_url("ws://h:1/rt") == "ws://h:1/rt/api/v1/ws"
    assert _ws_url("http://h:1/rt/?tenant=a#top") == "ws://h:1/rt/api/v1/ws?tenant=a"
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        _ws_url("ftp://h")


def test_token_expiry_reads_jwt_exp_only() -> None:
    """`exp` is read from a JWT's claims without verifying; other tokens have none."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoxNzAwMDAwMDAwfQ.sig"
    assert _token_expiry(jwt) == 1_700_000_000.0
    assert _token_expiry("opaque-token") is None
    assert _token_expiry("a.!!!.c") is None
    assert _token_expiry(None) is None


def test_frame_parsing() -> None:
    """Server frames become Frame values; a malformed welcome is an error."""
    frame = parse_frame(
        {"topic": "chat", "payload": 1, "room": "r", "from": "a", "offset": 3, "to": "b"}
    )
    assert (frame.topic, frame.sender, frame.offset, frame.to) == ("chat", "a", 3, "b")
    assert parse_frame({"topic": "x", "payload": 1, "offset": True}).offset is None
    with pytest.raises(ValueError, match="topic"):
        parse_frame(["not", "an", "object"])
    welcome = parse_welcome(
        {
            "connectionId": "c",
            "username": "a",
            "roomID": "r",
            "members": ["a"],
            "epoch": "e",
            "offset": 4,
            "recovered": True,
        }
    )
    assert (welcome.members, welcome.offset, welcome.recovered) == (("a",), 4, True)
    with pytest.raises(ValueError, match="malformed welcome"):
        parse_welcome({"username": "a"})
