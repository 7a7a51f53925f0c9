"""The TypeScript client's own suite (clients/js/test, Node's test runner) as part of this one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.harness import ROOT, ServerProcess

JS = os.path.join(ROOT, "clients", "js")


def test_js_client_suite(server: ServerProcess) -> None:
    """Every test of the TypeScript client passes against a real server."""
    node = shutil.which("node")
    assert node is not None, "Node 20 is required: run scripts/setup.sh --test"
    assert os.path.isfile(os.path.join(JS, "dist", "index.js")), (
        "the TypeScript client is not built: run scripts/setup.sh --test"
    )
    env = {**os.environ, "ROOMCAST_URL": server.url, "ROOMCAST_PYTHON": sys.executable}
    result = subprocess.run(
        [
            node,
            "--test",
            "--test-timeout=30000",
            "--test-reporter=tap",
            *sorted(
                f"test/{name}"
                for name in os.listdir(os.path.join(JS, "test"))
                if name.endswith(".test.mjs")
            ),
        ],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith(("not ok", "# "))]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in summary, "\n".join(summary)
    assert not any(line.startswith("# pass 0") for line in summary), "\n".join(summary)
