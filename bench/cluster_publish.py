"""Publish cost per Redis shard: the Redis CPU one roomcast publish takes on its shard.

    python bench/cluster_publish.py [--messages N] [--rooms N] [--out FILE]

Starts a 3-master Redis Cluster (and, to compare, one plain redis-server), two roomcast
broker nodes in this process, each subscribed to every room (rooms spread over the shards),
and publishes `--messages` messages from both nodes at once, several in flight per room. It
reads each redis-server's CPU time from /proc before and after, and reports per shard the
publishes it ran and its CPU microseconds per publish (the PUBLISH script: offset, stream,
sharded publication to the two subscribed nodes), beside the same cost on one Redis. The
nodes in this process are the bottleneck of the rate, not Redis: the rate is not the point,
the cost per publish on a shard is (docs/benchmarks.md, "Past one Redis").
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

from roomcast.brokers.redis import RedisBroker, wire  # noqa: E402
from roomcast.protocol import message_prefix  # noqa: E402
from tests.contract.conftest import Recorder  # noqa: E402
from tests.harness import RedisClusterProcess, RedisProcess  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def run(
    url: str, pids: dict[str, int], shard_of: dict[str, str], args: Any
) -> dict[str, Any]:
    """Two nodes publish `args.messages` over `args.rooms` rooms; CPU per store process."""
    nodes = [RedisBroker(url, history_size=100), RedisBroker(url, history_size=100)]
    for i, node in enumerate(nodes):
        await node.start(f"bench-{i}", Recorder())
    rooms = [f"bench-{i}" for i in range(args.rooms)]
    for node in nodes:
        for room in rooms:
            await node.subscribe(room)
    prefix = {room: message_prefix("chat", {"pad": "x" * 64}, room, "bench") for room in rooms}
    per_room = args.messages // len(rooms)

    async def publish(node: RedisBroker, room: str, count: int) -> None:
        for _ in range(count):
            await node.publish(room, prefix[room])

    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    await asyncio.gather(*(publish(node, room, per_room // 2) for node in nodes for room in rooms))
    elapsed = time.monotonic() - started
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for node in nodes:
        await node.close()
    published: dict[str, int] = {}
    for room in rooms:
        published[shard_of[room]] = published.get(shard_of[room], 0) + 2 * (per_room // 2)
    total = sum(published.values())
    return {
        "publishes": total,
        "seconds": round(elapsed, 2),
        "publishes_per_s": round(total / elapsed),
        "shards": {
            name: {
                "publishes": published.get(name, 0),
                "cpu_s": round(after[name] - before[name], 3),
                "us_per_publish": round(
                    1e6 * (after[name] - before[name]) / max(1, published.get(name, 0)), 2
                ),
            }
            for name in pids
        },
    }


async def measure(args: Any) -> dict[str, Any]:
    """One plain Redis, then a 3-master cluster: the report."""
    report: dict[str, Any] = {"messages": args.messages, "rooms": args.rooms}
    single = RedisProcess().start()
    try:
        assert single.proc is not None
        report["one_redis"] = await run(
            single.url,
            {"redis": single.proc.pid},
            {f"bench-{i}": "redis" for i in range(args.rooms)},
            args,
        )
    finally:
        single.stop()
    cluster = RedisClusterProcess(masters=3).start()
    try:
        pids = {f"127.0.0.1:{n.port}": n.proc.pid for n in cluster.masters() if n.proc}
        shard_of = {
            f"bench-{i}": f"127.0.0.1:{cluster.master_of(wire.room_slot_key(f'bench-{i}')).port}"
            for i in range(args.rooms)
        }
        report["cluster_3_masters"] = await run(cluster.url, pids, shard_of, args)
    finally:
        cluster.stop()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--rooms", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench/results/cluster-publish.json"))
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
