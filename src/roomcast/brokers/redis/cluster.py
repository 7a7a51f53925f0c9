"""The Redis broker on a Redis Cluster: the URL and the client.

`redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]` names seed nodes of a cluster;
the slot map is read from them and followed from then on. Every key of a room carries the
hash tag `{room}` and its channel the same tag, so a room lives on one shard: the publish
script runs there and announces with `SPUBLISH`, which only that shard's subscribers hear.

The subscriptions, one per shard, are in cluster_subscriber.py.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...errors import ConfigError

__all__ = ["CLUSTER_SCHEMES", "cluster_client", "parse_cluster_url", "shard_url"]

CLUSTER_SCHEMES = ("redis+cluster://",)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """The seed nodes, user name and password of a `redis+cluster://` URL.

    Raises:
        ConfigError: the URL names no node, a node without a valid port, a node twice, a
            database other than 0 (a cluster has only 0), or options roomcast does not take.
    """
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ConfigError(f"invalid broker URL {url!r}: redis+cluster:// takes no options")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ConfigError(
            f"invalid broker URL {url!r}: a Redis Cluster has only database 0, got /{path}"
        )
    user: str | None = None
    password: str | None = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        name, colon, secret = credentials.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    seeds: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, colon, port = part.rpartition(":")
        host = host.strip("[]")
        if not part or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"invalid broker URL {url!r}: each node is HOST:PORT, separated by commas"
                f" (got {part!r})"
            )
        if (host, int(port)) in seeds:
            raise ConfigError(f"invalid broker URL {url!r}: node {part!r} is named twice")
        seeds.append((host, int(port)))
    return seeds, user, password


def cluster_client(url: str, **options: float | int) -> RedisCluster:
    """redis-py's asyncio cluster client for `url`: no retry of a command whose connection
    failed (a publish must not run twice), rooms of a live shard served while another is
    down (`require_full_coverage` off, as `cluster-require-full-coverage no` on the servers)."""
    seeds, user, password = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        require_full_coverage=False,
        retry=Retry(NoBackoff(), 0),
        username=user,
        password=password,
        health_check_interval=0,
        **options,  # type: ignore[arg-type]
    )


def shard_url(url: str, host: str, port: int) -> str:
    """The `redis://` URL of one master, with the cluster URL's credentials."""
    _, user, password = parse_cluster_url(url)
    credentials = ""
    if user is not None or password is not None:
        credentials = quote(user or "", safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        credentials += "@"
    return f"redis://{credentials}{host}:{port}/0"
