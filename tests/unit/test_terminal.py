"""How `roomcast connect` prints frames and counts lines it could not send."""

from __future__ import annotations

import io

from roomcast.client import Frame
from roomcast.client._terminal import Terminal


def test_chat_shows_its_text_whatever_else_the_payload_has() -> None:
    """A chat message from the demo page (text and the time it was sent) prints as text;
    other topics print their JSON."""
    out, err = io.StringIO(), io.StringIO()
    terminal = Terminal(out, err)
    terminal.show(Frame("chat", {"text": "hi", "at": 1}, room="r1", sender="ann", offset=1))
    terminal.show(Frame("announce", {"text": "up"}, room="r1", sender="$server", offset=2))
    assert out.getvalue() == '[r1] ann: hi\n[r1] $server (announce): {"text":"up"}\n'
    assert not terminal.failed


def test_an_error_frame_counts_as_a_failed_line() -> None:
    """An error printed with `!` marks the run as failed (the piped exit status)."""
    terminal = Terminal(io.StringIO(), io.StringIO())
    terminal.show(Frame("error", {"code": "rate_limited", "message": "slow down"}))
    assert terminal.failed
