"""A bad room class file stops `roomcast serve` with exit status 2 and a message naming the
file, the class and the setting (docs/protocol.md, section 9; docs/configuration.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, running_server

BAD_FILES = {
    "unknown setting": ("[rooms.chat]\nhistory_sise = 5\n", "chat", "history_sise"),
    "history_size wrong type": ('[rooms.chat]\nhistory_size = "500"\n', "chat", "history_size"),
    "history_size a boolean": ("[rooms.chat]\nhistory_size = true\n", "chat", "history_size"),
    "history_size negative": ("[rooms.chat]\nhistory_size = -1\n", "chat", "history_size"),
    "history_ttl wrong type": ('[rooms.chat]\nhistory_ttl = "1h"\n', "chat", "history_ttl"),
    "history_ttl zero": ("[rooms.chat]\nhistory_ttl = 0\n", "chat", "history_ttl"),
    # Past ten years a Redis expiry would overflow (inf stopped the node with a traceback,
    # 1e20 failed every publish); NaN passes every comparison.
    "history_ttl infinite": ("[rooms.chat]\nhistory_ttl = inf\n", "chat", "history_ttl"),
    "history_ttl huge": ("[rooms.chat]\nhistory_ttl = 1e20\n", "chat", "history_ttl"),
    "history_ttl nan": ("[rooms.chat]\nhistory_ttl = nan\n", "chat", "history_ttl"),
    "presence wrong type": ('[rooms.feed]\npresence = "no"\n', "feed", "presence"),
    "join_leave wrong type": ("[rooms.feed]\njoin_leave = 0\n", "feed", "join_leave"),
    "client_publish wrong type": (
        "[rooms.feed]\nclient_publish = 1\n",
        "feed",
        "client_publish",
    ),
    "personal wrong type": ('[rooms.user]\npersonal = "yes"\n', "user", "personal"),
    "ephemeral_topics not a list": (
        '[rooms.chat]\nephemeral_topics = "typing"\n',
        "chat",
        "ephemeral_topics",
    ),
    "ephemeral topic not a string": (
        "[rooms.chat]\nephemeral_topics = [1]\n",
        "chat",
        "ephemeral_topics",
    ),
    "ephemeral topic reserved": (
        '[rooms.chat]\nephemeral_topics = ["$typing"]\n',
        "chat",
        "ephemeral_topics",
    ),
    "ephemeral topic built-in": (
        '[rooms.chat]\nephemeral_topics = ["room.join"]\n',
        "chat",
        "ephemeral_topics",
    ),
    "ephemeral topic empty": ('[rooms.chat]\nephemeral_topics = [""]\n', "chat", "ephemeral"),
    "max_members zero": ("[rooms.small]\nmax_members = 0\n", "small", "max_members"),
    "max_members wrong type": ("[rooms.small]\nmax_members = 2.5\n", "small", "max_members"),
    "on_duplicate unknown": ('[rooms.solo]\non_duplicate = "kick"\n', "solo", "on_duplicate"),
    "on_duplicate wrong type": ("[rooms.solo]\non_duplicate = 1\n", "solo", "on_duplicate"),
    "class not a table": ("[rooms]\nchat = 5\n", "chat", "table"),
    "class name with a colon": ('[rooms."a:b"]\npresence = false\n', "a:b", "':'"),
    "class name with a space": ('[rooms."a b"]\npresence = false\n', "a b", "whitespace"),
}


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`roomcast serve` that is expected to stop before it listens (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_setting_exits_2_naming_file_class_and_setting(tmp_path: Path, case: str) -> None:
    """Each bad value: exit status 2, one message with the file, the class and the setting."""
    text, cls, setting = BAD_FILES[case]
    path = tmp_path / "rooms.toml"
    path.write_text(text)
    result = run_serve("--config", str(path))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("roomcast serve: error: "), result.stderr
    assert str(path) in message
    assert f"[rooms.{cls}]" in message
    assert setting in message


def test_environment_variable_names_the_file(tmp_path: Path) -> None:
    """`ROOMCAST_CONFIG` is read like `--config`: the same error, naming the file."""
    path = tmp_path / "env.toml"
    path.write_text("[rooms.feed]\npresense = false\n")
    result = run_serve(env={"ROOMCAST_CONFIG": str(path)})
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "[rooms.feed] presense: unknown setting" in result.stderr


BAD_DOCUMENTS: dict[str, tuple[bytes | None, str]] = {
    "missing file": (None, "cannot read the file: No such file or directory"),
    "invalid TOML": (b"[rooms.chat\nhistory_size = 5\n", "not valid TOML: "),
    "not UTF-8": (b"[rooms.chat]\n# caf\xe9\nhistory_size = 5\n", "not valid TOML"),
    "unknown top-level setting": (
        b"port = 8000\n[rooms.chat]\nhistory_size = 5\n",
        "unknown top-level setting 'port'",
    ),
    "rooms not a table": (b"rooms = 5\n", "rooms must be a table of classes"),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS), ids=list(BAD_DOCUMENTS))
def test_bad_document_exits_2_naming_the_file(tmp_path: Path, case: str) -> None:
    """A file that cannot be read, is not TOML, or is not a table of classes: exit 2, with
    the file and what is wrong with it."""
    content, expected = BAD_DOCUMENTS[case]
    path = tmp_path / "rooms.toml"
    if content is not None:
        path.write_bytes(content)
    result = run_serve("--config", str(path))
    assert result.returncode == 2
    assert f"roomcast serve: error: {path}: {expected}" in result.stderr


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    """A directory is no config file either."""
    result = run_serve("--config", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path}: cannot read the file" in result.stderr


def test_invalid_toml_says_where(tmp_path: Path) -> None:
    """The TOML parser's position is in the message."""
    path = tmp_path / "broken.toml"
    path.write_text("[rooms.chat]\nhistory_size = = 5\n")
    result = run_serve("--config", str(path))
    assert result.returncode == 2
    assert "line 2" in result.stderr


def test_good_file_starts(tmp_path: Path) -> None:
    """The example of docs/configuration.md starts a server (and an empty file does too)."""
    path = tmp_path / "rooms.toml"
    path.write_text(
        "[rooms.chat]\nhistory_size = 500\nhistory_ttl = 86400\nephemeral_topics = "
        '["typing"]\n\n[rooms.feed]\nclient_publish = false\npresence = false\n\n'
        "[rooms.user]\npersonal = true\n"
    )
    with running_server("--config", str(path)) as server, server.http() as http:
        assert http.get("/healthz").status_code == 200
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with running_server("--config", str(empty)) as server, server.http() as http:
        assert http.get("/healthz").status_code == 200
