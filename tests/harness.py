"""Test harness: real roomcast processes, a real redis-server, real WebSocket clients.

Every wait here is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = re.compile(r"roomcast\.(?:ready|listening) url=(http://[^\s]+)")
"""The line a started server logs: ready, or listening but not ready (its broker is down)."""
START_TIMEOUT = 20.0
RECV_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that starts later.

    A port from the ephemeral range may meanwhile become the source port of some outgoing
    connection on the machine (even of a node connecting to that very port, which then
    connects to itself), and the server cannot bind it; ports below the range are only ever
    taken by a bind.
    """
    low = 32768
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/sys/net/ipv4/ip_local_port_range") as f,
    ):
        low = int(f.read().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 16000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class LogReader:
    """Collects a process's stderr lines in a thread; lets tests wait for a pattern."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = START_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    if self.lines[index] == "<eof>":
                        raise AssertionError(
                            f"process ended before {regex.pattern!r}:\n" + self.text()
                        )
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {regex.pattern!r}:\n" + self.text()
                    )
                self._cond.wait(left)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        return "\n".join(self.lines[-200:])


@dataclass
class ServerProcess:
    """A `roomcast serve` process started as a user would start it."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    module: str = "roomcast"
    """The module run with `python -m`: roomcast's CLI, or a test app with the same flags."""
    proc: subprocess.Popen[bytes] | None = None
    log: LogReader | None = None
    url: str = ""

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self.log = LogReader(self.proc.stderr)
        self.url = self.log.wait_for(READY, timeout).group(1)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/api/v1/ws"

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=RECV_TIMEOUT, **kwargs)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._release()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._release()

    def _release(self) -> None:
        """Close the stderr pipe once the reader has seen its end."""
        if self.proc is not None and self.proc.poll() is not None and self.log is not None:
            self.log.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def logged(servers: Sequence[ServerProcess], *parts: str) -> int:
    """Log lines of `servers` that contain every one of `parts`, counted over all of them."""
    return sum(
        1
        for server in servers
        if server.log is not None
        for line in list(server.log.lines)
        if all(part in line for part in parts)
    )


async def logged_once_at_least(
    servers: Sequence[ServerProcess], *parts: str, timeout: float = 10.0
) -> int:
    """:func:`logged`, once it is at least 1 (bounded by `timeout`): a process writes its log
    line before or after the frames it sends, and the log is read by another thread."""
    async with asyncio.timeout(timeout):
        while (count := logged(servers, *parts)) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return count


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A roomcast server on a free port, stopped on exit."""
    server = ServerProcess(["--port", "0", *args], env or {})
    try:
        yield server.start()
    finally:
        server.stop()


UVICORN_READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


@contextlib.contextmanager
def uvicorn_process(command: Sequence[str]) -> Iterator[tuple[str, LogReader]]:
    """`command`, a process that runs uvicorn on a free port (`--port 0`), until the block
    ends: (its URL, its log)."""
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = LogReader(proc.stderr)
    try:
        yield log.wait_for(UVICORN_READY).group(1), log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def uvicorn_app(app: str, app_dir: str) -> contextlib.AbstractContextManager[tuple[str, LogReader]]:
    """`uvicorn --app-dir APP_DIR APP` on a free port as a real process: (its URL, its log)."""
    return uvicorn_process(
        [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, app, "--host", "127.0.0.1",
         "--port", "0", "--ws", "websockets-sansio"]
    )  # fmt: skip


class RedisProcess:
    """A throwaway redis-server on a free loopback port (`args`: more of its options)."""

    def __init__(self, port: int | None = None, args: Sequence[str] = ()) -> None:
        self.port = port or quiet_port()
        self.dir = tempfile.mkdtemp(prefix="roomcast-redis-")
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.args = args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup.sh --test")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self._wait_started()

    def _wait_started(self) -> RedisProcess:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            time.sleep(0.05)  # polling a port that is not open yet: bounded by the deadline
        raise RuntimeError("redis-server did not start in 10 s")

    def kill(self) -> None:
        """SIGKILL the server (its directory stays, for a restart with `start`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_command(port: int, *args: str, timeout: float = 5.0) -> str:
    """Send one command to the Redis (or Sentinel) on `port`; its reply, as redis-cli prints
    it (empty for nil)."""
    exe = shutil.which("redis-cli")
    if exe is None:
        raise RuntimeError("redis-cli is not installed: run scripts/setup.sh --test")
    result = subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout.strip()


def _replication_field(port: int, name: str) -> str | None:
    """One field of `INFO replication` of the Redis on `port`."""
    for line in redis_command(port, "INFO", "replication").splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


class SentinelSet:
    """A Redis master, one replica and one Sentinel watching them (quorum 1, a master that
    does not answer for a second is failed over), each a process on a loopback port.

    `url` is the broker URL (`redis+sentinel://127.0.0.1:PORT/roomcast/0`).
    """

    MASTER = "roomcast"

    def __init__(self) -> None:
        # (No delay before a full sync: Redis waits 5 s by default for more replicas.)
        sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisProcess(args=sync)
        self.replica = RedisProcess(args=[*sync, "--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel = RedisProcess()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.MASTER}/0"

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        # The replica attached first: the Sentinel's first look at the master (at once, then
        # every 10 s) lists it, so a busy machine does not wait for the second look.
        self.wait(
            lambda: (
                "master_link_status:up" in redis_command(self.replica.port, "INFO", "replication")
            )
        )
        config = os.path.join(self.sentinel.dir, "sentinel.conf")
        with open(config, "w") as f:
            f.write(
                f"port {self.sentinel.port}\nbind 127.0.0.1\ndir {self.sentinel.dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
            )
        exe = shutil.which("redis-server")
        assert exe is not None
        self.sentinel.proc = subprocess.Popen(
            [exe, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.sentinel._wait_started()
        # The Sentinel must know the replica (it learns it from the master) to fail over.
        self.wait(
            lambda: (
                f"\n{self.replica.port}\n"
                in redis_command(self.sentinel.port, "SENTINEL", "REPLICAS", self.MASTER)
            )
        )
        return self

    def master_port(self) -> int:
        """The port of the master the Sentinel names now."""
        reply = redis_command(
            self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER
        )
        return int(reply.split()[-1])

    def wait_replicated(self) -> None:
        """Return once the replica has processed everything the master had written when this
        was called (bounded). Not `WAIT`: on a connection that wrote nothing it returns at
        once, whatever the replica has."""
        target = _replication_field(self.master.port, "master_repl_offset")
        assert target is not None

        def caught_up() -> bool:
            if _replication_field(self.replica.port, "master_link_status") != "up":
                return False
            done = _replication_field(self.replica.port, "slave_repl_offset")
            return done is not None and int(done) >= int(target)

        self.wait(caught_up)

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Poll `predicate` (Sentinel and replication have no event to wait on), bounded."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the Sentinel set")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.stop()


def cluster_ports(count: int) -> list[int]:
    """`count` free ports whose cluster bus ports (+10000) are free too, all below the
    kernel's ephemeral range (see `quiet_port`)."""
    low = 32768
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/sys/net/ipv4/ip_local_port_range") as f,
    ):
        low = int(f.read().split()[0])
    ports: list[int] = []
    for _ in range(1000):
        port = random.randrange(max(1024, low - 16000), low - 10000)
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports for a Redis Cluster")


class RedisClusterProcess:
    """A throwaway Redis Cluster on loopback: `masters` masters, each with `replicas`
    replicas, `cluster-require-full-coverage no` (a shard down leaves the others serving)
    and a short `cluster-node-timeout` (a master is failed over within about a second)."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        ports = cluster_ports(masters * (1 + replicas))
        options = (
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(self.NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage",
            "no",
            "--cluster-replica-validity-factor",
            "0",
        )
        self.nodes = [
            RedisProcess(port, [*options, "--cluster-config-file", f"nodes-{port}.conf"])
            for port in ports
        ]
        self.replicas = replicas
        self.master_count = masters

    @property
    def url(self) -> str:
        """The roomcast broker URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisClusterProcess:
        for node in self.nodes:
            node.start()
        exe = shutil.which("redis-cli")
        if exe is None:
            raise RuntimeError("redis-cli is not installed: run scripts/setup.sh --test")
        subprocess.run(
            [
                exe,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        self.wait_ok()
        return self

    def cli(self, port: int, *args: str, timeout: float = 5.0) -> str:
        """One redis-cli command against the node on `port`; its output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.stdout

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says the cluster is ok, every slot is served by a live
        master and every live replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                if all(self._node_ok(n.port) for n in self.live()):
                    return
            time.sleep(0.1)  # polling the cluster's own state: bounded by the deadline
        raise RuntimeError(f"the Redis Cluster was not ok within {timeout} s")

    def _node_ok(self, port: int) -> bool:
        info = self.cli(port, "cluster", "info")
        if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
            return False
        masters = {m.port for m in self.masters()}
        if len(masters) != self.master_count:
            return False
        if port in masters:
            return True
        return "master_link_status:up" in self.cli(port, "info", "replication")

    def masters(self) -> list[RedisProcess]:
        """The live nodes that are masters now (as the first live node sees it)."""
        live = self.live()
        if not live:
            return []
        view = self.cli(live[0].port, "cluster", "nodes")
        ports = set()
        for line in view.splitlines():
            fields = line.split()
            if len(fields) > 2 and "master" in fields[2] and "fail" not in fields[2]:
                ports.add(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return [n for n in live if n.port in ports]

    def master_of(self, key: str) -> RedisProcess:
        """The live master that serves `key`'s slot."""
        live = self.live()
        slot = int(self.cli(live[0].port, "cluster", "keyslot", key).strip())
        for node in self.masters():
            for line in self.cli(node.port, "cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for item in fields[8:]:
                        low, _, high = item.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return node
        raise RuntimeError(f"no live master serves {key!r} (slot {slot})")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


OPEN_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()
"""Every :class:`Client` made; what a test left open (it failed before closing them) is
aborted after it, so that its sockets do not fail a later test with a ResourceWarning."""


class Client:
    """A WebSocket client that reads JSON frames with a bounded wait."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        OPEN_CLIENTS.add(self)

    @classmethod
    async def connect(
        cls, ws_url: str, username: str | None = None, room: str | None = None, **params: Any
    ) -> Client:
        query: dict[str, Any] = {}
        if username is not None:
            query["username"] = username
        if room is not None:
            query["roomID"] = room
        query.update({k: v for k, v in params.items() if k != "headers"})
        ws = await websockets.connect(
            f"{ws_url}?{urlencode(query)}" if query else ws_url,
            additional_headers=params.get("headers"),
            open_timeout=RECV_TIMEOUT,
            max_size=None,
        )
        return cls(ws)

    async def join(self) -> dict[str, Any]:
        """Read the welcome frame."""
        frame = await self.recv()
        assert frame["topic"] == "welcome", frame
        return frame

    async def send(self, frame: Any) -> None:
        await self.ws.send(
            frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        )

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return orjson.loads(raw)  # type: ignore[no-any-return]

    async def recv_topic(self, topic: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Read frames until one of `topic` (others are skipped), bounded by `timeout`."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["topic"] == topic:
                    return frame

    async def closed(
        self, timeout: float = RECV_TIMEOUT
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; return the close code and the frames seen."""
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frames.append(orjson.loads(await self.ws.recv()))
        return self.ws.close_code, frames

    async def barrier(self) -> None:
        """Assert that nothing is queued for this client: a ping's pong must come next.

        Frames the server queued for this connection before it read the ping would arrive
        before the pong, so this proves "nothing was delivered" without a timed wait.
        """
        token = os.urandom(6).hex()
        await self.send({"topic": "ping", "payload": token})
        frame = await self.recv()
        assert frame == {"topic": "pong", "payload": token}, f"unexpected frame {frame!r}"

    async def close(self) -> None:
        await self.ws.close()
