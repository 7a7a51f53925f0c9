"""The JWT identity resolver: tokens verified with a shared secret, a public key or a JWKS.

The accepted algorithms are fixed by configuration (or by the type of the configured key),
never read from the token: `alg: none` and HS/RS confusion are refused. The claims become an
:class:`~roomcast.auth.Identity` as docs/security.md describes.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt as pyjwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .auth import (
    AnonymousResolver,
    ConnectRequest,
    Identity,
    IdentityResolver,
    check_room_claim,
    identity_from_claims,
)
from .codes import CloseCode, ErrorCode
from .errors import ConfigError, Refused
from .log import log_event
from .settings import Settings

__all__ = [
    "MAX_TOKEN_LENGTH",
    "JwksKeys",
    "JwtResolver",
    "KeySource",
    "StaticKey",
    "algorithms_for_key",
    "resolver_from_settings",
]

MAX_TOKEN_LENGTH = 8192
"""Longer tokens are refused before any parsing."""

_HMAC = ("HS256", "HS384", "HS512")
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {
    "secp256r1": ("ES256",),
    "secp384r1": ("ES384",),
    "secp521r1": ("ES512",),
    "secp256k1": ("ES256K",),
}
_JWKS_TIMEOUT = 5.0
_JWKS_MAX_BYTES = 1 << 20


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _unauthenticated(message: str) -> Refused:
    return Refused(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, message)


def _unavailable() -> Refused:
    return Refused(
        CloseCode.BROKER_UNAVAILABLE,
        ErrorCode.UNAVAILABLE,
        "the token key set cannot be fetched; retry later",
    )


def algorithms_for_key(key: Any) -> tuple[str, ...]:
    """The algorithms that fit a key: HS* for a secret, RS*/PS* for RSA, ES* by curve, EdDSA."""
    if isinstance(key, bytes | str):
        return _HMAC
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC.get(key.curve.name, ())
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def _pick_algorithms(key: Any, configured: tuple[str, ...], what: str) -> tuple[str, ...]:
    fitting = algorithms_for_key(key)
    if not configured:
        return fitting
    wrong = [alg for alg in configured if alg not in fitting]
    if wrong:
        raise ConfigError(
            f"--jwt-algorithms {','.join(wrong)} do not fit {what}; allowed: {', '.join(fitting)}"
        )
    return configured


class KeySource(Protocol):
    """Where the verification key of a token comes from."""

    async def key_for(self, kid: str | None) -> tuple[Any, tuple[str, ...]]:
        """The key for a token's `kid` header and the algorithms accepted with it.

        Raises:
            Refused: 4401 when no key fits; 4503 when the keys cannot be fetched.
        """
        ...


@dataclass(frozen=True, slots=True)
class StaticKey:
    """One configured key (a secret or a PEM public key) whatever the token's `kid`."""

    key: Any
    algorithms: tuple[str, ...]

    async def key_for(self, kid: str | None) -> tuple[Any, tuple[str, ...]]:
        """The configured key and algorithms."""
        return self.key, self.algorithms


class JwksKeys:
    """Keys of a JWKS document, fetched over HTTP(S), cached, refetched for an unknown `kid`.

    Args:
        url: the JWKS document's URL.
        algorithms: accepted algorithms; empty takes each key's `alg` or its type's.
        cache_ttl: seconds the keys are used before the document is fetched again.
        min_interval: least seconds between two fetches caused by an unknown `kid`, so that
            tokens with made-up key ids cannot make the server hammer the key server.
    """

    def __init__(
        self,
        url: str,
        *,
        algorithms: tuple[str, ...] = (),
        cache_ttl: float = 300.0,
        min_interval: float = 5.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--jwks-url must be an http:// or https:// URL, got {url!r}")
        self.url = url
        self.algorithms = algorithms
        self.cache_ttl = cache_ttl
        self.min_interval = min_interval
        self.keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        self.fetches = 0
        self._fetched_at: float | None = None
        self._pending: asyncio.Future[None] | None = None

    async def key_for(self, kid: str | None) -> tuple[Any, tuple[str, ...]]:
        """The key named `kid` (fetching the document when stale or when `kid` is new)."""
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > self.cache_ttl:
            await self.refresh(required=not self.keys)
        elif kid not in self.keys and now - self._fetched_at >= self.min_interval:
            await self.refresh(required=False)
        if not self.keys:
            raise _unavailable()
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        found = self.keys.get(kid)
        if found is None:
            raise _unauthenticated("the token's key id (kid) is not in the key set")
        return found

    async def refresh(self, *, required: bool) -> None:
        """Fetch the document once, however many connections ask at the same time.

        Raises:
            Refused: 4503 when the fetch fails and `required` (no keys are cached).
        """
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        pending = self._pending
        try:
            await asyncio.shield(pending)
        except Exception:
            if required or not self.keys:
                raise _unavailable() from None

    async def _refresh(self) -> None:
        try:
            document = await asyncio.to_thread(self._fetch)
            self.keys = self._parse(document)
            log_event("auth.jwks_fetched", url=self.url, keys=len(self.keys))
        except Exception as exc:
            log_event("auth.jwks_failed", level=30, url=self.url, reason=str(exc)[:200])
            raise
        finally:
            # A failed fetch also counts, so that an unreachable key server is not retried
            # for every connection.
            self._fetched_at = time.monotonic()
            self.fetches += 1
            self._pending = None

    def _fetch(self) -> Any:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=_JWKS_TIMEOUT) as response:
            body = response.read(_JWKS_MAX_BYTES + 1)
        if len(body) > _JWKS_MAX_BYTES:
            raise ValueError("JWKS document larger than 1 MiB")
        return orjson.loads(body)

    def _parse(self, document: Any) -> dict[str | None, tuple[Any, tuple[str, ...]]]:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document: no 'keys' list")
        keys: dict[str | None, tuple[Any, tuple[str, ...]]] = {}
        for data in document["keys"]:
            # Secret (oct) keys never belong in a published key set, and encryption keys do not
            # verify signatures.
            if not isinstance(data, dict) or data.get("kty") == "oct" or data.get("use") == "enc":
                continue
            try:
                jwk = pyjwt.PyJWK(data)
            except pyjwt.PyJWTError as exc:
                log_event(
                    "auth.jwks_key_skipped",
                    level=30,
                    kid=str(data.get("kid")),
                    reason=str(exc)[:200],
                )
                continue
            fitting = algorithms_for_key(jwk.key)
            if self.algorithms:
                algorithms = tuple(a for a in self.algorithms if a in fitting)
            elif "alg" in data:
                algorithms = (jwk.algorithm_name,) if jwk.algorithm_name in fitting else ()
            else:
                algorithms = fitting
            if algorithms:
                keys[jwk.key_id] = (jwk.key, algorithms)
        return keys


class JwtResolver:
    """Resolves identities from JWTs (see docs/security.md for the claims).

    Args:
        keys: where verification keys come from.
        audience: required `aud`, or None to ignore `aud`.
        issuer: required `iss`, or None to ignore `iss`.
        leeway: seconds of clock skew tolerated on `exp` and `nbf`; the connection is closed
            at `exp` plus this leeway.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 5.0,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._require = ["exp", "sub"]
        if audience is not None:
            self._require.append("aud")
        if issuer is not None:
            self._require.append("iss")

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtResolver:
        """Build the resolver the settings describe.

        Raises:
            ConfigError: no key is configured, the key file cannot be read, or the configured
                algorithms do not fit the key.
        """
        configured = settings.jwt_algorithms
        unknown = [
            a
            for a in configured
            if a not in _HMAC + _RSA + ("ES256", "ES384", "ES512", "ES256K", "EdDSA")
        ]
        if unknown:
            raise ConfigError(f"--jwt-algorithms: unknown or refused {', '.join(unknown)}")
        source: KeySource
        if settings.jwt_secret is not None:
            if not settings.jwt_secret:
                raise ConfigError("--jwt-secret must not be empty")
            secret = settings.jwt_secret.encode()
            if len(secret) < 32:
                log_event(
                    "auth.weak_secret",
                    level=30,
                    reason="--jwt-secret is shorter than 32 bytes; use a long random one",
                )
            source = StaticKey(secret, _pick_algorithms(secret, configured, "a shared secret"))
        elif settings.jwt_public_key is not None:
            source = StaticKey(*_load_public_key(settings.jwt_public_key, configured))
        elif settings.jwks_url is not None:
            source = JwksKeys(
                settings.jwks_url,
                algorithms=configured,
                cache_ttl=settings.jwks_cache_ttl,
                min_interval=settings.jwks_refresh_min_interval,
            )
        else:
            raise ConfigError(
                "JWT authentication needs --jwt-secret, --jwt-public-key or --jwks-url"
            )
        return cls(
            source,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
        )

    async def verify(self, token: str | None) -> dict[str, Any]:
        """The verified claims of `token`.

        Raises:
            Refused: 4401 when the token is missing, malformed, badly signed, of a refused
                algorithm, expired, not yet valid, or lacks a required claim.
        """
        if not token:
            raise _unauthenticated(
                "a token is required: send ?token=<JWT> or Authorization: Bearer <JWT>"
            )
        if len(token) > MAX_TOKEN_LENGTH:
            raise _unauthenticated(f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = pyjwt.get_unverified_header(token)
        except Exception:
            raise _unauthenticated("malformed token") from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _unauthenticated("malformed token: kid must be a string")
        key, algorithms = await self.keys.key_for(kid)
        try:
            with warnings.catch_warnings():
                # A short secret is reported once at startup, not at every token.
                warnings.simplefilter("ignore", pyjwt.InsecureKeyLengthWarning)
                claims: dict[str, Any] = pyjwt.decode(
                    token,
                    key,
                    algorithms=list(algorithms),
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": self._require, "verify_aud": self.audience is not None},
                )
        except pyjwt.ExpiredSignatureError:
            raise _unauthenticated("token expired") from None
        except pyjwt.ImmatureSignatureError:
            raise _unauthenticated("token not yet valid") from None
        except pyjwt.InvalidAudienceError:
            raise _unauthenticated("token audience (aud) not accepted") from None
        except pyjwt.InvalidIssuerError:
            raise _unauthenticated("token issuer (iss) not accepted") from None
        except pyjwt.InvalidAlgorithmError:
            raise _unauthenticated("token algorithm not accepted") from None
        except pyjwt.InvalidSignatureError:
            raise _unauthenticated("token signature does not verify") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except Exception:
            raise _unauthenticated("invalid token") from None
        for name in _TIME_CLAIMS:
            value = claims.get(name)
            # PyJWT takes a numeric string for a time claim; the claim is a number (RFC 7519).
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _unauthenticated(f"token claim {name!r} must be a number")
        return claims

    def _expires_at(self, claims: Mapping[str, Any]) -> float:
        return float(claims["exp"]) + self.leeway

    async def __call__(self, request: ConnectRequest) -> Identity:
        """The identity of a connection request.

        Raises:
            Refused: 4401 (see :meth:`verify`, and a `username` that disagrees with `sub`);
                4403 when the token does not grant the room.
        """
        claims = await self.verify(request.token)
        return identity_from_claims(
            claims, request.username, request.room, expires_at=self._expires_at(claims)
        )

    async def authorize(self, identity: Identity, room: str) -> None:
        """`room.join`: the token's `rooms` claim must grant `room`.

        Raises:
            Refused: 4403 `forbidden` when it does not.
        """
        check_room_claim(identity.claims, room)

    async def refresh(self, identity: Identity, rooms: Collection[str], payload: Any) -> Identity:
        """`auth.refresh`: the identity a fresh token gives a connection of `identity` in `rooms`.

        The payload is `{"token": "<JWT>"}`. The token must carry the same subject and still
        grant every room of the connection.

        Raises:
            Refused: 4401 for a refused token or another subject; 4403 for a room not granted.
        """
        token = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(token, str):
            raise _unauthenticated('auth.refresh needs a payload {"token": "<JWT>"}')
        claims = await self.verify(token)
        if claims.get("sub") != identity.username:
            raise _unauthenticated("the fresh token has another subject")
        fresh = identity_from_claims(
            claims, identity.username, None, expires_at=self._expires_at(claims)
        )
        for room in rooms:
            check_room_claim(claims, room)
        return fresh


def _load_public_key(path: str, configured: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise ConfigError(f"--jwt-public-key: cannot read {path!r}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(f"--jwt-public-key: {path!r} is not a PEM public key") from None
    algorithms = _pick_algorithms(key, configured, f"the key in {path!r}")
    if not algorithms:
        raise ConfigError(f"--jwt-public-key: unsupported key type in {path!r}")
    return key, algorithms


def resolver_from_settings(settings: Settings) -> IdentityResolver:
    """The resolver `settings` ask for: JWT when a key is configured, else anonymous."""
    if settings.auth_enabled:
        return JwtResolver.from_settings(settings)
    return AnonymousResolver()
