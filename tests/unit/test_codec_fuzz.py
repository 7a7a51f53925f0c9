"""Property tests of parse_client_frame: it only ever raises FrameError; valid frames round-trip."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.codes import ErrorCode
from roomcast.errors import FrameError
from roomcast.protocol import ClientFrame, parse_client_frame

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=128,
).filter(lambda s: s.isprintable() and not any(c.isspace() for c in s))
topics = st.text(min_size=1, max_size=128).filter(lambda s: not s.startswith("$"))
frame_ids = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text()


def check(text: str | bytes) -> ClientFrame | None:
    """Parse `text`; a refusal must be a FrameError with a contract code and a message."""
    try:
        return parse_client_frame(text)
    except FrameError as exc:
        error = exc
    assert error.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_FRAME)
    assert error.message
    return None


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_arbitrary_text_raises_only_frame_error(text: str | bytes) -> None:
    """Any text or bytes either parses or raises FrameError, nothing else."""
    check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["topic", "payload", "id", "to", "x"]), json_values, max_size=5)
)
def test_jsonish_objects_raise_only_frame_error(data: dict[str, Any]) -> None:
    """Objects with the frame's keys and any values parse or raise FrameError only."""
    frame = check(orjson.dumps(data))
    if frame is not None:
        assert frame.topic == data["topic"]
        assert frame.payload is not None


@settings(max_examples=300, deadline=None)
@given(topics, json_values.filter(lambda v: v is not None), frame_ids, st.none() | names)
def test_valid_frames_round_trip(topic: str, payload: Any, frame_id: Any, to: str | None) -> None:
    """Every valid frame parses back to exactly what was encoded."""
    data: dict[str, Any] = {"topic": topic, "payload": payload}
    if frame_id is not None:
        data["id"] = frame_id
    if to is not None:
        data["to"] = to
    frame = parse_client_frame(orjson.dumps(data).decode())
    assert frame == ClientFrame(topic, payload, frame_id, to)
