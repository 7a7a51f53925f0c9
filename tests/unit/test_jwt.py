"""The JWT resolver, claims, origins and limits, without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from roomcast.auth import ConnectRequest, identity_from_claims, matches_any, origin_allowed
from roomcast.codes import CloseCode
from roomcast.errors import ConfigError, Refused
from roomcast.jwt import MAX_TOKEN_LENGTH, JwtResolver
from roomcast.limits import Admission, ConnectionLimits, TokenBucket
from roomcast.settings import Settings

SECRET = "unit-test-secret-that-is-long-enough-for-hs512-0123456789abcdef0123"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "rooms": ["r1", "team-*"], "exp": time.time() + 60}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token signed by hand (HMAC with any bytes, or unsigned), as an attacker builds one."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


async def resolve(
    resolver: JwtResolver, token: str | None, room: str = "r1", username: str | None = None
) -> Any:
    return await resolver(ConnectRequest(username=username, room=room, token=token))


async def refused(
    resolver: JwtResolver, token: str | None, room: str = "r1", username: str | None = None
) -> Refused:
    with pytest.raises(Refused) as info:
        await resolve(resolver, token, room, username)
    return info.value


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def hs_resolver() -> JwtResolver:
    return JwtResolver.from_settings(
        Settings(jwt_secret=SECRET, jwt_leeway=0, jwt_audience="rc", jwt_issuer="iss")
    )


def pem_bytes(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def pem_file(tmp_path: Path, key: Any) -> str:
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


async def test_valid_token_gives_identity(hs_resolver: JwtResolver) -> None:
    """A valid token yields sub as username, its claims, publish topics and exp + leeway."""
    exp = int(time.time()) + 60
    token = hs(claims(aud="rc", iss="iss", exp=exp, publish=["chat"]))
    identity = await resolve(hs_resolver, token, username="alice")
    assert identity.username == "alice"
    assert identity.publish == ("chat",)
    assert identity.expires_at == exp
    assert identity.claims["sub"] == "alice"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: None, "a token is required"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: "x" * (MAX_TOKEN_LENGTH + 1), "longer than"),
        (lambda: hs(claims(aud="rc", iss="iss"), "another-secret-" * 4), "signature"),
        (
            lambda: raw_token({"alg": "none", "typ": "JWT"}, claims(aud="rc", iss="iss"), None),
            "algorithm",
        ),
        (lambda: hs(claims(aud="rc", iss="iss", exp=time.time() - 10)), "expired"),
        (lambda: hs(claims(aud="rc", iss="iss", nbf=time.time() + 60)), "not yet valid"),
        (lambda: hs(claims(aud="other", iss="iss")), "audience"),
        (lambda: hs(claims(aud="rc", iss="other")), "issuer"),
        (lambda: hs(claims(aud="rc", iss="iss", exp=None)), "'exp'"),
        (lambda: hs(claims(aud="rc", iss="iss", sub=None)), "'sub'"),
        (lambda: hs(claims(aud="rc", iss="iss", rooms="r1")), "list of strings"),
    ],
    ids=[
        "missing",
        "malformed",
        "too-long",
        "bad-signature",
        "alg-none",
        "expired",
        "not-yet-valid",
        "audience",
        "issuer",
        "no-exp",
        "no-sub",
        "rooms-not-list",
    ],
)
async def test_refused_tokens(hs_resolver: JwtResolver, make: Any, message: str) -> None:
    """Each kind of bad token is refused with 4401 and a reason naming the problem."""
    exc = await refused(hs_resolver, make())
    assert exc.close_code == CloseCode.UNAUTHENTICATED
    assert message in exc.message


async def test_subject_mismatch_is_unauthenticated(hs_resolver: JwtResolver) -> None:
    """A username parameter other than sub is refused with 4401."""
    exc = await refused(hs_resolver, hs(claims(aud="rc", iss="iss")), username="bob")
    assert exc.close_code == CloseCode.UNAUTHENTICATED


async def test_room_grants(hs_resolver: JwtResolver) -> None:
    """Rooms are granted by exact id or `*` pattern; others are refused with 4403; no `rooms`
    claim grants every room and an empty one none."""
    token = hs(claims(aud="rc", iss="iss"))
    assert (await resolve(hs_resolver, token, room="team-blue")).username == "alice"
    for room in ("r2", "team", "xteam-blue", "r1x"):
        assert (await refused(hs_resolver, token, room=room)).close_code == CloseCode.FORBIDDEN
    no_rooms = hs(claims(aud="rc", iss="iss", rooms=None))
    assert (await resolve(hs_resolver, no_rooms, room="anything")).username == "alice"
    empty = hs(claims(aud="rc", iss="iss", rooms=[]))
    assert (await refused(hs_resolver, empty)).close_code == CloseCode.FORBIDDEN


async def test_secret_resolver_refuses_rs_tokens(rsa_key: rsa.RSAPrivateKey) -> None:
    """A resolver configured with a secret refuses an RS256 token (algorithm not accepted)."""
    resolver = JwtResolver.from_settings(Settings(jwt_secret=SECRET))
    exc = await refused(resolver, jwt.encode(claims(), rsa_key, algorithm="RS256"))
    assert "algorithm" in exc.message


async def test_public_key_refuses_hs_confusion(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token whose secret is the server's public PEM is refused (no HS/RS confusion)."""
    path = pem_file(tmp_path, rsa_key)
    resolver = JwtResolver.from_settings(Settings(jwt_public_key=path))
    ok = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await resolve(resolver, ok)).username == "alice"
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), pem_bytes(rsa_key))
    assert "algorithm" in (await refused(resolver, forged)).message


async def test_configured_algorithms_restrict(tmp_path: Path) -> None:
    """--jwt-algorithms limits the accepted ones and must fit the key."""
    resolver = JwtResolver.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=("HS512",)))
    assert (await resolve(resolver, hs(claims(), alg="HS512"))).username == "alice"
    assert "algorithm" in (await refused(resolver, hs(claims(), alg="HS256"))).message
    with pytest.raises(ConfigError):
        JwtResolver.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=("RS256",)))
    with pytest.raises(ConfigError):
        JwtResolver.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=("none",)))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ConfigError):
        JwtResolver.from_settings(
            Settings(jwt_public_key=pem_file(tmp_path, ec_key), jwt_algorithms=("RS256",))
        )
    with pytest.raises(ConfigError):
        JwtResolver.from_settings(Settings(jwt_public_key=str(tmp_path / "missing.pem")))


def test_claims_without_room_grant_type_errors() -> None:
    """A publish claim that is not a list of strings is refused with 4401."""
    with pytest.raises(Refused) as info:
        identity_from_claims({"sub": "a", "rooms": ["r1"], "publish": [1]}, None, "r1")
    assert info.value.close_code == CloseCode.UNAUTHENTICATED


def test_patterns_only_know_star() -> None:
    """Only `*` is a wildcard: `?` and `[` match themselves."""
    assert matches_any("team-a", ["team-*"])
    assert matches_any("anything", ["*"])
    assert not matches_any("ab", ["a?"])
    assert matches_any("a?", ["a?"])
    assert not matches_any("ab", ["[ab]b"])
    assert matches_any("chat.x.y", ["chat.*"])
    assert not matches_any("chat", ["chat.*"])


def test_origin_policy() -> None:
    """No Origin passes; same host passes by default when the host is an IP address,
    localhost or an allowed host name (not a name another site may rebind); a list allows
    only its entries."""
    assert origin_allowed(None, "h:1", ())
    assert not origin_allowed("http://h:1", "h:1", ())
    assert origin_allowed("http://h:1", "h:1", (), ("h",))
    assert origin_allowed("HTTP://H:1/", "h:1", (), ("*.x", "h"))
    assert origin_allowed("http://127.0.0.1:1", "127.0.0.1:1", ())
    assert origin_allowed("http://localhost:1", "localhost:1", ())
    assert origin_allowed("http://[::1]:1", "[::1]:1", ())
    assert not origin_allowed("http://evil:1", "h:1", ())
    assert not origin_allowed("null", "h:1", ())
    assert not origin_allowed("http://h:1", None, ())
    listed = ("https://app.example", "https://*.trusted.example")
    assert origin_allowed("https://app.example", "h:1", listed)
    assert origin_allowed("https://a.trusted.example", "h:1", listed)
    assert not origin_allowed("http://h:1", "h:1", listed)
    assert not origin_allowed("https://app.example.evil", "h:1", listed)
    assert origin_allowed("https://x", "h:1", ("*",))


def test_token_bucket_limits_then_exceeds() -> None:
    """A burst passes, then frames are limited, then a continued flood is exceeded."""
    bucket = TokenBucket(rate=0.001, burst=3)
    verdicts = [bucket.take() for _ in range(8)]
    assert verdicts[:3] == [Admission.OK] * 3
    assert verdicts[3:6] == [Admission.LIMITED] * 3
    assert verdicts[6:] == [Admission.EXCEEDED] * 2


def test_connection_limits_count_and_release() -> None:
    """Total, per-IP and per-user limits refuse with 4429 and are given back on release."""
    limits = ConnectionLimits(total=3, per_ip=2, per_user=1)
    a = limits.acquire("1.1.1.1", "a")
    limits.acquire("1.1.1.1", "b")
    with pytest.raises(Refused) as info:
        limits.acquire("1.1.1.1", "c")
    assert info.value.close_code == CloseCode.RATE_LIMITED
    with pytest.raises(Refused):
        limits.acquire("2.2.2.2", "a")
    limits.acquire("2.2.2.2", "c")
    with pytest.raises(Refused):
        limits.acquire("3.3.3.3", "d")
    a.release()
    a.release()
    assert limits.count == 2
    limits.acquire("3.3.3.3", "a")
