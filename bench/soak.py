"""The soak run: minutes of connection churn and messages, watching for leaks.

    python bench/soak.py [--seconds 120] [--broker memory|redis] [--workers 20] [--rooms 10]
                         [--out FILE]

Starts the server(s) as real processes (one node on memory://, two nodes on one redis-server
for redis), then runs waves of churn (tests/integration/reliability.py `churn`: members join
random rooms on random nodes, send acknowledged frames, read, then leave, one in four by
dropping the TCP connection without a close; an HTTP publisher publishes meanwhile). After each
wave it samples every node's RSS, asyncio task count and connections. At the end, with the
load gone, it checks that no room, connection or task is left and (redis) that Redis holds
only the rooms' history keys, each with a TTL, and the live nodes' leases. Prints a table
and writes the numbers as JSON; docs/benchmarks.md ("Soak") quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import RedisProcess, running_server  # noqa: E402
from tests.integration.reliability import churn, metric, rss_kib  # noqa: E402

WAVE = 10.0
"""Seconds of churn between two samples."""


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and return its samples and end state."""
    with ExitStack() as stack:
        redis: RedisProcess | None = None
        if args.broker == "redis":
            redis = RedisProcess().start()
            stack.callback(redis.stop)
            nodes = [
                stack.enter_context(
                    running_server(
                        "--broker", redis.url, "--node-id", f"soak{i}", "--rate-limit", "off"
                    )
                )
                for i in range(2)
            ]
        else:
            nodes = [stack.enter_context(running_server("--rate-limit", "off"))]
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        idle_tasks = [metric(n, "roomcast_tasks") for n in nodes]
        samples: list[dict[str, Any]] = []
        totals: dict[str, int] = {}
        started = time.monotonic()
        wave = 0
        while time.monotonic() - started < args.seconds:
            wave += 1
            stats = await churn(
                [n.ws_url for n in nodes],
                [n.url for n in nodes],
                seconds=WAVE,
                workers=args.workers,
                rooms=args.rooms,
                seed=wave,
            )
            for key, value in vars(stats).items():
                totals[key] = totals.get(key, 0) + value
            sample = {
                "t": round(time.monotonic() - started, 1),
                "rss_kib": [rss_kib(p) for p in pids],
                "tasks": [metric(n, "roomcast_tasks") for n in nodes],
                "connections": [metric(n, "roomcast_connections") for n in nodes],
                "sessions": totals["sessions"],
            }
            samples.append(sample)
            print(
                f"t={sample['t']:>6}s sessions={sample['sessions']:>6} "
                f"rss_kib={sample['rss_kib']} tasks={sample['tasks']} "
                f"connections={sample['connections']}",
                flush=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (  # noqa: ASYNC110
            any(metric(n, "roomcast_connections") for n in nodes)
            or any(metric(n, "roomcast_tasks") > b for n, b in zip(nodes, idle_tasks, strict=True))
        ):
            await asyncio.sleep(0.5)
        end: dict[str, Any] = {
            "rss_kib": [rss_kib(p) for p in pids],
            "tasks": [metric(n, "roomcast_tasks") for n in nodes],
            "idle_tasks": idle_tasks,
            "connections": [metric(n, "roomcast_connections") for n in nodes],
            "rooms": [],
        }
        for node in nodes:
            with node.http() as http:
                end["rooms"] += http.get("/api/v1/rooms").json()["rooms"]
        if redis is not None:
            end["redis"] = await _redis_keys(redis.url, [f"soak{i}" for i in range(len(nodes))])
        return {
            "broker": args.broker,
            "seconds": round(time.monotonic() - started, 1),
            "workers": args.workers,
            "rooms": args.rooms,
            "totals": totals,
            "samples": samples,
            "end": end,
        }


async def _redis_keys(url: str, node_ids: list[str]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    store = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        keys = sorted(await store.keys("*"))
        history = re.compile(r"^rc:\{soak-\d+\}:[oes]$")
        from roomcast.brokers.redis import wire

        nodes = {wire.lease_key(n) for n in node_ids} | {wire.NODES_KEY}
        without_ttl = [k for k in keys if history.match(k) and await store.ttl(k) < 0]
        return {
            "keys": len(keys),
            "history_keys": sum(bool(history.match(k)) for k in keys),
            "leftovers": [k for k in keys if not history.match(k) and k not in nodes],
            "history_keys_without_ttl": without_ttl,
        }
    finally:
        await store.aclose()


def main() -> None:
    """Parse the flags, run, print the verdict, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--broker", choices=["memory", "redis"], default="memory")
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    end = result["end"]
    first, last = result["samples"][0]["rss_kib"], end["rss_kib"]
    print(
        f"sessions={result['totals']['sessions']} dropped={result['totals']['dropped']} "
        f"frames={result['totals']['sent']} published={result['totals']['published']}"
    )
    print(
        f"rss_kib first wave {first} -> end {last}; tasks {end['tasks']} "
        f"(idle {end['idle_tasks']}); connections {end['connections']}; rooms {end['rooms']}"
    )
    if "redis" in end:
        print(f"redis: {end['redis']}")
    leaked = (
        bool(end["rooms"])
        or any(end["connections"])
        or any(t > i for t, i in zip(end["tasks"], end["idle_tasks"], strict=True))
        or bool(end.get("redis", {}).get("leftovers"))
    )
    print("LEAK" if leaked else "no leak")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if leaked else 0)


if __name__ == "__main__":
    main()
