"""JWT authentication and room/topic grants against a real server (HS and RS keys)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.harness import Client, ServerProcess, running_server

SECRET = "integration-secret-long-enough-for-every-hs-algorithm-0123456789abcdef"
AUD = "roomcast-test"
ISS = "https://issuer.test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    """Good claims for alice (rooms r1 and team-*), changed by `extra` (None removes)."""
    base: dict[str, Any] = {
        "sub": "alice",
        "rooms": ["r1", "team-*"],
        "aud": AUD,
        "iss": ISS,
        "exp": int(time.time()) + 60,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs(secret: str = SECRET, alg: str = "HS256", **extra: Any) -> str:
    return jwt.encode(claims(**extra), secret, algorithm=alg)


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token an attacker builds by hand: HMAC-SHA256 with any bytes, or no signature."""
    head = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = b"" if key is None else hmac.new(key, head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64(sig)}"


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture(scope="module")
def hs_server() -> Iterator[ServerProcess]:
    """A server verifying HS tokens, with audience, issuer and no leeway."""
    with running_server(
        "--jwt-secret", SECRET, "--jwt-audience", AUD, "--jwt-issuer", ISS, "--jwt-leeway", "0"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def rs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server verifying RS tokens with a PEM public key file."""
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    path.write_bytes(RSA_PEM)
    with running_server("--jwt-public-key", str(path)) as server:
        yield server


async def refusal(server: ServerProcess, room: str = "r1", **params: Any) -> tuple[int, str]:
    """Connect, expect one error frame and a close; return the close code and error code."""
    client = await Client.connect(server.ws_url, room=room, **params)
    code, frames = await client.closed()
    assert code is not None
    assert len(frames) == 1, frames
    assert frames[0]["topic"] == "error"
    return code, frames[0]["payload"]["code"]


async def test_token_in_query_joins(hs_server: ServerProcess) -> None:
    """A valid token in `token` joins as its subject, with or without a matching username."""
    client = await Client.connect(hs_server.ws_url, "alice", "r1", token=hs())
    assert (await client.join())["payload"]["username"] == "alice"
    await client.close()
    client = await Client.connect(hs_server.ws_url, room="team-blue", token=hs())
    welcome = await client.join()
    assert welcome["payload"]["username"] == "alice"
    assert welcome["payload"]["roomID"] == "team-blue"
    await client.close()


async def test_bearer_header_joins(hs_server: ServerProcess) -> None:
    """A valid token in `Authorization: Bearer` joins."""
    client = await Client.connect(
        hs_server.ws_url, "alice", "r1", headers={"Authorization": f"Bearer {hs()}"}
    )
    await client.join()
    await client.close()


BAD_TOKENS: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "malformed": lambda: "definitely.not.ajwt",
    "bad-signature": lambda: hs(secret="another-secret-that-is-also-long-enough-0123456789abcd"),
    "wrong-algorithm": lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
    "alg-none": lambda: hand_signed({"alg": "none", "typ": "JWT"}, claims(), None),
    "expired": lambda: hs(exp=int(time.time()) - 5),
    "not-yet-valid": lambda: hs(nbf=int(time.time()) + 60),
    "wrong-audience": lambda: hs(aud="someone-else"),
    "wrong-issuer": lambda: hs(iss="https://evil.test"),
    "no-exp": lambda: hs(exp=None),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_is_refused_4401(hs_server: ServerProcess, kind: str) -> None:
    """Every kind of bad token is refused with an `unauthenticated` frame and 4401."""
    token = BAD_TOKENS[kind]()
    params = {} if token is None else {"token": token}
    assert await refusal(hs_server, username="alice", **params) == (4401, "unauthenticated")


async def test_subject_mismatch_is_refused_4401(hs_server: ServerProcess) -> None:
    """A username parameter that disagrees with the token's subject is refused with 4401."""
    assert await refusal(hs_server, username="mallory", token=hs()) == (4401, "unauthenticated")


@pytest.mark.parametrize("username", ["", "a b", "x" * 129, "tab\there"])
async def test_an_invalid_username_parameter_is_a_bad_request_with_a_token(
    hs_server: ServerProcess, username: str
) -> None:
    """With authentication on, a `username` that is not a valid username is refused with
    4400 (a bad request, as without authentication), before the token is compared."""
    assert await refusal(hs_server, username=username, token=hs()) == (4400, "bad_request")


async def test_the_server_s_own_name_is_reserved(hs_server: ServerProcess) -> None:
    """`$server` is who the HTTP API and commands publish as: a token naming it is refused
    with 4401, so no member's message can pass for the server's."""
    assert await refusal(hs_server, token=hs(sub="$server")) == (4401, "unauthenticated")


async def test_room_not_granted_is_refused_4403(hs_server: ServerProcess) -> None:
    """A room the token does not grant (exactly or by pattern) is refused with 4403."""
    for room in ("r2", "team", "xteam-a"):
        assert await refusal(hs_server, room=room, token=hs()) == (4403, "forbidden")


async def test_topic_not_granted_gets_forbidden_frame(hs_server: ServerProcess) -> None:
    """A topic outside `publish` gets a `forbidden` error frame and the connection stays."""
    token = hs(publish=["chat", "chat.*"])
    client = await Client.connect(hs_server.ws_url, "alice", "r1", token=token)
    await client.join()
    await client.send({"topic": "admin", "payload": {}, "id": 1})
    error = await client.recv()
    assert error["topic"] == "error"
    assert error["payload"]["code"] == "forbidden"
    assert error["payload"]["id"] == 1
    await client.send({"topic": "chat.room", "payload": "hi", "id": 2})
    assert (await client.recv_topic("ack"))["payload"]["id"] == 2
    await client.barrier()
    await client.close()


async def test_expiry_closes_unless_refreshed(hs_server: ServerProcess) -> None:
    """At exp a connection closes with 4401 unless it sent a fresh token via `auth.refresh`;
    a fresh token for another subject, or an invalid one, closes at once with 4401."""
    short = hs(exp=int(time.time()) + 2)
    stale = await Client.connect(hs_server.ws_url, "alice", "r1", token=short)
    await stale.join()
    fresh = await Client.connect(hs_server.ws_url, room="team-a", token=short)
    await fresh.join()
    await fresh.send({"topic": "auth.refresh", "payload": {"token": hs()}, "id": "r"})
    assert await fresh.recv_topic("ack") == {"topic": "ack", "payload": {"id": "r"}}

    other = await Client.connect(hs_server.ws_url, room="team-b", token=short)
    await other.join()
    await other.send({"topic": "auth.refresh", "payload": {"token": hs(sub="bob")}, "id": 1})
    code, frames = await other.closed()
    assert code == 4401
    assert frames[-1]["payload"]["code"] == "unauthenticated"
    garbage = await Client.connect(hs_server.ws_url, room="team-c", token=short)
    await garbage.join()
    await garbage.send({"topic": "auth.refresh", "payload": {"token": "x.y.z"}, "id": 1})
    assert (await garbage.closed())[0] == 4401

    code, frames = await stale.closed(timeout=6)
    assert code == 4401
    assert frames[-1]["payload"]["code"] == "unauthenticated"
    # The refreshed connection outlived the first token's exp.
    await fresh.barrier()
    await fresh.close()


async def test_rs_public_key_accepts_rs256(rs_server: ServerProcess) -> None:
    """A server with --jwt-public-key accepts tokens signed by the matching private key."""
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    client = await Client.connect(rs_server.ws_url, "alice", "r1", token=token)
    await client.join()
    await client.close()


async def test_rs_server_refuses_hs_confusion_and_other_keys(rs_server: ServerProcess) -> None:
    """HS256 signed with the public PEM, another RSA key and an ES256 token are refused."""
    forged = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), RSA_PEM)
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    for token in (forged, jwt.encode(claims(), other_rsa, algorithm="RS256"), es):
        assert await refusal(rs_server, token=token) == (4401, "unauthenticated")


async def test_refused_tokens_are_not_logged(hs_server: ServerProcess) -> None:
    """The server's log never contains a token."""
    token = hs(exp=int(time.time()) - 5)
    await refusal(hs_server, token=token)
    assert hs_server.log is not None
    # The refusal line is written before the close; wait for it, then look for the token.
    await asyncio.to_thread(hs_server.log.wait_for, "token expired", 5.0)
    assert token not in hs_server.log.text()
    assert token.split(".")[2] not in hs_server.log.text()
