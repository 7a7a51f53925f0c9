"""Fuzzed token strings never crash the server: each is refused with 4401."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Client, ServerProcess, running_server

SECRET = "fuzz-secret-long-enough-for-every-hs-algorithm-0123456789abcdef0123"


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[ServerProcess]:
    """One server for every fuzz example."""
    with running_server("--jwt-secret", SECRET) as server:
        yield server


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "none", "RS256", "HS512", "", "ES256"]) | json_values},
    optional={"kid": json_values, "typ": json_values, "crit": json_values, "b64": json_values},
)
payloads = (
    st.dictionaries(
        st.sampled_from(["sub", "rooms", "exp", "nbf", "iat", "aud", "iss", "publish"]),
        json_values,
    )
    | json_values
)


@st.composite
def structured_tokens(draw: st.DrawFn) -> str:
    """Tokens shaped like JWTs: JSON header and payload, with a random or empty signature."""
    head = _b64(json.dumps(draw(headers)).encode())
    body = _b64(json.dumps(draw(payloads)).encode())
    signature = _b64(draw(st.binary(max_size=40)))
    return f"{head}.{body}.{signature}"


tokens = (
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300)
    | st.lists(st.text(alphabet="abcAB09-_=+/.", max_size=40), min_size=1, max_size=5).map(".".join)
    | structured_tokens()
)


async def _refused(url: str, token: str) -> tuple[int | None, list[dict[str, Any]]]:
    client = await Client.connect(url, room="r1", token=token)
    return await client.closed()


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(token=tokens)
def test_fuzzed_tokens_are_refused(jwt_server: ServerProcess, token: str) -> None:
    """Any made-up token string is refused with 4401 and one error frame."""
    code, frames = asyncio.run(_refused(jwt_server.ws_url, token))
    assert code == 4401, (code, frames)
    assert [f["topic"] for f in frames] == ["error"]


async def test_server_serves_after_fuzz(jwt_server: ServerProcess) -> None:
    """After the fuzz, the server is alive and a valid token joins."""
    token = jwt.encode({"sub": "alice", "rooms": ["r1"], "exp": int(time.time()) + 60}, SECRET)
    client = await Client.connect(jwt_server.ws_url, "alice", "r1", token=token)
    await client.join()
    await client.close()
    assert jwt_server.proc is not None
    assert jwt_server.proc.poll() is None
    assert jwt_server.log is not None
    assert "Traceback" not in jwt_server.log.text()
