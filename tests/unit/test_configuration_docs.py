"""docs/configuration.md lists every option of roomcast.settings.OPTIONS."""

from __future__ import annotations

import pathlib

import pytest

from roomcast.settings import OPTIONS, Option

DOC = (pathlib.Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("option", OPTIONS, ids=[o.flag for o in OPTIONS])
def test_every_option_is_documented(option: Option) -> None:
    """Each flag appears with its environment variable in the configuration table."""
    flag, env = f"`--{option.flag} ", f"`{option.env}`"
    rows = [line for line in DOC.splitlines() if line.startswith(f"| {flag}")]
    assert len(rows) == 1, f"--{option.flag} is not in docs/configuration.md"
    assert env in rows[0]
