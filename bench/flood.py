"""A bystander's round trip while another client floods the server (issue 14, item 2).

    python bench/flood.py [--seconds 10] [--burst 20000] [--flooders 4] [--out FILE]

Starts `roomcast serve` as a real process. A bystander in one room sends a `ping` frame
every 10 ms and times each pong: first alone (the baseline), then while `--flooders` clients
on connections of their own write bursts of `--burst` tiny invalid frames (one write each,
about 7 bytes a frame), each reconnecting after its 4429, as fast as they can. Prints the
bystander's median and 99th percentile round trip in both phases and the flood's rate;
docs/security.md ("Abuse limits") quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import running_server  # noqa: E402

PACE = 0.01
"""Seconds between a pong and the bystander's next ping."""


async def bystander(url: str, stop: asyncio.Event, rtts: list[float]) -> None:
    """Ping until `stop`; record each round trip in milliseconds."""
    async with websockets.connect(f"{url}?username=bystander&roomID=calm") as ws:
        await ws.recv()  # welcome
        while not stop.is_set():
            token = os.urandom(4).hex()
            start = time.perf_counter()
            await ws.send(orjson.dumps({"topic": "ping", "payload": token}).decode())
            while orjson.loads(await ws.recv())["topic"] != "pong":
                pass
            rtts.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(PACE)  # 100 pings a second: well inside the rate limit


async def flooder(url: str, name: str, burst: int, stop: asyncio.Event, sent: list[int]) -> None:
    """Write bursts of invalid frames, reconnecting after each close, until `stop`."""
    while not stop.is_set():
        async with websockets.connect(f"{url}?username={name}&roomID=storm") as ws:
            await ws.recv()
            for _ in range(burst):
                ws.protocol.send_text(b"x")
            ws.send_data()
            sent.append(burst)
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed:
                pass


def summary(rtts: list[float]) -> dict[str, float]:
    ordered = sorted(rtts)
    return {
        "pings": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "max_ms": round(ordered[-1], 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with running_server() as server:
        url = server.ws_url
        calm: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(bystander(url, stop, calm))
        await asyncio.sleep(args.seconds / 2)  # a measured phase, not synchronisation
        stop.set()
        await task
        stormy: list[float] = []
        sent: list[int] = []
        stop = asyncio.Event()
        tasks = [
            *(
                asyncio.create_task(flooder(url, f"flooder{i}", args.burst, stop, sent))
                for i in range(args.flooders)
            ),
            asyncio.create_task(bystander(url, stop, stormy)),
        ]
        started = time.perf_counter()
        await asyncio.sleep(args.seconds)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return {
        "burst": args.burst,
        "flooders": args.flooders,
        "baseline": summary(calm),
        "under_flood": summary(stormy),
        "flood_frames_per_s": round(sum(sent) / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
