"""The benchmark driver: every server, one after another, against the same load generator.

    python bench/driver.py [--quick] [--servers NAME,...] [--scenarios NAME,...] [--repeat N]
                           [--out FILE]

Each server runs pinned to CPU 0 (`taskset`), the Node load generator (bench/node/loadgen.mjs)
pinned to CPU 1, everything on 127.0.0.1. For each server the scenarios run in a fixed order,
each in a fresh generator process with fresh connections: "idle" (10,000 idle connections:
memory and connection rate; first, so that the baseline is a fresh process), "room" (one room
of 1,000: fan-out at saturation, then 20 and 40 messages per second), "chat" (500 rooms of
two, everyone publishing), "join" (1,000 members into one room, then 10,000 into rooms of 10,
100 handshakes at a time) and "storm" (roomcast on Redis only: 10,000 clients in 1,000 rooms
with history lose their node to a SIGKILL; it restarts and they resume with since+epoch).
"idle100k" (100,000 idle connections from several 127.0.0.x source addresses) runs only when
named. Each measurement is the best of three windows, which drops the ones disturbed by other
work on the machine; with `--repeat N` every server runs N times (in turns) and each phase
keeps its median run. The server's CPU time is read from /proc at the edges
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
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
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
    commands: list[list[str]]  # one command per node; {port}, {redis}, {cluster}... filled in
    redis: int = 0  # redis-servers to start: {redis} is the first's port, {redis1} the second's
    cluster: int = 0  # masters of a Redis Cluster to start ({cluster}: their addresses)
    env: dict[str, str] = field(default_factory=dict)


def _has_room_classes() -> bool:
    """Whether this roomcast reads room classes (`--config`): the join scenario then also
    joins rooms of a class without presence."""
    try:
        import roomcast.room_classes  # noqa: F401
    except ImportError:
        return False
    return True


ROOM_CLASSES = BENCH / "rooms.toml"
"""The room classes `roomcast serve` gets in the benchmarks: `quiet:` rooms have no presence."""
CLASSES = ["--config", str(ROOM_CLASSES)] if _has_room_classes() else []


def roomcast_cmd(broker: str, *extra: str) -> list[str]:
    """`roomcast serve` with the per-connection limits that a load test would trip, off."""
    return [
        PYTHON, "-m", "roomcast", "serve", "--host", "127.0.0.1", "--port", "{port}",
        "--broker", broker, "--rate-limit", "off", "--max-connections", "off",
        "--max-connections-per-ip", "off", "--max-connections-per-user", "off",
        "--log-level", "warning", *CLASSES, *extra,
    ]  # fmt: skip


SHARDED = "redis://127.0.0.1:{redis}/0,redis://127.0.0.1:{redis1}/0"
"""Two nodes' broker in the sharded row: rooms spread over two redis-servers."""

SERVERS = {
    s.name: s
    for s in [
        Server("roomcast", "roomcast", [roomcast_cmd("memory://")]),
        # A fixed node id: a node restarted under its own id takes its stale presence out at
        # once (the storm scenario restarts it).
        Server("roomcast-redis-1", "roomcast",
               [roomcast_cmd("redis://127.0.0.1:{redis}/0", "--node-id", "bench-solo")],
               redis=1),
        Server("roomcast-redis-2", "roomcast",
               [roomcast_cmd("redis://127.0.0.1:{redis}/0", "--node-id", "bench-a"),
                roomcast_cmd("redis://127.0.0.1:{redis}/0", "--node-id", "bench-b")],
               redis=1),
        Server("roomcast-sharded-2", "roomcast",
               [roomcast_cmd(SHARDED, "--node-id", "bench-a"),
                roomcast_cmd(SHARDED, "--node-id", "bench-b")],
               redis=2),
        Server("roomcast-cluster-2", "roomcast",
               [roomcast_cmd("redis+cluster://{cluster}", "--node-id", "bench-a"),
                roomcast_cmd("redis+cluster://{cluster}", "--node-id", "bench-b")],
               cluster=3),
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


def join(*phases: tuple[str, int, int]) -> dict[str, Any]:
    """Phases of fresh connections (name, connections, room size), 100 handshakes at a time;
    with room classes, each phase again into rooms without presence (roomcast only)."""
    quiet = [(f"{name}_no_presence", n, size, "quiet:") for name, n, size in phases]
    return {
        "phases": [
            {"name": name, "connections": n, "room_size": size, "concurrency": min(100, n),
             "room_prefix": prefix}
            for name, n, size, prefix in [(*p, "") for p in phases] + (quiet if CLASSES else [])
        ],
        "timeout": 600,
    }  # fmt: skip


def storm(connections: int, room_size: int, recovery_timeout: float) -> dict[str, Any]:
    """Every client loses its node (killed, restarted) and resumes with since+epoch."""
    return {
        "connections": connections,
        "room_size": room_size,
        "concurrency": 100,
        "messages": 3,
        "recovery_timeout": recovery_timeout,
        "timeout": 240 + recovery_timeout,
    }


def idle_many(connections: int, sources: int) -> dict[str, Any]:
    """Idle connections from several source addresses (each has about 28,000 ports)."""
    return {
        "connections": connections,
        "room_size": 10,
        "concurrency": 100,
        "timeout": 900,
        "source_addresses": [f"127.0.0.{2 + i}" for i in range(sources)],
    }


FULL = {
    "idle": {"connections": 10_000, "room_size": 10, "concurrency": 100, "timeout": 150},
    "room": room(1000, warmup=1.0, duration=1.5, windows=3),
    "chat": {"rooms": 500, "window": 2, "warmup": 1.0, "duration": 1.5, "windows": 3},
    "join": join(("join_one_room", 1000, 1000), ("join_rooms_of_10", 10_000, 10)),
    "storm": storm(10_000, 10, recovery_timeout=120),
}
QUICK = {
    "idle": {"connections": 100, "room_size": 10, "concurrency": 20, "timeout": 20},
    "room": room(50, warmup=0.2, duration=0.4, windows=1),
    "chat": {"rooms": 20, "window": 2, "warmup": 0.2, "duration": 0.4, "windows": 1},
    "join": join(("join_one_room", 50, 50), ("join_rooms_of_10", 100, 10)),
    "storm": storm(40, 10, recovery_timeout=30),
}
OPT_IN = {
    "idle100k": idle_many(100_000, 5),
    # 1,000 and 5,000 members joining one room, with presence and (with classes) without.
    "join5k": {
        **join(("join_one_room", 1000, 1000), ("join_one_room_5000", 5000, 5000)),
        "scenario": "join",  # the generator's scenario
    },
}
"""Scenarios run only when named in --scenarios."""
ONLY = {"storm": {"roomcast-redis-1"}}
"""Scenarios that only some servers run (the storm needs history that survives a restart)."""
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


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """User and system CPU time of the processes, in clock ticks (whole numbers, so that a
    difference of two readings is never a rounding error below zero)."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes."""
    return sum(cpu_ticks(pids)) / TICK


async def settle(pids: list[int], quiet: float = 0.1, longest: float = 30.0) -> None:
    """Wait (at most `longest` seconds) until the processes use under `quiet` of a core over
    0.2 s: what a phase left behind (its leaves, its closes) is done before the next one."""
    deadline = time.monotonic() + longest
    before = cpu_seconds(pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = cpu_seconds(pids)
        if now - before < quiet * 0.2:
            return
        before = now


def peak_rss_bytes(proc: subprocess.Popen[bytes]) -> int:
    """The highest resident memory of a running process so far (VmHWM)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


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
        self.args: list[list[str]] = []
        self.redis: list[subprocess.Popen[bytes]] = []
        self.cluster: list[subprocess.Popen[bytes]] = []

    def stop(self) -> None:
        """Stop the nodes, then Redis (so that the nodes leave cleanly)."""
        stores = [*self.redis, *self.cluster]
        stop([p for p in self.procs if p not in stores])
        stop(stores)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self) -> None:
        redis_ports: dict[str, int] = {}
        for i in range(self.server.redis):
            redis_port = free_port()
            redis = self._spawn(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"], f"redis{i or ''}")  # fmt: skip
            self.redis.append(redis)
            self.procs.append(redis)
            redis_ports[f"redis{i or ''}"] = redis_port
            await wait_port(redis_port, redis, 10)
        seeds = await self.start_cluster() if self.server.cluster else ""
        for i, cmd in enumerate(self.server.commands):
            port = free_port()
            args = [a.format(port=port, cluster=seeds, **redis_ports) for a in cmd]
            proc = self._spawn(args, f"node{i}")
            self.procs.append(proc)
            self.ports.append(port)
            self.args.append(args)
            await wait_port(port, proc, 30)

    async def restart(self, index: int) -> float:
        """SIGKILL node `index`, start it again on the same port; returns when it was started
        (monotonic clock), once it listens. The restarted node goes last in `procs`."""
        nodes = [p for p in self.procs if p not in self.redis and p not in self.cluster]
        victim = nodes[index]
        victim.kill()
        victim.wait(10)
        self.procs.remove(victim)
        started = time.monotonic()
        proc = self._spawn(self.args[index], f"node{index}.restarted")
        self.procs.append(proc)
        await wait_port(self.ports[index], proc, 60)
        return started

    async def start_cluster(self, timeout: float = 30.0) -> str:
        """Start the masters of a Redis Cluster (no replica, no persistence), join them with
        `redis-cli --cluster create` and wait for the cluster to be ok; their addresses."""
        ports = cluster_ports(self.server.cluster)
        workdir = self.logdir / f"{self.server.name}.cluster"
        workdir.mkdir(exist_ok=True)
        for port in ports:
            proc = self._spawn(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-require-full-coverage", "no"], f"redis-{port}")  # fmt: skip
            self.cluster.append(proc)
            self.procs.append(proc)
            await wait_port(port, proc, 10)
        seeds = [f"127.0.0.1:{port}" for port in ports]
        create = await asyncio.create_subprocess_exec(
            "redis-cli", "--cluster", "create", *seeds, "--cluster-yes",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(timeout):
            if await create.wait() != 0:
                raise RuntimeError("redis-cli --cluster create failed")
            for port in ports:
                while True:
                    info = await asyncio.create_subprocess_exec(
                        "redis-cli", "-p", str(port), "cluster", "info",
                        stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    out, _ = await info.communicate()
                    if b"cluster_state:ok" in out:
                        break
                    await asyncio.sleep(0.1)  # the cluster's own state: bounded by timeout
        return ",".join(seeds)

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
        if self.server.proto != "roomcast" and "phases" in spec:
            # Rooms of a class (`quiet:`) are roomcast's: the peers join each size once.
            spec["phases"] = [p for p in spec["phases"] if not p.get("room_prefix")]
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
        marks: dict[tuple[str, int], tuple[int, int, float]] = {}
        server: dict[tuple[str, int], dict[str, float]] = {}
        timeout = float(spec.get("timeout", 90))
        try:
            async with asyncio.timeout(timeout + 10):
                async for raw in gen.stdout:
                    line = json.loads(raw)
                    event = line.pop("event")
                    if event == "mark" and line["name"] == "start":
                        key = (line["phase"], line["index"])
                        marks[key] = (*cpu_ticks(pids), time.monotonic())
                    elif event == "mark" and line["name"] == "end":
                        key = (line["phase"], line["index"])
                        user0, system0, t0 = marks[key]
                        user, system = cpu_ticks(pids)
                        ticks = user + system - user0 - system0
                        server[key] = {
                            "server_cpu_pct": 100 * ticks / TICK / (time.monotonic() - t0),
                            "server_cpu_s": ticks / TICK,
                            # The kernel's share: at a fixed rate mostly the writes' own.
                            "server_system_share": (system - system0) / ticks if ticks else 0.0,
                        }
                    elif event == "hold":
                        await asyncio.sleep(1.0)
                        rss = rss_bytes(pids)
                        out["rss_before_mib"] = rss0 / 2**20
                        out["rss_after_mib"] = rss / 2**20
                        out["kib_per_connection"] = (rss - rss0) / 1024 / line["connections"]
                        gen.stdin.write(b"go\n")
                        await gen.stdin.drain()
                    elif event == "settle":
                        await settle(pids)
                        gen.stdin.write(b"go\n")
                        await gen.stdin.drain()
                    elif event == "kill":
                        # The storm: SIGKILL the first node, start it again on its port.
                        redis_cpu = cpu_seconds([p.pid for p in self.redis + self.cluster])
                        started = await self.restart(0)
                        pids = self.pids()
                        gen.stdin.write(f"go {time.monotonic() - started:.3f}\n".encode())
                        await gen.stdin.drain()
                    elif event == "result":
                        if name == "storm":
                            out["server_peak_rss_mib"] = peak_rss_bytes(self.procs[-1]) / 2**20
                            # CPU of the restarted node since its start, and of Redis since
                            # the kill: the storm's cost, whatever else ran on the machine.
                            out["server_cpu_s"] = cpu_seconds([self.procs[-1].pid])
                            out["redis_cpu_s"] = (
                                cpu_seconds([p.pid for p in self.redis + self.cluster]) - redis_cpu
                            )
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
            elif (phase, 0) in server and r.get("connections"):
                # A join phase: the server's CPU over its joins, and per join.
                r.update(server[(phase, 0)])
                r["server_us_per_join"] = 1e6 * r["server_cpu_s"] / r["connections"]
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
        names = [n for n in self.scenarios if self.server.name in ONLY.get(n, {self.server.name})]
        if not names:
            return result
        try:
            await self.start()
        except Exception as exc:
            self.stop()
            return {"error": f"did not start: {exc}"}
        try:
            for name in names:
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


def join_table(results: dict[str, Any]) -> str:
    """The join and storm scenarios: one row per server that ran them."""
    head = (
        f"{'server':<18}{'join 1x1000/s':>14}{'1st/last 10% ms':>17}{'10x10/s':>9}"
        f"{'quiet 1x1000/s':>15}{'1st/last 10% ms':>17}{'10x10/s':>9}"
        f"{'storm s':>9}{'recovered':>11}{'refused':>9}{'peak MiB':>9}"
    )
    rows = [head, "-" * len(head)]
    keys = ("join_one_room", "join_rooms_of_10", "join_one_room_no_presence",
            "join_rooms_of_10_no_presence", "storm")  # fmt: skip
    for name, r in results.items():
        one, ten, quiet_one, quiet_ten, st = (r.get(k, {}) for k in keys)
        if not (one or ten or st):
            continue

        def tenths(p: dict[str, Any]) -> str:
            return f"{fmt(p.get('first_tenth_ms'))}/{fmt(p.get('last_tenth_ms'))}"

        rows.append(
            f"{name:<18}{fmt(one.get('connections_per_s')):>14}{tenths(one):>17}"
            f"{fmt(ten.get('connections_per_s')):>9}"
            f"{fmt(quiet_one.get('connections_per_s')):>15}{tenths(quiet_one):>17}"
            f"{fmt(quiet_ten.get('connections_per_s')):>9}"
            f"{fmt(st.get('recovery_seconds'), '.1f'):>9}{fmt(st.get('recovered')):>11}"
            f"{fmt(st.get('refused')):>9}{fmt(st.get('server_peak_rss_mib')):>9}"
        )
    return "\n".join(rows)


# The number each phase's median run is chosen by (--repeat).
MEDIAN_KEY = {
    "fanout": "deliveries_per_s",
    "chat": "deliveries_per_s",
    "latency": "p99_ms",
    "cpu": "server_us_per_delivery",
    "idle": "kib_per_connection",
    "idle100k": "kib_per_connection",
    "join_one_room": "connections_per_s",
    "join_rooms_of_10": "connections_per_s",
    "join_one_room_no_presence": "connections_per_s",
    "join_rooms_of_10_no_presence": "connections_per_s",
    "storm": "recovery_seconds",
}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase, the run whose headline number is the median of the runs that measured it
    (a run with an error counts only when every run had one)."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, Any] = {}
    phases = {k for r in runs for k, v in r.items() if isinstance(v, dict)}
    for phase in sorted(phases):
        key = MEDIAN_KEY.get(phase, "deliveries_per_s")
        measured = [r[phase] for r in runs if isinstance(r.get(phase, {}).get(key), int | float)]
        if measured:
            measured.sort(key=lambda v: v[key])
            merged[phase] = {**measured[len(measured) // 2], "runs": len(measured)}
        else:
            merged[phase] = next(r[phase] for r in runs if phase in r)
    for r in runs:
        if "error" in r:
            merged.setdefault("error", r["error"])
    return merged


def save(path: Path, report: dict[str, Any]) -> None:
    """Write the report (after each server, so an interrupted run keeps what it measured)."""
    path.write_text(json.dumps(report, indent=2) + "\n")


def add_baselines(checkout: Path) -> None:
    """A `<server>-baseline` beside each roomcast server, running `checkout`'s code."""
    source = str(checkout.resolve() / "src")
    for name, server in list(SERVERS.items()):
        if server.proto == "roomcast":
            SERVERS[f"{name}-baseline"] = replace(
                server, name=f"{name}-baseline", env={**server.env, "PYTHONPATH": source}
            )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads, to check the scripts")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated names")
    parser.add_argument("--scenarios", default=",".join(FULL), help="comma-separated names")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (medians)")
    parser.add_argument(
        "--idle100k-connections", type=int, default=100_000, help="connections of idle100k"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="another checkout of roomcast: adds a `<server>-baseline` of every server that"
        " runs its code (on PYTHONPATH), to compare two versions in one run",
    )
    parser.add_argument("--out", default=str(BENCH / "results/results.json"))
    args = parser.parse_args()
    if args.baseline:
        add_baselines(Path(args.baseline))
    if shutil.which("taskset") is None or shutil.which("node") is None:
        print("bench needs taskset and node on PATH", file=sys.stderr)
        return 2
    many = idle_many(args.idle100k_connections, -(-args.idle100k_connections // 25_000))
    chosen = {**OPT_IN, "idle100k": many, **(QUICK if args.quick else FULL)}
    scenarios = {k: chosen[k] for k in args.scenarios.split(",")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logdir = out.parent / "logs"
    logdir.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "scenarios": scenarios,
        "repeat": args.repeat,
        "servers": {},
    }
    names = args.servers.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for turn in range(args.repeat):  # in turns, so that a noisy minute hits every server once
        for name in names:
            server = SERVERS[name]
            if (server.redis or server.cluster) and shutil.which("redis-server") is None:
                report["servers"][name] = {"error": "redis-server not installed"}
                continue
            print(f"== {name} ({turn + 1}/{args.repeat})", file=sys.stderr, flush=True)
            runs[name].append(await Run(server, scenarios, logdir).run())
            report["servers"][name] = median_run(runs[name])
            if args.repeat > 1:
                report["runs"] = runs
            save(out, report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(out, report)
    print(table(report["servers"]))
    print()
    print(join_table(report["servers"]))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
