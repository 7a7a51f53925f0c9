"""One frozen settings object; the environment is read only here.

Every option is a command-line flag of `roomcast serve` (`--history-size`) and an environment
variable (`ROOMCAST_HISTORY_SIZE`); a flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .brokers import check_url, is_shared
from .errors import ConfigError
from .room_classes import (
    DUPLICATE_POLICIES,
    MAX_HISTORY_TTL,
    DuplicatePolicy,
    RoomClass,
    RoomClasses,
    check_class_name,
    load_room_classes,
)

__all__ = [
    "DUPLICATE_POLICIES",
    "OPTIONS",
    "WEBHOOK_EVENTS",
    "DuplicatePolicy",
    "Option",
    "Settings",
    "is_loopback_host",
]

WEBHOOK_EVENTS = (
    "room.occupied",
    "room.vacated",
    "member.joined",
    "member.left",
    "message.published",
)
"""Every webhook event type (docs/webhooks.md); `message.published` is opt-in."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one roomcast node. Every field has a documented default.

    `None` turns a limit off.
    """

    host: str = "127.0.0.1"
    """Interface the standalone server listens on."""
    port: int = 8000
    """Port the standalone server listens on (0 picks a free one)."""
    broker: str = "memory://"
    """`memory://` (one process) or `redis://HOST:PORT/DB` (a cluster)."""
    node_id: str = ""
    """This node's name in the cluster; empty picks `<hostname>-<pid>`."""
    workers: int = 1
    """Processes sharing the port (needs `redis://`)."""
    jwt_secret: str | None = None
    """Shared secret for HS256/384/512 tokens; turns authentication on."""
    jwt_public_key: str | None = None
    """Path of a PEM public key for RS*/ES*/EdDSA tokens; turns authentication on."""
    jwks_url: str | None = None
    """URL of a JWKS document whose keys verify tokens; turns authentication on."""
    jwks_cache_ttl: float = 300.0
    """Seconds the JWKS keys are used before the document is fetched again."""
    jwks_refresh_min_interval: float = 5.0
    """Least seconds between two JWKS fetches caused by a token with an unknown `kid`."""
    jwt_algorithms: tuple[str, ...] = ()
    """Accepted token algorithms; empty picks those that fit the configured key."""
    jwt_audience: str | None = None
    """Required `aud` claim, when set."""
    jwt_issuer: str | None = None
    """Required `iss` claim, when set."""
    jwt_leeway: float = 5.0
    """Seconds of clock skew tolerated on `exp` and `nbf`."""
    api_keys: tuple[str, ...] = ()
    """Keys accepted by the HTTP API as `Authorization: Bearer <key>`."""
    admin: bool | None = None
    """Serve the admin page at `/admin`; `None` serves it when an API key is configured."""
    stats_interval: float | None = 1.0
    """Seconds between this node's stats messages to the cluster (the admin page's data)."""
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to open a WebSocket; empty allows same-host and non-browser clients."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (besides IP addresses and `localhost`) that the same-host origin rule and
    the key-less HTTP API accept in `Host`."""
    history_size: int = 100
    """Messages retained per room."""
    history_ttl: float = 300.0
    """Seconds each retained message lives after its publish."""
    max_message_size: int = 65536
    """Largest client frame in bytes; larger frames close the connection with 1009."""
    on_duplicate: DuplicatePolicy | None = None
    """What a second connection with the same username in a room does: `reject` it, `replace`
    the first, or `share` the room (several tabs of one user); None picks `share` with
    authentication on and `reject` without (see :attr:`duplicate_policy`)."""
    config: str | None = None
    """A TOML file of room classes (`[rooms.<class>]` tables, docs/configuration.md), read
    into :attr:`room_classes` when those are not given."""
    room_classes: Mapping[str, RoomClass] = field(default_factory=dict)
    """Room classes by name: rooms `<class>:<rest>` take their settings (protocol section 9);
    every other room has the flags'."""
    max_rooms_per_connection: int | None = 100
    """Rooms one connection may be in at once (`room.join` past it answers `too_many_rooms`)."""
    relay: bool = True
    """Relay frames of topics without a handler to the room."""
    outbound_buffer: int = 1048576
    """Bytes queued for one connection before it is closed as a slow consumer (4408)."""
    ping_interval: float | None = 20.0
    """Seconds between server pings."""
    ping_timeout: float | None = 20.0
    """Seconds a pong may take before the connection is closed (4408)."""
    presence_ttl: float = 15.0
    """Seconds a dead node's members stay in presence at most (its lease)."""
    presence_window: float = 0.02
    """`roomcast serve`: seconds a presence frame may wait to share one write per member with
    the frames after it (0: no wait beyond its event-loop iteration)."""
    rate_limit: float | None = 1000.0
    """Frames per second per connection (token bucket refill)."""
    rate_burst: int = 2000
    """Frames a connection may send at once (token bucket size)."""
    max_connections: int | None = 20000
    """Connections one node accepts."""
    max_connections_per_ip: int | None = None
    """Connections from one IP address on one node."""
    max_connections_per_user: int | None = 50
    """Connections of one username on one node, over all rooms."""
    handshake_timeout: float = 10.0
    """Seconds a client may take to complete the WebSocket handshake."""
    fast_path: bool = True
    """`roomcast serve`: write frames to uvicorn's sockets directly (false: uvicorn's own
    WebSocket protocol and the plain ASGI path, slower)."""
    shutdown_timeout: float = 5.0
    """Seconds a graceful shutdown may take."""
    log_level: str = "info"
    """Logging level: debug, info, warning, error."""
    log_format: Literal["text", "json"] = "text"
    """`text` (key=value) or `json` lines."""
    # webhooks and the backend proxy (docs/webhooks.md)
    webhook_url: str | None = None
    """URL that receives batches of events as POSTs; None sends none."""
    webhook_secret: str | None = None
    """Key of the `X-Roomcast-Signature` HMAC-SHA256; None sends no signature."""
    webhook_events: tuple[str, ...] = WEBHOOK_EVENTS[:4]
    """Event types sent (`message.published` only when listed)."""
    webhook_retry_for: float = 3600.0
    """Seconds a batch is retried (from its first attempt) before it is dropped and counted."""
    webhook_retry_min: float = 1.0
    """Seconds before the first retry; each further one waits up to twice as long (jittered)."""
    webhook_retry_max: float = 60.0
    """Longest wait between two attempts, in seconds."""
    webhook_timeout: float = 10.0
    """Seconds the receiver has to answer one request (no answer is retried)."""
    webhook_batch_size: int = 100
    """Events sent in one request at most."""
    webhook_max_pending: int = 100000
    """Events kept for delivery at most (in Redis on `redis://`, split over the outbox's
    shards); past it the oldest are dropped and counted."""
    proxy_connect_url: str | None = None
    """Backend URL asked before a connection is admitted (its answer gives the identity)."""
    proxy_join_url: str | None = None
    """Backend URL asked before a connection joins a room."""
    proxy_publish_url: str | None = None
    """Backend URL asked before a client frame is published (it may rewrite the payload)."""
    proxy_timeout: float = 5.0
    """Seconds the backend has to answer a proxy call (then `unavailable`)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Free-form settings for application code."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        check_url(self.broker)
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.workers > 1 and not is_shared(self.broker):
            raise ConfigError(
                "--workers > 1 needs a shared broker: use --broker redis://HOST:PORT/DB "
                "(memory:// keeps everything in one process)"
            )
        if self.history_size < 0:
            raise ConfigError(f"history-size must be >= 0, got {self.history_size}")
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, float) and not math.isfinite(value):
                # (NaN would pass every bound below: each comparison with it is false.)
                flag = setting.name.replace("_", "-")
                raise ConfigError(f"{flag}: expected a finite number, got {value}")
        if not 0 < self.history_ttl <= MAX_HISTORY_TTL:
            raise ConfigError(
                f"history-ttl must be > 0 and <= {MAX_HISTORY_TTL}, got {self.history_ttl}"
            )
        if self.max_message_size < 64:
            raise ConfigError(f"max-message-size must be >= 64, got {self.max_message_size}")
        if self.on_duplicate is not None and self.on_duplicate not in DUPLICATE_POLICIES:
            raise ConfigError(
                f"on-duplicate must be reject, replace or share, got {self.on_duplicate!r}"
            )
        if self.config and not self.room_classes:
            object.__setattr__(self, "room_classes", load_room_classes(self.config))
        for name, cls in self.room_classes.items():
            check_class_name(name)
            if not isinstance(cls, RoomClass):
                raise ConfigError(f"room class {name!r}: expected a RoomClass, got {cls!r}")
        if self.max_rooms_per_connection is not None and self.max_rooms_per_connection < 1:
            raise ConfigError(
                f"max-rooms-per-connection must be >= 1, got {self.max_rooms_per_connection}"
            )
        if self.outbound_buffer < 1024:
            raise ConfigError(f"outbound-buffer must be >= 1024, got {self.outbound_buffer}")
        if self.presence_ttl < 1:
            raise ConfigError(f"presence-ttl must be >= 1, got {self.presence_ttl}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log-format must be text or json, got {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log-level must be debug, info, warning or error, got {self.log_level!r}"
            )
        if self.jwks_cache_ttl <= 0 or self.jwks_refresh_min_interval < 0:
            raise ConfigError("jwks-cache-ttl must be > 0 and jwks-refresh-min-interval >= 0")
        if self.jwt_leeway < 0:
            raise ConfigError(f"jwt-leeway must be >= 0, got {self.jwt_leeway}")
        if self.rate_limit is not None and (self.rate_limit <= 0 or self.rate_burst < 1):
            raise ConfigError("rate-limit must be > 0 and rate-burst >= 1")
        if not 0 <= self.presence_window <= 1:
            raise ConfigError(f"presence-window must be 0 to 1 seconds, got {self.presence_window}")
        if self.handshake_timeout <= 0:
            raise ConfigError(f"handshake-timeout must be > 0, got {self.handshake_timeout}")
        if self.stats_interval is not None and self.stats_interval <= 0:
            raise ConfigError(f"stats-interval must be > 0, got {self.stats_interval}")
        if self.admin and not self.api_keys and not is_loopback_host(self.host):
            raise ConfigError(
                f"--admin without --api-key on --host {self.host}: the admin page would be "
                "open to the network; configure an API key (it logs the page in)"
            )
        if sum(x is not None for x in (self.jwt_secret, self.jwt_public_key, self.jwks_url)) > 1:
            raise ConfigError("use only one of --jwt-secret, --jwt-public-key, --jwks-url")
        self._check_backend()
        if not self.node_id:
            object.__setattr__(self, "node_id", f"{socket.gethostname()}-{os.getpid()}")

    def _check_backend(self) -> None:
        """Validate the webhook and proxy settings."""
        for name in ("webhook_url", "proxy_connect_url", "proxy_join_url", "proxy_publish_url"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                flag = name.replace("_", "-")
                raise ConfigError(f"{flag} must be an http:// or https:// URL, got {url!r}")
        unknown = [e for e in self.webhook_events if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ConfigError(
                f"webhook-events: unknown event type {unknown[0]!r}; "
                f"known: {', '.join(WEBHOOK_EVENTS)}"
            )
        for name in ("webhook_retry_min", "webhook_retry_max", "webhook_timeout", "proxy_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if self.proxy_connect_url is not None and self.auth_enabled:
            raise ConfigError(
                "use either --proxy-connect-url (the backend checks the token) or a JWT key "
                "(--jwt-secret, --jwt-public-key, --jwks-url), not both"
            )
        if self.webhook_retry_for < 0:
            raise ConfigError(f"webhook-retry-for must be >= 0, got {self.webhook_retry_for}")
        if self.webhook_retry_max < self.webhook_retry_min:
            raise ConfigError("webhook-retry-max must be >= webhook-retry-min")
        if self.webhook_batch_size < 1 or self.webhook_max_pending < 1:
            raise ConfigError("webhook-batch-size and webhook-max-pending must be >= 1")

    @property
    def auth_enabled(self) -> bool:
        """Whether connections must present a token."""
        return any(x is not None for x in (self.jwt_secret, self.jwt_public_key, self.jwks_url))

    @property
    def duplicate_policy(self) -> DuplicatePolicy:
        """The policy in force: `on_duplicate` when set, else `share` when authentication is
        on (identities are verified, so several connections are one user's) and `reject`
        when it is off."""
        if self.on_duplicate is not None:
            return self.on_duplicate
        return "share" if self.auth_enabled else "reject"

    def resolve_classes(self) -> RoomClasses:
        """The room classes with the flags filled in where a class keeps the server's."""
        return RoomClasses(
            self.room_classes,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            on_duplicate=self.duplicate_policy,
        )

    @property
    def admin_enabled(self) -> bool:
        """Whether `/admin` is served: `--admin`, or else whenever an API key is configured."""
        return bool(self.api_keys) if self.admin is None else self.admin

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from flag values (by field name), then `ROOMCAST_*`, then defaults.

        Raises:
            ConfigError: naming the flag, the value and what is allowed.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = flags.get(opt.name)
            source = f"--{opt.flag}"
            if raw is None:
                raw = env.get(opt.env)
                source = opt.env
            if raw is None:
                continue
            try:
                values[opt.name] = opt.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
        return cls(**values)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(raw: str) -> Any:
        return None if raw.lower() in ("", "none", "off", "0") else parse(raw)

    return parse_optional


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _auto_bool(raw: str) -> bool | None:
    return None if raw.lower() == "auto" else _bool(raw)


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and the environment spell it."""

    name: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    const: str | None = None
    """The value of the flag given without one (`--admin` alone), when it may be."""

    @property
    def flag(self) -> str:
        """The flag without its dashes, e.g. `history-size`."""
        return _FLAG_NAMES.get(self.name, self.name.replace("_", "-"))

    @property
    def env(self) -> str:
        """The environment variable, e.g. `ROOMCAST_HISTORY_SIZE`."""
        return "ROOMCAST_" + self.flag.replace("-", "_").upper()


_FLAG_NAMES = {"api_keys": "api-key"}

OPTIONS: tuple[Option, ...] = (
    Option("host", str, "interface to listen on (default 127.0.0.1)", "HOST"),
    Option("port", _int, "port to listen on, 0 for any free port (default 8000)", "PORT"),
    Option(
        "broker",
        str,
        "memory:// (default), redis://HOST:PORT/DB, several redis:// URLs separated by commas "
        "(rooms sharded over them), redis+cluster://HOST:PORT[,...] (a Redis Cluster), or "
        "redis+sentinel://HOST:PORT[,...]/MASTER_NAME/DB",
        "URL",
    ),
    Option("node_id", str, "this node's name in the cluster (default HOSTNAME-PID)", "NAME"),
    Option("workers", _int, "processes sharing the port; needs redis:// (default 1)", "N"),
    Option("jwt_secret", str, "HMAC secret for HS256/384/512 tokens", "SECRET"),
    Option("jwt_public_key", str, "PEM public key file for RS*/ES*/EdDSA tokens", "FILE"),
    Option("jwks_url", str, "URL of a JWKS document with the token keys", "URL"),
    Option("jwks_cache_ttl", _float, "seconds JWKS keys are cached (default 300)", "SECONDS"),
    Option(
        "jwks_refresh_min_interval",
        _float,
        "least seconds between JWKS fetches for unknown kids (default 5)",
        "SECONDS",
    ),
    Option("jwt_algorithms", _list, "accepted token algorithms, comma-separated", "ALG,..."),
    Option("jwt_audience", str, "required token audience (aud)", "AUD"),
    Option("jwt_issuer", str, "required token issuer (iss)", "ISS"),
    Option("jwt_leeway", _float, "seconds of clock skew allowed (default 5)", "SECONDS"),
    Option("api_keys", _list, "HTTP API key(s), comma-separated", "KEY,..."),
    Option(
        "admin",
        _auto_bool,
        "serve the admin page at /admin: true, false or auto (default auto: on when an API "
        "key is configured)",
        "BOOL",
        const="true",
    ),
    Option(
        "stats_interval",
        _optional(_float),
        "seconds between this node's stats messages, none for off (default 1)",
        "SECONDS",
    ),
    Option("allowed_origins", _list, "allowed WebSocket origins, comma-separated", "ORIGIN,..."),
    Option(
        "allowed_hosts",
        _list,
        "host names this server answers to besides IPs and localhost, comma-separated",
        "HOST,...",
    ),
    Option("history_size", _int, "messages retained per room (default 100)", "N"),
    Option(
        "history_ttl",
        _float,
        "seconds each retained message lives after its publish (default 300)",
        "SECONDS",
    ),
    Option("max_message_size", _int, "largest client frame in bytes (default 65536)", "BYTES"),
    Option(
        "on_duplicate",
        str,
        "reject, replace or share a username already in the room "
        "(default share with authentication on, reject without)",
        "reject|replace|share",
    ),
    Option("config", str, "TOML file of room classes ([rooms.<class>] tables)", "FILE"),
    Option(
        "max_rooms_per_connection",
        _optional(_int),
        "rooms one connection may be in at once (default 100)",
        "N",
    ),
    Option("relay", _bool, "relay topics without a handler to the room (default true)", "BOOL"),
    Option(
        "outbound_buffer", _int, "bytes queued per connection before 4408 (default 1 MiB)", "BYTES"
    ),
    Option(
        "ping_interval", _optional(_float), "seconds between server pings (default 20)", "SECONDS"
    ),
    Option("ping_timeout", _optional(_float), "seconds to wait for a pong (default 20)", "SECONDS"),
    Option(
        "presence_ttl", _float, "seconds a dead node's members stay listed (default 15)", "SECONDS"
    ),
    Option(
        "presence_window",
        _float,
        "seconds a presence frame may wait to share a write with the next (default 0.02)",
        "SECONDS",
    ),
    Option("rate_limit", _optional(_float), "frames per second per connection (default 1000)", "N"),
    Option("rate_burst", _int, "frames a connection may send at once (default 2000)", "N"),
    Option("max_connections", _optional(_int), "connections per node (default 20000)", "N"),
    Option(
        "max_connections_per_ip", _optional(_int), "connections per IP address (default off)", "N"
    ),
    Option(
        "max_connections_per_user", _optional(_int), "connections per username (default 50)", "N"
    ),
    Option(
        "handshake_timeout", _float, "seconds to complete the handshake (default 10)", "SECONDS"
    ),
    Option(
        "fast_path",
        _bool,
        "write frames to sockets directly; false runs the plain ASGI path (default true)",
        "BOOL",
    ),
    Option(
        "shutdown_timeout", _float, "seconds a graceful shutdown may take (default 5)", "SECONDS"
    ),
    Option("webhook_url", str, "URL that receives event batches (POST)", "URL"),
    Option("webhook_secret", str, "key of the X-Roomcast-Signature HMAC", "SECRET"),
    Option(
        "webhook_events",
        _list,
        "event types sent, comma-separated (default room.occupied,room.vacated,"
        "member.joined,member.left; message.published is opt-in)",
        "TYPE,...",
    ),
    Option(
        "webhook_retry_for",
        _float,
        "seconds a batch is retried before it is dropped (default 3600)",
        "SECONDS",
    ),
    Option("webhook_retry_min", _float, "seconds before the first retry (default 1)", "SECONDS"),
    Option("webhook_retry_max", _float, "longest wait between retries (default 60)", "SECONDS"),
    Option("webhook_timeout", _float, "seconds the receiver has to answer (default 10)", "SECONDS"),
    Option("webhook_batch_size", _int, "events per request at most (default 100)", "N"),
    Option(
        "webhook_max_pending",
        _int,
        "events kept for delivery at most; the oldest are dropped past it (default 100000)",
        "N",
    ),
    Option("proxy_connect_url", str, "backend URL asked before admitting a connection", "URL"),
    Option("proxy_join_url", str, "backend URL asked before a room join", "URL"),
    Option("proxy_publish_url", str, "backend URL asked before publishing a client frame", "URL"),
    Option("proxy_timeout", _float, "seconds the backend has to answer (default 5)", "SECONDS"),
    Option("log_level", str, "debug, info (default), warning or error", "LEVEL"),
    Option("log_format", str, "text (default) or json", "FORMAT"),
)
