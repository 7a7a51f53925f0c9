"""A port already in use ends `roomcast serve` like any other bad configuration."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.harness import ROOT


def test_busy_port_is_a_one_line_error_with_status_2() -> None:
    """`roomcast serve --port P` with P taken: `roomcast serve: error: ...` on stderr, no
    traceback, exit status 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "roomcast", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"roomcast serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert "Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
