"""A client-only install: the Python client and the CLI load no server stack; the package's
public names are imported on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import roomcast

SERVER_STACK = ("starlette", "uvicorn", "redis", "prometheus_client", "jwt", "cryptography")
"""Top-level packages only the server needs."""


def loaded_after(code: str) -> list[str]:
    """The top-level packages loaded by `code` in a fresh interpreter."""
    listing = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\nimport json, sys\n{listing}"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "code",
    [
        "import roomcast.client",
        "from roomcast.client import Client, HttpApi",
        "from roomcast import CloseCode, ErrorCode, RoomcastError",
        "from roomcast.cli import build_parser; build_parser().parse_args("
        "['connect', 'ws://127.0.0.1:1', '--room', 'r', '--username', 'u'])",
    ],
)
def test_client_imports_no_server_stack(code: str) -> None:
    """The client, the codes and errors, and the CLI's parser import no server dependency."""
    loaded = loaded_after(code)
    assert "roomcast" in loaded
    assert [name for name in SERVER_STACK if name in loaded] == []


def test_server_names_load_the_server_stack_on_use() -> None:
    """`roomcast.Roomcast` is imported on first use, with Starlette behind it."""
    loaded = loaded_after("import roomcast\nroomcast.Roomcast")
    assert "starlette" in loaded


def test_every_public_name_resolves() -> None:
    """Every name in `roomcast.__all__` resolves, and `dir()` lists them."""
    for name in roomcast.__all__:
        assert getattr(roomcast, name) is not None
    assert set(roomcast.__all__) <= set(dir(roomcast))


def test_unknown_name_is_an_attribute_error() -> None:
    """A name roomcast does not have raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = roomcast.no_such_name  # type: ignore[attr-defined]
