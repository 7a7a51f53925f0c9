"""The benchmark driver: every server, one after another, against the same load generator.

    python bench/driver.py [--quick] [--servers NAME,...] [--out FILE]

Each server runs pinned to CPU 0 (`taskset`), the Node load generator (bench/node/loadgen.mjs)
pinned to CPU 1, everything on 127.0.0.1. For each server the scenarios run in a fixed order,
each in a fresh generator process with fresh connections: "idle" (10,000 idle connections:
memory and connection rate; first, so that the baseline is a fresh process), "room" (one room
of 1,000: fan-out at saturation, then 20 and 40 messages per second) and "chat" (500 rooms of
two, everyone publishing). Each measurement is the best of three windows, which drops the ones
disturbed by other work on the machine. The server's CPU time is read from /proc at the edges
of each window, so the table shows both processes' CPU and whether the generator kept up.
Prints a table and writes the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CPU = "0"
LOADGEN_CPU = "1"


@dataclass
class Server:
    """How to start one server under test."""

    name: str
    proto: str  # the generator's wire protocol: raw, roomcast or sio
    commands: list[list[str]]  # one command per node; {port} and {redis} are filled in
    redis: bool = False
    env: dict[str, str] = field(default_factory=dict)


def roomcast_cmd(broker: str, *extra: str) -> list[str]:
    """`roomcast serve` with the per-connection limits that a load test would trip, off."""
    return [
        PYTHON, "-m", "roomcast", "serve", "--host", "127.0.0.1", "--port", "{port}",
        "--broker", broker, "--rate-limit", "off", "--max-connections", "off",
        "--max-connections-per-ip", "off", "--max-connections-per-user", "off",
        "--log-level", "warning", *extra,
    ]  # fmt: skip


SERVERS = {
    s.name: s
    for s in [
        Server("roomcast", "roomcast", [roomcast_cmd("memory://")]),
        Server("roomcast-redis-1", "roomcast", [roomcast_cmd("redis://127.0.0.1:{redis}/0")],
               redis=True),
        Server("roomcast-redis-2", "roomcast",
               [roomcast_cmd("redis://127.0.0.1:{redis}/0", "--node-id", "bench-a"),
                roomcast_cmd("redis://127.0.0.1:{redis}/0", "--node-id", "bench-b")],
               redis=True),
        Server("roomcast-outbox", "roomcast",
               [[PYTHON, str(BENCH / "peers/roomcast_outbox.py"),
                 *roomcast_cmd("memory://")[3:]]]),
        Server("websockets", "raw", [[PYTHON, str(BENCH / "peers/ws_broadcast.py"), "{port}"]]),
        Server("python-socketio", "sio",
               [[PYTHON, str(BENCH / "peers/sio_server.py"), "{port}"]]),
        Server("node-socketio", "sio", [["node", str(BENCH / "node/sio_server.mjs"), "{port}"]]),
        Server("node-ws", "raw", [["node", str(BENCH / "node/ws_plain.mjs"), "{port}"]]),
    ]
}  # fmt: skip


def room(members: int, warmup: float, duration: float, windows: int) -> dict[str, Any]:
    """One room of `members`: fan-out at saturation, then 20 and 40 messages per second."""
    timing = {"warmup": warmup, "duration": duration, "windows": windows}
    return {
        "members": members,
        "phases": [
            {"name": "fanout", "kind": "fanout", "window": 16, **timing},
            {"name": "latency", "kind": "fixed", "rate": 20, **timing},
            {"name": "cpu", "kind": "fixed", "rate": 40, **timing},
        ],
    }


FULL = {
    "idle": {"connections": 10_000, "room_size": 10, "concurrency": 100, "timeout": 150},
    "room": room(1000, warmup=1.0, duration=1.5, windows=3),
    "chat": {"rooms": 500, "window": 2, "warmup": 1.0, "duration": 1.5, "windows": 3},
}
QUICK = {
    "idle": {"connections": 100, "room_size": 10, "concurrency": 20, "timeout": 20},
    "room": room(50, warmup=0.2, duration=0.4, windows=1),
    "chat": {"rooms": 20, "window": 2, "warmup": 0.2, "duration": 0.4, "windows": 1},
}
# Which measured window a scenario keeps: the one least disturbed by other work.
BEST = {
    "fanout": lambda w: -w["deliveries_per_s"],
    "chat": lambda w: -w["deliveries_per_s"],
    "latency": lambda w: w["p99_ms"] if w["p99_ms"] is not None else float("inf"),
    "cpu": lambda w: w.get("server_us_per_delivery", float("inf")),
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until something accepts on the port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout} s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL whoever is still there after a few seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 6
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(2)


class Run:
    """One server's processes and the scenarios run against them."""

    def __init__(self, server: Server, scenarios: dict[str, dict[str, Any]], logdir: Path):
        self.server = server
        self.scenarios = scenarios
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.redis: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the nodes, then Redis (so that the nodes leave cleanly)."""
        stop([p for p in self.procs if p is not self.redis])
        stop([self.redis] if self.redis is not None else [])

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> None:
        redis_port = 0
        if self.server.redis:
            redis_port = free_port()
            self.redis = self._spawn(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"], "redis")  # fmt: skip
            self.procs.append(self.redis)
            await wait_port(redis_port, self.redis, 10)
        for i, cmd in enumerate(self.server.commands):
            port = free_port()
            args = [a.format(port=port, redis=redis_port) for a in cmd]
            proc = self._spawn(args, f"node{i}")
            self.procs.append(proc)
            self.ports.append(port)
            await wait_port(port, proc, 30)

    def _spawn(self, args: list[str], tag: str) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{self.server.name}.{tag}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *args], stdout=log, stderr=subprocess.STDOUT,
            cwd=ROOT, env={**os.environ, **self.server.env}, start_new_session=True,
        )  # fmt: skip

    async def scenario(self, name: str) -> dict[str, dict[str, Any]]:
        """Run one scenario in a fresh generator process; returns each phase's results."""
        spec = {
            "proto": self.server.proto,
            "urls": [f"ws://127.0.0.1:{p}" for p in self.ports],
            "scenario": name,
            **self.scenarios[name],
        }
        pids = self.pids()
        gen = await asyncio.create_subprocess_exec(
            "taskset", "-c", LOADGEN_CPU, "node", str(BENCH / "node/loadgen.mjs"),
            json.dumps(spec), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        assert gen.stdout is not None
        assert gen.stdin is not None
        results: dict[str, dict[str, Any]] = {}
        out: dict[str, Any] = {}
        rss0 = rss_bytes(pids)
        marks: dict[tuple[str, int], tuple[float, float]] = {}
        server: dict[tuple[str, int], dict[str, float]] = {}
        timeout = float(spec.get("timeout", 90))
        try:
            async with asyncio.timeout(timeout + 10):
                async for raw in gen.stdout:
                    line = json.loads(raw)
                    event = line.pop("event")
                    if event == "mark" and line["name"] == "start":
                        key = (line["phase"], line["index"])
                        marks[key] = (cpu_seconds(pids), time.monotonic())
                    elif event == "mark" and line["name"] == "end":
                        key = (line["phase"], line["index"])
                        cpu0, t0 = marks[key]
                        cpu = cpu_seconds(pids) - cpu0
                        server[key] = {
                            "server_cpu_pct": 100 * cpu / (time.monotonic() - t0),
                            "server_cpu_s": cpu,
                        }
                    elif event == "hold":
                        await asyncio.sleep(1.0)
                        rss = rss_bytes(pids)
                        out["rss_before_mib"] = rss0 / 2**20
                        out["rss_after_mib"] = rss / 2**20
                        out["kib_per_connection"] = (rss - rss0) / 1024 / line["connections"]
                        gen.stdin.write(b"go\n")
                        await gen.stdin.drain()
                    elif event == "result":
                        results[line["scenario"]] = {**out, **line}
                        out = {}
                    elif event == "error":
                        out["error"] = line["error"]
                await gen.wait()
        except TimeoutError:
            out["error"] = "timed out"
            gen.kill()
            await gen.wait()
        if out:  # an error (or a timeout) after the last result: it belongs to the next phase
            phases = [p["name"] for p in spec.get("phases", [{"name": name}])]
            results.setdefault(next((p for p in phases if p not in results), name), out)
        for phase, r in results.items():
            windows = r.pop("windows", [])
            for k, w in enumerate(windows):
                w.update(server.get((phase, k), {}))
                if "server_cpu_s" in w and w["deliveries"]:
                    w["server_us_per_delivery"] = 1e6 * w["server_cpu_s"] / w["deliveries"]
            if windows:
                r.update(min(windows, key=BEST[phase]))
                r["windows"] = windows
        for p in self.procs:
            if p.poll() is not None:
                for r in results.values():
                    r.setdefault("error", f"server exited with {p.returncode}")
        return results

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait (bounded) until the servers are idle: the previous scenario's thousands of
        disconnections (and, with Redis, presence removals) must not overlap the next one."""
        pids = self.pids()
        deadline = time.monotonic() + timeout
        before = cpu_seconds(pids)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = cpu_seconds(pids)
            if now - before < 0.05:  # under 10% of a core
                return
            before = now

    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        try:
            await self.start()
        except Exception as exc:
            self.stop()
            return {"error": f"did not start: {exc}"}
        try:
            for name in self.scenarios:
                result.update(await self.scenario(name))
                if any(p.poll() is not None for p in self.procs):
                    break
                await self.settle()
        finally:
            self.stop()
        return result


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "node": node,
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    """The human-readable summary: one row per server."""
    head = (
        f"{'server':<18}{'fanout/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'gen%':>6}{'srv%':>6}"
        f"{'chat/s':>9}{'p99@20k':>9}{'us/dlv@40k':>11}{'KiB/conn':>9}{'conn/s':>8}"
    )
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        if "error" in r and len(r) == 1:
            rows.append(f"{name:<18}{r['error']}")
            continue
        f, c, lat, cpu, idle = (r.get(k, {}) for k in ("fanout", "chat", "latency", "cpu",
                                                        "idle"))  # fmt: skip
        rows.append(
            f"{name:<18}{fmt(f.get('deliveries_per_s')):>10}{fmt(f.get('p50_ms'), '.1f'):>8}"
            f"{fmt(f.get('p99_ms'), '.1f'):>8}{fmt(f.get('loadgen_cpu_pct')):>6}"
            f"{fmt(f.get('server_cpu_pct')):>6}{fmt(c.get('deliveries_per_s')):>9}"
            f"{fmt(lat.get('p99_ms'), '.1f'):>9}{fmt(cpu.get('server_us_per_delivery'), '.2f'):>11}"
            f"{fmt(idle.get('kib_per_connection'), '.1f'):>9}"
            f"{fmt(idle.get('connections_per_s')):>8}"
        )
        errors = [f"{k}: {v['error']}" for k, v in r.items() if isinstance(v, dict)
                  and "error" in v]  # fmt: skip
        rows.extend(f"{'':<18}! {e}" for e in errors)
    return "\n".join(rows)


def save(path: Path, report: dict[str, Any]) -> None:
    """Write the report (after each server, so an interrupted run keeps what it measured)."""
    path.write_text(json.dumps(report, indent=2) + "\n")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads, to check the scripts")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated names")
    parser.add_argument("--scenarios", default=",".join(FULL), help="comma-separated names")
    parser.add_argument("--out", default=str(BENCH / "results/results.json"))
    args = parser.parse_args()
    if shutil.which("taskset") is None or shutil.which("node") is None:
        print("bench needs taskset and node on PATH", file=sys.stderr)
        return 2
    chosen = QUICK if args.quick else FULL
    scenarios = {k: chosen[k] for k in args.scenarios.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logdir = out.parent / "logs"
    logdir.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "scenarios": scenarios,
        "servers": {},
    }
    for name in args.servers.split(","):
        server = SERVERS[name]
        if server.redis and shutil.which("redis-server") is None:
            report["servers"][name] = {"error": "redis-server not installed"}
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        report["servers"][name] = await Run(server, scenarios, logdir).run()
        save(out, report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(out, report)
    print(table(report["servers"]))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
