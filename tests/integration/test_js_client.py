"""The TypeScript client: its own suite (clients/js/test, Node's test runner) as part of this
one, the demo's copy of its bundle, and the package built, tested and packed on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.harness import ROOT, ServerProcess

JS = os.path.join(ROOT, "clients", "js")


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "Node 20 is required: run scripts/setup.sh --test"
    return node


def _run_suite(cwd: str, files: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        # Bounds for a busy machine (a file's tests, tsc): a file passes in seconds when quiet.
        [_node(), "--test", "--test-timeout=240000", "--test-reporter=tap", *files],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith(("not ok", "# "))]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in summary, "\n".join(summary)
    assert not any(line.startswith("# pass 0") for line in summary), "\n".join(summary)


def _tests(folder: str) -> list[str]:
    return sorted(
        f"{folder}/{name}"
        for name in os.listdir(os.path.join(JS, folder))
        if name.endswith(".test.mjs")
    )


def test_js_client_suite(server: ServerProcess) -> None:
    """Every test of the TypeScript client passes against a real server, with the tests in
    test/repo/ that check the repository's docs against the package's examples."""
    assert os.path.isfile(os.path.join(JS, "dist", "index.js")), (
        "the TypeScript client is not built: run scripts/setup.sh --test"
    )
    env = {**os.environ, "ROOMCAST_URL": server.url, "ROOMCAST_PYTHON": sys.executable}
    _run_suite(JS, _tests("test") + _tests("test/repo"), env)


def test_the_demo_serves_the_bundle_the_build_made() -> None:
    """src/roomcast/static/roomcast.min.js is the package's dist/roomcast.min.js (copied by
    scripts/setup.sh --test)."""
    built = Path(JS, "dist", "roomcast.min.js").read_bytes()
    served = Path(ROOT, "src", "roomcast", "static", "roomcast.min.js").read_bytes()
    assert served == built, "the demo's bundle is stale: run scripts/setup.sh --test"


def test_the_package_builds_tests_and_packs_outside_the_repository(tmp_path: Path) -> None:
    """A copy of clients/js alone: `npm ci`, `npm run build`, tests started from the copy (its
    own server processes), and `npm pack` with the built files; the repository is untouched."""
    copy = tmp_path / "roomcast-client"
    shutil.copytree(JS, copy, ignore=shutil.ignore_patterns("node_modules", "dist", "*.tgz"))
    served = Path(ROOT, "src", "roomcast", "static", "roomcast.min.js")
    before = served.stat().st_mtime_ns
    env = {**os.environ, "ROOMCAST_PYTHON": sys.executable}
    env.pop("ROOMCAST_URL", None)
    npm = shutil.which("npm")
    assert npm is not None
    for args in (
        # the packages setup.sh fetched are in npm's cache
        ["ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
        ["run", "build"],
    ):
        done = subprocess.run(
            [npm, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"npm {args[0]}:\n{done.stdout}\n{done.stderr}"
    assert served.stat().st_mtime_ns == before
    _run_suite(
        str(copy), ["test/connect.test.mjs", "test/size.test.mjs", "test/types.test.mjs"], env
    )
    packed = subprocess.run(
        [npm, "pack", "--json", "--loglevel=error"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert packed.returncode == 0, packed.stderr
    name = json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(copy / name) as tar:
        files = set(tar.getnames())
    for wanted in ("dist/index.js", "dist/index.d.ts", "dist/roomcast.min.js", "README.md"):
        assert f"package/{wanted}" in files, sorted(files)
    assert not any("/test/" in f or "/src/" in f for f in files), sorted(files)
