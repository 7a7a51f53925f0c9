"""The wire codec (roomcast.protocol): parsing client frames and encoding server frames."""

from __future__ import annotations

import sys
from typing import Any

import orjson
import pytest

from roomcast.codes import ErrorCode
from roomcast.errors import FrameError
from roomcast.protocol import (
    ClientFrame,
    HistoryRequest,
    ack_frame,
    ephemeral_frame,
    error_frame,
    history_frame,
    message_frame,
    message_prefix,
    parse_client_frame,
    parse_history,
    parse_offset,
    presence_frame,
    server_frame,
    validate_name,
    validate_topic,
    welcome_frame,
)


def parse_error(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_client_frame(text)
    return info.value


def test_parse_minimal_frame() -> None:
    """A frame with topic and payload parses with no id and no to."""
    assert parse_client_frame('{"topic":"chat","payload":{"a":1}}') == ClientFrame("chat", {"a": 1})


def test_parse_full_frame_from_bytes() -> None:
    """Bytes parse too; id and to are kept; unknown fields are ignored."""
    frame = parse_client_frame(b'{"topic":"t","payload":[],"id":"x","to":"bob","extra":1}')
    assert frame == ClientFrame("t", [], "x", "bob")


@pytest.mark.parametrize("payload", [0, False, "", [], {}, "text", 1.5, -7])
def test_any_non_null_payload_is_valid(payload: Any) -> None:
    """Every JSON value except null is a valid payload, falsy ones included."""
    frame = parse_client_frame(orjson.dumps({"topic": "t", "payload": payload}))
    assert frame.payload == payload


@pytest.mark.parametrize("text", ["", "{", "nope", "{'topic': 1}", '{"a":1} {}', "\x00"])
def test_not_json_is_invalid_json(text: str) -> None:
    """Text that is not one JSON document is invalid_json."""
    assert parse_error(text).code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "1",
        '"s"',
        "null",
        "true",
        '{"payload":1}',
        '{"topic":1,"payload":1}',
        '{"topic":"","payload":1}',
        '{"topic":"' + "t" * 129 + '","payload":1}',
        '{"topic":"$x","payload":1}',
        '{"topic":"t"}',
        '{"topic":"t","payload":null}',
        '{"topic":"t","payload":1,"id":1.0}',
        '{"topic":"t","payload":1,"id":false}',
        '{"topic":"t","payload":1,"id":[]}',
        '{"topic":"t","payload":1,"to":1}',
        '{"topic":"t","payload":1,"to":""}',
        '{"topic":"t","payload":1,"to":"a b"}',
        '{"topic":"t","payload":1,"key":""}',
        '{"topic":"t","payload":1,"key":7}',
        '{"topic":"t","payload":1,"key":["k"]}',
        '{"topic":"t","payload":1,"key":"' + "k" * 129 + '"}',
    ],
)
def test_invalid_frames(text: str) -> None:
    """Frames that break a rule of PROTOCOL section 2 are invalid_frame with a message."""
    error = parse_error(text)
    assert error.code is ErrorCode.INVALID_FRAME
    assert error.message


@pytest.mark.parametrize("key", ["k", "k" * 128, "a b:{c}/é"])
def test_a_key_is_any_string_of_1_to_128_characters(key: str) -> None:
    """`key` is kept as it is; the ack of a duplicate says so, others do not."""
    frame = parse_client_frame(orjson.dumps({"topic": "t", "payload": 1, "id": 1, "key": key}))
    assert frame.key == key
    assert orjson.loads(ack_frame(1, 5, True)) == {
        "topic": "ack",
        "payload": {"id": 1, "offset": 5, "duplicate": True},
    }
    assert orjson.loads(ack_frame(1, 5)) == {"topic": "ack", "payload": {"id": 1, "offset": 5}}


def test_error_keeps_a_readable_id() -> None:
    """A frame rejected after its id was read carries the id; a bad id is not carried."""
    assert parse_error('{"topic":"","payload":1,"id":7}').frame_id == 7
    assert parse_error('{"topic":"t","id":"a"}').frame_id == "a"
    assert parse_error('{"topic":"t","payload":1,"id":1.5}').frame_id is None
    assert parse_error("[1]").frame_id is None


def test_topic_limits() -> None:
    """Topics are 1-128 characters and may not start with `$`; `$` elsewhere is fine."""
    assert validate_topic("t" * 128) == "t" * 128
    assert validate_topic("a$b") == "a$b"
    for bad in ("", "t" * 129, "$", "$sys", None, 3):
        with pytest.raises(FrameError):
            validate_topic(bad)


@pytest.mark.parametrize("name", ["a", "x" * 128, "émile", "a.b-c_d@e", "名字", "!#%&"])
def test_valid_names(name: str) -> None:
    """Printable names of 1-128 characters without whitespace are valid."""
    assert validate_name(name, "username") == name


@pytest.mark.parametrize(
    "name",
    [
        None,
        "",
        "x" * 129,
        "a b",
        "a\tb",
        "a\nb",
        "\x00",
        "a\x1fb",
        "\x7f",
        "a\u00a0b",
        "a\u2028b",
        5,
    ],
)
def test_invalid_names(name: object) -> None:
    """Missing, empty, too long, whitespace or control characters are refused, named."""
    with pytest.raises(FrameError) as info:
        validate_name(name, "roomID")
    assert "roomID" in info.value.message


def test_no_whitespace_character_makes_a_valid_name() -> None:
    """Every code point that Python calls whitespace is refused inside a name."""
    spaces = [chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()]
    assert len(spaces) > 20
    for space in spaces:
        with pytest.raises(FrameError):
            validate_name(f"a{space}b", "username")


def test_parse_offset() -> None:
    """Offsets are non-negative decimal integers; absent is None."""
    assert parse_offset(None) is None
    assert parse_offset("0") == 0
    assert parse_offset("42") == 42
    assert parse_offset(str(2**63 - 1)) == 2**63 - 1
    for bad in ("", "-1", "1.5", "x", "1e3", " 1"):
        with pytest.raises(FrameError, match="since must be a non-negative integer"):
            parse_offset(bad)
    for big in ("9" * 20, str(2**63), str(2**70)):
        with pytest.raises(FrameError, match="limit must be below 2\\^63"):
            parse_offset(big, "limit")


def test_a_name_of_the_wrong_type_is_named_as_such() -> None:
    """`to` that is not a string says so; an empty one says it is required."""
    assert parse_error('{"topic":"t","payload":1,"to":5}').message == "to must be a string"
    assert parse_error('{"topic":"t","payload":1,"to":["a"]}').message == "to must be a string"
    assert parse_error('{"topic":"t","payload":1,"to":""}').message == "to is required"


def test_echo_is_parsed_as_a_boolean() -> None:
    """`echo` defaults to true; false is kept; anything but a boolean is invalid_frame."""
    assert parse_client_frame('{"topic":"t","payload":1}').echo is True
    assert parse_client_frame('{"topic":"t","payload":1,"echo":false}').echo is False
    error = parse_error('{"topic":"t","payload":1,"echo":0,"id":3}')
    assert (error.code, error.frame_id) == (ErrorCode.INVALID_FRAME, 3)


def test_parse_history_defaults_and_bounds() -> None:
    """room.history: roomID and before default to None, limit to 50; limit is 1-100 and
    before a non-negative integer; null means the default."""
    assert parse_history({}) == HistoryRequest(None, None, 50)
    assert parse_history({"roomID": "r1", "before": 0, "limit": 1}) == HistoryRequest("r1", 0, 1)
    assert parse_history({"before": None, "limit": None}) == HistoryRequest(None, None, 50)
    assert parse_history({"limit": 100}).limit == 100
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "2"}, {"before": -1}, {"before": 1.0}):
        with pytest.raises(FrameError) as info:
            parse_history(bad)
        assert info.value.code == ErrorCode.BAD_REQUEST


def test_ephemeral_and_history_frames() -> None:
    """An ephemeral frame is a room message without offset; a history answer embeds the
    retained frames as they are."""
    frame = ephemeral_frame("typing", {"on": True}, "r1", "alice")
    assert orjson.loads(frame) == {
        "topic": "typing",
        "payload": {"on": True},
        "room": "r1",
        "from": "alice",
    }
    stored = message_frame(message_prefix("chat", "hi", "r1", "bob"), 4)
    assert orjson.loads(history_frame("r1", "E", [stored, stored])) == {
        "topic": "room.history",
        "payload": {"epoch": "E", "messages": [orjson.loads(stored)] * 2},
        "room": "r1",
    }


def test_message_prefix_and_frame() -> None:
    """A message is encoded once up to its offset; adding the offset makes valid JSON."""
    prefix = message_prefix("chat", {"t": 'é"}'}, "r1", "alice")
    frame = message_frame(prefix, 42)
    assert orjson.loads(frame) == {
        "topic": "chat",
        "payload": {"t": 'é"}'},
        "room": "r1",
        "from": "alice",
        "offset": 42,
    }
    assert frame.endswith(',"offset":42}')
    direct = orjson.loads(message_frame(message_prefix("dm", 1, "r1", "$server", "bob"), 3))
    assert direct == {
        "topic": "dm",
        "payload": 1,
        "room": "r1",
        "from": "$server",
        "to": "bob",
        "offset": 3,
    }


def test_server_frames() -> None:
    """ack, error, presence and plain frames have the contract's shapes."""
    assert orjson.loads(ack_frame(7, 42)) == {"topic": "ack", "payload": {"id": 7, "offset": 42}}
    assert orjson.loads(ack_frame("x")) == {"topic": "ack", "payload": {"id": "x"}}
    assert orjson.loads(error_frame(ErrorCode.INVALID_JSON, "bad", 0)) == {
        "topic": "error",
        "payload": {"code": "invalid_json", "message": "bad", "id": 0},
    }
    assert orjson.loads(error_frame(ErrorCode.UNKNOWN_TOPIC, "no")) == {
        "topic": "error",
        "payload": {"code": "unknown_topic", "message": "no"},
    }
    assert orjson.loads(presence_frame("leave", "r1", "bob")) == {
        "topic": "presence.leave",
        "payload": {"username": "bob"},
        "room": "r1",
    }
    assert orjson.loads(server_frame("pong", [1])) == {"topic": "pong", "payload": [1]}


def test_welcome_frame_recovered_only_when_resuming() -> None:
    """The welcome has `recovered` only when told (a resume), never otherwise; `rooms` lists
    the URL room (v1.1)."""
    common: dict[str, Any] = dict(
        connection_id="c", username="u", room="r", members=["u"], epoch="e", offset=3
    )
    fresh = orjson.loads(welcome_frame(**common, recovered=None))
    assert fresh == {
        "topic": "welcome",
        "payload": {
            "connectionId": "c",
            "username": "u",
            "roomID": "r",
            "members": ["u"],
            "epoch": "e",
            "offset": 3,
            "rooms": ["r"],
        },
    }
    assert orjson.loads(welcome_frame(**common, recovered=False))["payload"]["recovered"] is False
    assert orjson.loads(welcome_frame(**common, recovered=True))["payload"]["recovered"] is True
