"""The documentation site (mkdocs.yml): the API reference is built from the docstrings, and a
broken reference fails the strict build that `make test` runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build(tree: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the site in `tree`."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tree / "mkdocs.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tree,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the site's sources (mkdocs.yml, docs/, src/)."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    return tmp_path


def test_reference_documents_the_public_names(tree: Path) -> None:
    """The strict build passes and the reference pages hold the public names' docstrings."""
    result = build(tree)
    assert result.returncode == 0, result.stderr
    page = (tree / "site" / "reference" / "roomcast" / "index.html").read_text()
    for anchor in ("roomcast.Roomcast.on", "roomcast.Context.reply", "roomcast.Settings.broker"):
        assert f'id="{anchor}"' in page
    testing = (tree / "site" / "reference" / "testing" / "index.html").read_text()
    assert 'id="roomcast.testing.make_token"' in testing


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("See [it][roomcast.NoSuchName].", "Could not find cross-reference target"),
        ("::: roomcast.NoSuchName", "Could not collect 'roomcast.NoSuchName'"),
    ],
)
def test_broken_reference_fails_the_build(tree: Path, line: str, message: str) -> None:
    """A cross-reference or an API entry naming nothing fails the strict build."""
    with (tree / "docs" / "reference" / "testing.md").open("a") as page:
        page.write(f"\n{line}\n")
    result = build(tree)
    assert result.returncode != 0
    assert message in result.stderr
