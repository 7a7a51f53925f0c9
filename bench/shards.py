"""The publish cost on the Redis side, per server, for one Redis and for rooms sharded over two.

    python bench/shards.py [--seconds 5] [--rooms 200] [--subscribers 0,2] [--out FILE]

Starts redis-server processes (pinned to CPU 0 when the machine has two), and from this
process (pinned to CPU 1) publishes as fast as it can through roomcast's own broker (the
PUBLISH script, batched and pipelined as a node sends it), to `--rooms` rooms, with 0 or more
subscribed nodes (each a broker with presence, subscribed to every room, so that each
publication is also written to their subscription connections). Each Redis server's CPU time
is read from /proc before and after: what one publish costs the server that holds its room
(the per-shard publish cost), and how the publishes divide over two servers. docs/benchmarks.md
("Past one Redis") builds its model of a cluster's publish rate on these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomcast.brokers import Broker, Publication, Signal  # noqa: E402
from roomcast.brokers.redis import RedisBroker  # noqa: E402
from roomcast.brokers.sharded import ShardedBroker  # noqa: E402
from roomcast.protocol import message_prefix  # noqa: E402
from tests.harness import RedisProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 256
"""Publishes under way at once (what many connections of a node publishing look like)."""


class Counter:
    """A listener that counts what arrives."""

    def __init__(self) -> None:
        self.publications = 0

    def on_publication(self, publication: Publication) -> None:
        self.publications += 1

    def on_signal(self, signal: Signal) -> None:
        pass

    def on_members_lost(self, room: str, usernames: list[str], node_id: str) -> None:
        pass

    def on_broker_state(self, available: bool, rooms: object = None) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def make(urls: list[str], presence: bool) -> Broker:
    if len(urls) == 1:
        return RedisBroker(urls[0], presence=presence)
    return ShardedBroker.from_urls(urls, presence=presence)


async def measure(
    servers: list[RedisProcess], rooms: int, subscribers: int, seconds: float
) -> dict[str, Any]:
    """Publish for `seconds`; Redis CPU per publish, per server, and the rate reached."""
    urls = [s.url for s in servers]
    names = [f"room{i}" for i in range(rooms)]
    nodes: list[Broker] = []
    for i in range(subscribers):
        node = make(urls, presence=True)
        await node.start(f"sub{i}", Counter())
        for name in names:
            await node.subscribe(name)
        nodes.append(node)
    publisher = make(urls, presence=False)
    await publisher.start("publisher", Counter())
    prefix = {name: message_prefix("news", {"pad": "x" * 64}, name, "bench") for name in names}
    published = 0
    stop = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal published
        n = index
        while time.monotonic() < stop:
            name = names[n % rooms]
            n += CONCURRENCY
            await publisher.publish(name, prefix[name])
            published += 1

    pids = [s.proc.pid for s in servers if s.proc is not None]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    t0 = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    elapsed = time.monotonic() - t0
    cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
    for broker in [publisher, *nodes]:
        await broker.close()
    return {
        "servers": len(servers),
        "subscribed_nodes": subscribers,
        "rooms": rooms,
        "publishes": published,
        "publishes_per_s": published / elapsed,
        "redis_cpu_pct": [100 * c / elapsed for c in cpu],
        "redis_us_per_publish": 1e6 * sum(cpu) / published,
    }


PINNED = (os.cpu_count() or 1) >= 2


def pinned(server: RedisProcess) -> RedisProcess:
    """Start `server` on CPU 0 (on a machine with two or more), the driver stays on CPU 1."""
    server.start()
    if PINNED and server.proc is not None:
        os.sched_setaffinity(server.proc.pid, {0})
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--subscribers", default="0,2", help="subscribed nodes, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench/results/shards.json"))
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {1})
    rows = asyncio.run(run(args))
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every configuration in turn, each on fresh redis-servers."""
    rows = []
    for count in (1, 2):
        for subscribers in (int(s) for s in args.subscribers.split(",")):
            servers = [pinned(RedisProcess()) for _ in range(count)]
            try:
                rows.append(await measure(servers, args.rooms, subscribers, args.seconds))
            finally:
                for server in servers:
                    server.stop()
            row = rows[-1]
            print(
                f"{count} server(s), {subscribers} subscribed node(s): "
                f"{row['publishes_per_s']:,.0f} publishes/s, "
                f"Redis CPU {' + '.join(f'{p:.0f}%' for p in row['redis_cpu_pct'])}, "
                f"{row['redis_us_per_publish']:.1f} us of Redis CPU per publish",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
