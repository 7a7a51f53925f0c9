"""Broker URLs in log lines: the password never shows."""

from __future__ import annotations

import pytest

from roomcast.log import redact_url


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
        ("rediss://user:p@ss@host:6380/1", "rediss://***@host:6380/1"),
        ("redis://:a@h1:1/0,redis://:b@h2:2/0", "redis://***@h1:1/0,redis://***@h2:2/0"),
        ("redis://h/0?x=a@b", "redis://h/0?x=a@b"),
    ],
)
def test_user_info_is_replaced(url: str, logged: str) -> None:
    """The user and password of each URL become `***`; the rest stays as it was."""
    assert redact_url(url) == logged
