"""Issue 14 item 13: a JWT time claim of the wrong type is refused with 4401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest

from tests.harness import Client, ServerProcess, running_server

SECRET = "security-suite-secret-long-enough-for-hs256-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(claims: dict[str, object]) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[ServerProcess]:
    """A server with HS256 authentication."""
    with running_server("--jwt-secret", SECRET) as process:
        yield process


@pytest.mark.parametrize(
    "extra",
    [
        {"exp": str(int(time.time()) + 600)},
        {"exp": True},
        {"exp": int(time.time()) + 600, "nbf": "0"},
        {"exp": int(time.time()) + 600, "iat": "0"},
    ],
    ids=["exp-string", "exp-bool", "nbf-string", "iat-string"],
)
async def test_time_claim_of_the_wrong_type_is_4401(
    jwt_server: ServerProcess, extra: dict[str, object]
) -> None:
    """`exp`, `nbf` or `iat` that is not a number: unauthenticated, 4401."""
    token = _token({"sub": "alice", **extra})
    client = await Client.connect(jwt_server.ws_url, "alice", "jwt-room", token=token)
    code, frames = await client.closed()
    assert code == 4401
    assert frames[0]["payload"]["code"] == "unauthenticated"


async def test_numeric_exp_is_accepted(jwt_server: ServerProcess) -> None:
    """The same token with a numeric `exp` is admitted (the test can fail)."""
    token = _token({"sub": "alice", "exp": int(time.time()) + 600})
    client = await Client.connect(jwt_server.ws_url, "alice", "jwt-room2", token=token)
    assert (await client.join())["topic"] == "welcome"
    await client.close()
