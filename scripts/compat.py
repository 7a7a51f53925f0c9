"""Prove the dependency ranges at both ends: install roomcast into fresh virtualenvs beside the
oldest and the newest FastAPI supported, and run the embedding tests in each.

- oldest: FastAPI 0.125 and every runtime dependency at the lower bound of its range in
  pyproject.toml (Starlette 0.40, websockets 15, redis 8, ...);
- newest: the newest FastAPI and the newest release within every range.

Run by `make test` (and `make compat`). The virtualenvs live in .venv-compat/ and are rebuilt
when pyproject.toml changes; roomcast itself is reinstalled from this tree on every run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venv-compat"

OLDEST_FASTAPI = "0.125.0"
"""The oldest FastAPI supported: the README names it too."""

TOOLS = (
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "pytest-xdist",
    "hypothesis",
    "httpx",
    "django",
)
"""The dev tools the embedding tests need, installed at the dev extra's pins."""

TESTS = (
    # roomcast mounted in FastAPI apps under uvicorn: the ASGI mount, handlers, commands, auth
    "tests/integration/test_example.py",
    "tests/integration/test_auth_custom.py",
    # ... and in a Django ASGI application, authenticated from Django's session
    "tests/integration/test_django_example.py",
    # `roomcast serve`: the fast path (uvicorn's protocol with direct writes) and the codec
    "tests/integration/test_smoke.py",
    "tests/integration/test_protocol_frames.py",
    # roomcast.testing drives the ASGI interface in-process; the client-only install
    "tests/unit/test_testing.py",
    "tests/unit/test_examples.py",
    "tests/unit/test_imports.py",
)
"""The embedding tests: the ASGI mount and the fast path."""

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def _name(requirement: str) -> str:
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"compat: cannot read the requirement {requirement!r}")
    return match.group(1).lower()


def lower_bounds(dependencies: list[str]) -> list[str]:
    """Each `name>=X,...` requirement as `name==X` (its marker kept)."""
    pins = []
    for requirement in dependencies:
        match = _REQUIREMENT.match(requirement)
        bound = re.search(r">=\s*([^,\s]+)", match.group(3)) if match else None
        if match is None or bound is None:
            raise SystemExit(f"compat: {requirement!r} has no lower bound (>=)")
        name, extras, _, marker = match.groups()
        pins.append(f"{name}{extras or ''}=={bound.group(1)}{marker or ''}")
    return pins


def run(*args: str | Path) -> None:
    """Run a command from the repository root; stop on failure."""
    subprocess.run([str(arg) for arg in args], cwd=ROOT, check=True)


def prepare(leg: str, requirements: list[str]) -> Path:
    """The leg's virtualenv with `requirements`, built anew when pyproject.toml changed."""
    venv = VENVS / leg
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.json"
    wanted = json.dumps(requirements)
    if not python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        run(sys.executable, "-m", "venv", venv)
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(python, "-m", "pip", "install", "--quiet", *requirements)
        stamp.write_text(wanted)
    # roomcast from this tree, as a wheel would install it; its dependencies are already there.
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", ".")
    run(python, "-m", "pip", "check")
    return python


def main() -> int:
    """Run the embedding tests in both legs; the exit status is pytest's worst."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime: list[str] = project["dependencies"]
    tools = [r for r in project["optional-dependencies"]["dev"] if _name(r) in TOOLS]
    legs = {
        "oldest": [*lower_bounds(runtime), f"fastapi=={OLDEST_FASTAPI}", *tools],
        "newest": [*runtime, "fastapi", *tools],
    }
    status = 0
    for leg, requirements in legs.items():
        started = time.monotonic()
        python = prepare(leg, requirements)
        versions = subprocess.run(
            [python, "-m", "pip", "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        shown = {"fastapi", "starlette", "uvicorn", "websockets", "redis", "django", "pyjwt"}
        print(
            f"compat {leg}: " + " ".join(v for v in versions if v.split("==")[0].lower() in shown),
            flush=True,
        )
        result = subprocess.run(
            [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", *TESTS],
            cwd=ROOT,
            check=False,
        )
        print(
            f"compat {leg}: pytest exit {result.returncode} in {time.monotonic() - started:.0f} s"
        )
        status = max(status, result.returncode)
    return status


if __name__ == "__main__":
    sys.exit(main())
