"""The standalone server: uvicorn running one node's ASGI app, one or several processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
from typing import Any

import uvicorn

from .api import log_api_policy
from .app import Roomcast
from .auth import AnonymousResolver
from .limits import ConnectionLimits
from .log import configure_logging, log_event, redact_url
from .settings import OPTIONS, Option, Settings, is_loopback_host

__all__ = ["COLLECTOR_THRESHOLDS", "serve"]


COLLECTOR_THRESHOLDS = (50_000, 10, 100)
"""The garbage collector's thresholds in `roomcast serve` (CPython's are 700, 10, 10)."""


def _tune_collector() -> None:
    """Fewer, cheaper garbage collections for a process that holds many connections.

    A full collection walks every tracked object of every connection (about 80 each), and
    CPython's defaults run one each time 70,000 more objects have been kept: joining 10,000
    members spent a fifth of its time there (docs/benchmarks.md). A young generation larger
    than what the frames in flight hold at once (tasks, futures: tens of thousands on a busy
    `redis://` node) is rarely collected at all. Connections leave no reference cycle behind
    (the transport breaks its own), so young collections are enough for what they leave; the
    objects of the startup (modules, settings, the app) are frozen out of every collection.
    An application that embeds roomcast keeps its own settings: only the standalone server
    does this.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


class _Server(uvicorn.Server):
    """uvicorn's server, with roomcast's ready line and shutdown order."""

    def __init__(self, config: uvicorn.Config, roomcast: Roomcast) -> None:
        super().__init__(config)
        self.roomcast = roomcast
        self._ready_later: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        # SIGTERM/SIGINT ask for a graceful stop: once it is done the process exits with
        # status 0, instead of uvicorn raising the signal again (death by SIGTERM, or a
        # KeyboardInterrupt traceback).
        super().handle_exit(sig, frame)
        if _fast is not None:
            _fast.forget_captured_signals(self)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.roomcast.start_error is not None:
            self.should_exit = True
        if self.should_exit or not self.started:
            return
        _tune_collector()
        port = self.config.port
        for server in self.servers:
            for sock in server.sockets:
                port = sock.getsockname()[1]
        settings = self.roomcast.settings
        _log_security(self.roomcast)
        url = f"http://{settings.host}:{port}"
        node = self.roomcast.node
        if node.broker.available:
            _log_ready(self.roomcast, url)
            return
        # Listening, but not ready: say why, and say `ready` once the broker is there.
        log_event(
            "roomcast.listening",
            level=30,
            url=url,
            node_id=settings.node_id,
            broker=redact_url(settings.broker),
            ready=False,
            reason="the broker is unreachable: /readyz answers 503 and joins are refused with "
            "4503 until it is; the ready line follows once it is connected",
        )

        async def ready_later() -> None:
            await node.broker_available()
            _log_ready(self.roomcast, url)

        self._ready_later = asyncio.get_running_loop().create_task(ready_later())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._ready_later is not None:
            self._ready_later.cancel()
        # Tell clients first (1012) and leave presence, then let uvicorn close what is left.
        # The whole sequence fits in --shutdown-timeout: the node's part first, then uvicorn's
        # wait for the last sockets with what is left of the budget.
        log_event("roomcast.stopping", node_id=self.roomcast.settings.node_id)
        loop = asyncio.get_running_loop()
        budget = self.roomcast.settings.shutdown_timeout
        deadline = loop.time() + budget
        for server in self.servers:
            server.close()
        try:
            await asyncio.wait_for(self.roomcast.shutdown(), budget * 0.8)
        except TimeoutError:
            log_event("roomcast.shutdown_timeout", level=30)
        self.config.timeout_graceful_shutdown = max(0, int(deadline - loop.time()))
        await super().shutdown(sockets)


def _log_ready(roomcast: Roomcast, url: str) -> None:
    """The ready line: listening, and the broker is reachable (/readyz answers 200). A worker
    of `--workers N` logs `roomcast.worker_ready` and tells its supervisor, which logs the one
    ready line once every worker is."""
    settings = roomcast.settings
    supervisor = os.environ.get(_READY_FD_ENV)
    log_event(
        "roomcast.ready" if supervisor is None else "roomcast.worker_ready",
        url=url,
        node_id=settings.node_id,
        broker=redact_url(settings.broker),
        pid=os.getpid(),
        auth="jwt" if settings.auth_enabled else "anonymous",
    )
    if supervisor is not None:
        del os.environ[_READY_FD_ENV]  # once
        with contextlib.suppress(OSError, ValueError):
            fd = int(supervisor)
            os.write(fd, b"\n")
            os.close(fd)


def _log_security(roomcast: Roomcast) -> None:
    """Say at startup what is open to whom (docs/security.md)."""
    settings = roomcast.settings
    if isinstance(roomcast.node.resolver, AnonymousResolver) and not is_loopback_host(
        settings.host
    ):
        log_event(
            "roomcast.insecure",
            level=30,
            host=settings.host,
            reason="listening beyond loopback without authentication: anyone can join any "
            "room under any username; set --jwt-secret, --jwt-public-key or --jwks-url",
        )
    log_api_policy(settings)


try:
    from .transports import uvicorn as _fast
except ImportError as exc:  # a uvicorn or websockets without the modules the fast path uses
    _fast = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _plain_ws() -> str:
    """uvicorn's own WebSocket protocol: its sans-I/O one where this uvicorn has it."""
    sansio = importlib.util.find_spec("uvicorn.protocols.websockets.websockets_sansio_impl")
    return "websockets-sansio" if sansio is not None else "auto"


def _protocols(settings: Settings, limits: ConnectionLimits | None) -> dict[str, Any]:
    """uvicorn's `ws` and `http` protocol classes: roomcast's fast path when the installed
    uvicorn has everything it relies on (transports/uvicorn.py), else uvicorn's own."""
    missing = [_IMPORT_ERROR] if _fast is None else _fast.missing_internals()
    if missing:
        log_event(
            "transport.fast_path_unavailable",
            level=30,
            missing=", ".join(missing),
            reason="this uvicorn lacks what the fast path relies on: running uvicorn's own "
            "protocols on the plain ASGI path (correct, slower, no handshake timeout)",
        )
        return {"ws": _plain_ws(), "http": "h11"}
    assert _fast is not None
    http = _fast.handshake_protocol(settings.handshake_timeout, limits)
    if not settings.fast_path:
        log_event("transport.plain_path", reason="--fast-path false")
        return {"ws": "websockets-sansio", "http": http}
    ws = _fast.websocket_protocol(settings.handshake_timeout, settings.presence_window)
    return {"ws": ws, "http": http}


def _config(
    settings: Settings, app: Any, limits: ConnectionLimits | None = None, **extra: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        ws_per_message_deflate=False,
        loop="uvloop" if _has_uvloop() else "asyncio",
        **_protocols(settings, limits),
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
        timeout_keep_alive=5,
        server_header=False,
        **extra,
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _listen(settings: Settings, reuse_port: bool) -> socket.socket:
    """The listening socket; a port in use (or any bind failure) ends `roomcast serve` with
    a one-line error and exit status 2, like every other bad configuration."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        sys.stderr.write(
            f"roomcast serve: error: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}\n"
        )
        raise SystemExit(2) from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, roomcast: Roomcast | None = None) -> None:
    """Run the standalone server until SIGTERM or SIGINT."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        _supervise(settings)
        return
    sock = _listen(settings, reuse_port=os.environ.get(_WORKER_ENV) == "1")
    rc = roomcast or Roomcast(settings, demo=True)
    server = _Server(_config(settings, rc, rc.node.limits), rc)
    server.run(sockets=[sock])
    if rc.start_error is not None:
        sys.stderr.write(f"roomcast serve: error: {rc.start_error.message}\n")
        raise SystemExit(2)


_WORKER_ENV = "ROOMCAST_WORKER_OF"
_READY_FD_ENV = "ROOMCAST_READY_FD"
"""A worker's end of the pipe on which it tells its supervisor that it is ready."""


def _parses_to_none(opt: Option) -> bool:
    try:
        return opt.parse("") is None
    except ValueError:
        return False


def _supervise(settings: Settings) -> None:
    """`--workers N`: N processes, each a whole node, sharing the port with SO_REUSEPORT."""
    probe = _listen(settings, reuse_port=True)
    port = probe.getsockname()[1]
    env = dict(os.environ)
    for opt in OPTIONS:
        value = getattr(settings, opt.name)
        if value is None and not _parses_to_none(opt):
            # An unset option (no JWT key, ...) must stay unset, not become "".
            env.pop(opt.env, None)
            continue
        env[opt.env] = (
            ",".join(value) if isinstance(value, tuple) else "" if value is None else str(value)
        )
    ready, told = os.pipe()
    env.update(
        {
            "ROOMCAST_WORKERS": "1",
            "ROOMCAST_PORT": str(port),
            _WORKER_ENV: "1",
            _READY_FD_ENV: str(told),
        }
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "roomcast", "serve"],
            env={**env, "ROOMCAST_NODE_ID": f"{settings.node_id}-{i}"},
            pass_fds=(told,),
        )
        for i in range(settings.workers)
    ]
    os.close(told)
    probe.close()
    log_event("roomcast.supervisor", workers=settings.workers, port=port, pid=os.getpid())

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if _all_ready(ready, children):
        log_event(
            "roomcast.ready",
            url=f"http://{settings.host}:{port}",
            workers=settings.workers,
            broker=redact_url(settings.broker),
            pid=os.getpid(),
            auth="jwt" if settings.auth_enabled else "anonymous",
        )
    os.close(ready)
    status = 0
    for child in children:
        status = max(status, abs(child.wait()))
    sys.exit(status)


def _all_ready(ready: int, children: list[subprocess.Popen[bytes]]) -> bool:
    """Wait until every worker said on `ready` that it is; False once one of them exited
    first (its own error is its log's, and the supervisor's status)."""
    count = 0
    while count < len(children):
        if any(child.poll() is not None for child in children):
            return False
        readable, _, _ = select.select([ready], [], [], 0.5)
        if readable:
            data = os.read(ready, 64)
            if not data:
                return False
            count += data.count(b"\n")
    return True
