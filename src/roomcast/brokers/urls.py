"""The parts of the broker URLs that name more than one server, checked before anything
connects: a list of Redis servers (sharding) and the Sentinel form.

brokers/__init__.py decides which form a URL is (by its scheme); this module takes such a URL
apart and says clearly what is wrong with it (a `ConfigError`, exit status 2 for `serve`).
Nothing here imports the Redis client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

__all__ = ["SENTINEL_SCHEMES", "SentinelURL", "parse_sentinel", "shard_urls"]

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_SHARD_SCHEMES = ("redis://", "rediss://")
_REDIS_PORT = 6379
_SENTINEL_PORT = 26379


def _host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    """(host, port) of `host[:port]` (`[v6]:port` too)."""
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}: bad host or port in {text!r} ({exc})") from None
    if not host:
        raise ConfigError(f"{what}: no host in {text!r}")
    return host, default_port if port is None else port


def _db(path: str, what: str) -> int:
    """The database number of a URL path `""`, `/` or `/N`."""
    number = path.lstrip("/")
    if not number:
        return 0
    if not number.isdigit():
        raise ConfigError(f"{what}: the database must be a number, got {number!r}")
    return int(number)


def shard_urls(url: str) -> list[str]:
    """The servers of `redis://H1:P1/0,redis://H2:P2/0,...`, in order.

    Raises:
        ConfigError: an empty part, a part with another scheme than the first (`rediss://`
            for all or none), a part without a host or with a bad port or database, or the
            same server (host and port) listed twice.
    """
    parts = url.split(",")
    scheme = parts[0].partition("://")[0]
    seen: dict[tuple[str, int], int] = {}
    for index, part in enumerate(parts):
        what = f"broker server #{index} of {len(parts)}"
        if not part.strip():
            raise ConfigError(
                f"{what} is empty: list redis://HOST:PORT/DB URLs separated by single commas"
            )
        if not part.startswith(_SHARD_SCHEMES):
            raise ConfigError(
                f"{what} must be a redis:// (or rediss://) URL like the others, got {part!r}"
            )
        if part.partition("://")[0] != scheme:
            raise ConfigError(
                f"{what}: mixed schemes ({scheme}:// and {part.partition('://')[0]}://): "
                f"every server of a list must use the same one"
            )
        split = urlsplit(part)
        if split.query or split.fragment:
            raise ConfigError(f"{what}: options (?...) are not supported in a list: {part!r}")
        address = _host_port(split.netloc.rpartition("@")[2], _REDIS_PORT, what)
        _db(split.path, what)
        if address in seen:
            raise ConfigError(
                f"{what} is the same server as #{seen[address]} ({address[0]}:{address[1]}): "
                f"list each Redis server once"
            )
        seen[address] = index
    return parts


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]` says.

    Attributes:
        sentinels: the Sentinel addresses (port 26379 when not given).
        master: the name the Sentinels monitor the master under.
        db: the database number (0 when not given).
        username: for the master (not the Sentinels); None when not given.
        password: for the master; None when not given.
        tls: `rediss+sentinel://`: TLS to the master.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel(url: str) -> SentinelURL:
    """Take a Sentinel URL apart.

    Raises:
        ConfigError: no Sentinel address, an empty one, a bad port, the same one twice, no
            master name, or a database that is not a number.
    """
    scheme, _, rest = url.partition("://")
    what = "broker (redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME/DB)"
    authority, _, path = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    if not hosts:
        raise ConfigError(f"{what}: no Sentinel address in {url!r}")
    sentinels: list[tuple[str, int]] = []
    for index, host in enumerate(hosts.split(",")):
        if not host.strip():
            raise ConfigError(f"{what}: Sentinel address #{index} is empty")
        address = _host_port(host, _SENTINEL_PORT, what)
        if address in sentinels:
            raise ConfigError(f"{what}: Sentinel {host!r} is listed twice")
        sentinels.append(address)
    master, _, db = path.partition("/")
    master = unquote(master)
    if not master:
        raise ConfigError(
            f"{what}: the master name is missing (the name the Sentinels monitor it under)"
        )
    if "/" in db:
        raise ConfigError(f"{what}: unexpected path after the database: {path!r}")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return SentinelURL(
        tuple(sentinels), master, _db(db, what), username, password, scheme == "rediss+sentinel"
    )
