"""pyproject.toml declares what a library should: runtime dependencies as ranges, dev tools
pinned; scripts/compat.py reads the lower bounds from it."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def compat() -> ModuleType:
    """scripts/compat.py as a module."""
    spec = importlib.util.spec_from_file_location("compat", ROOT / "scripts" / "compat.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_dependencies_are_ranges() -> None:
    """Every runtime dependency has a lower bound and an upper bound, and none is pinned."""
    for requirement in PROJECT["dependencies"]:
        spec = requirement.split(";")[0]
        assert ">=" in spec, requirement
        assert re.search(r"<\s*\d", spec), requirement
        assert "==" not in spec, requirement


def test_dev_tools_are_pinned() -> None:
    """Every dev tool is pinned, so that every machine runs the same checks."""
    for requirement in PROJECT["optional-dependencies"]["dev"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[0-9][0-9a-z.]*", requirement), requirement


def test_lower_bounds_pin_each_range_at_its_floor() -> None:
    """The oldest leg of the compat run installs each dependency at its lower bound."""
    pins = compat().lower_bounds(
        ["starlette>=0.40,<2", "redis[hiredis]>=8.0,<9", "uvloop>=0.23,<1; sys_platform != 'x'"]
    )
    assert pins == ["starlette==0.40", "redis[hiredis]==8.0", "uvloop==0.23; sys_platform != 'x'"]


def test_readme_names_the_oldest_fastapi() -> None:
    """The README states the oldest FastAPI that the compat run installs."""
    oldest = ".".join(compat().OLDEST_FASTAPI.split(".")[:2])
    assert f"FastAPI {oldest} to the newest" in (ROOT / "README.md").read_text()
