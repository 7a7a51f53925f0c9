"""The line editor of `roomcast connect` in a terminal: prompt_toolkit, when it is installed
(`pip install 'roomcast[terminal]'`). It keeps the line being typed below the messages that
arrive meanwhile, redrawing the prompt after each; without it the terminal reads plain lines."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["LineReader", "line_editor", "usable"]

LineReader = Callable[[], Awaitable[str | None]]
"""Returns the next line typed, or None at the end of input."""


def usable() -> bool:
    """Whether standard input and output are a terminal and prompt_toolkit is installed."""
    return (
        sys.stdin.isatty()
        and sys.stdout.isatty()
        and importlib.util.find_spec("prompt_toolkit") is not None
    )


@contextlib.asynccontextmanager
async def line_editor(prompt: str) -> AsyncIterator[LineReader]:
    """Inside, `sys.stdout` and `sys.stderr` print above the prompt; yields the line reader."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    with patch_stdout(raw=True):
        session: PromptSession[str] = PromptSession()

        async def read() -> str | None:
            try:
                return await session.prompt_async(prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: leave
                return None

        yield read
