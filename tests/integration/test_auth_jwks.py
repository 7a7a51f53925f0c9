"""--jwks-url: keys fetched from a JWKS served by the test on 127.0.0.1, cached, rotated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.harness import Client, running_server


class KeyServer:
    """A JWKS document on 127.0.0.1 that the test can change, counting fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def publish(self, *jwks: dict[str, Any]) -> None:
        self.document = {"keys": list(jwks)}


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def token(key: Any, alg: str, kid: str, sub: str = "alice") -> str:
    payload = {"sub": sub, "rooms": ["*"], "exp": int(time.time()) + 60}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def hand_signed_hs256(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed by hand with any bytes, as an attacker would."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{head}.{b64(hmac.new(key, head.encode(), hashlib.sha256).digest())}"


async def joins(url: str, tok: str) -> bool:
    """Whether a connection with `tok` gets a welcome (True) or a 4401 (False)."""
    client = await Client.connect(url, room="r1", token=tok)
    frame = await client.recv()
    if frame["topic"] == "welcome":
        await client.close()
        return True
    code, _ = await client.closed()
    assert code == 4401, (frame, code)
    return False


async def test_jwks_keys_are_cached_and_rotated(key_server: KeyServer) -> None:
    """Keys come from the JWKS, are cached, and a new `kid` triggers a refetch (rotation)."""
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = ec.generate_private_key(ec.SECP256R1())
    old_jwk = {**RSAAlgorithm.to_jwk(old.public_key(), as_dict=True), "kid": "k1", "use": "sig"}
    new_jwk = {**ECAlgorithm.to_jwk(new.public_key(), as_dict=True), "kid": "k2"}
    key_server.publish(old_jwk)
    with running_server("--jwks-url", key_server.url, "--jwks-refresh-min-interval", "0") as srv:
        assert await joins(srv.ws_url, token(old, "RS256", "k1"))
        assert await joins(srv.ws_url, token(old, "RS256", "k1", sub="bob"))
        assert key_server.fetches == 1

        key_server.publish(new_jwk)
        assert await joins(srv.ws_url, token(new, "ES256", "k2"))
        assert key_server.fetches == 2
        # The rotated-out key is gone after the refetch; a known kid with a foreign
        # signature and an unknown kid are refused.
        assert not await joins(srv.ws_url, token(old, "RS256", "k1"))
        assert not await joins(srv.ws_url, token(old, "RS256", "k2"))
        assert not await joins(srv.ws_url, token(new, "ES256", "unknown"))
        # HS256 signed with the published key's text is refused too.
        confused = hand_signed_hs256(
            {"alg": "HS256", "kid": "k2"},
            {"sub": "alice", "rooms": ["*"], "exp": int(time.time()) + 60},
            json.dumps(new_jwk).encode(),
        )
        assert not await joins(srv.ws_url, confused)


async def test_unknown_kid_refetches_at_most_once_per_interval(key_server: KeyServer) -> None:
    """Tokens with made-up key ids do not make the server refetch the JWKS each time."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_server.publish({**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"})
    with running_server("--jwks-url", key_server.url) as srv:
        assert await joins(srv.ws_url, token(key, "ES256", "k1"))
        for i in range(5):
            assert not await joins(srv.ws_url, token(key, "ES256", f"made-up-{i}"))
        assert key_server.fetches == 1


async def test_unreachable_jwks_is_transient(key_server: KeyServer) -> None:
    """When the JWKS cannot be fetched and no key is cached, the close is 4503 (retry)."""
    key_server.httpd.shutdown()
    key_server.httpd.server_close()
    key = ec.generate_private_key(ec.SECP256R1())
    with running_server("--jwks-url", key_server.url) as srv:
        # The second attempt comes within --jwks-refresh-min-interval: still 4503, not 4401.
        for _ in range(2):
            client = await Client.connect(srv.ws_url, room="r1", token=token(key, "ES256", "k1"))
            code, frames = await client.closed()
            assert code == 4503
            assert frames[0]["payload"]["code"] == "unavailable"
