"""Every use of an asyncio internal, in one place: running a coroutine's first step on behalf of
a task that is waiting, so that a frame is handled in the protocol's callback, with no task
switch (the direct receive path of `roomcast serve`).

Python 3.12's eager tasks do this for a new task; Python 3.11 has no public way. A coroutine's
first step runs as if the waiting task were current (`asyncio.current_task()`, and so
`asyncio.timeout`, see that task), using asyncio's private `_enter_task` and `_leave_task`;
when they are missing, :data:`AVAILABLE` is False and the transport keeps handing every frame
to the application through its queue (correct, slower). The first step runs in a context
the caller copied inside that task (a task's own context is not reachable before Python 3.12),
and so does the rest of the coroutine, so that a context variable it set before its first
wait is still set after it.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["AVAILABLE", "Continuation", "first_step"]

_enter = getattr(asyncio.tasks, "_enter_task", None)
_leave = getattr(asyncio.tasks, "_leave_task", None)
_current = asyncio.current_task
_NOT_STARTED = object()

AVAILABLE = callable(_enter) and callable(_leave)
"""Whether this Python's asyncio has what :func:`first_step` needs."""


def _call(function: Any, *args: Any) -> Any:
    return function(*args)


class Continuation:
    """The rest of a coroutine whose first step ran in :func:`first_step`; awaiting it (in the
    task the first step ran for) runs the coroutine to its end, or raises what the first step
    raised."""

    __slots__ = ("_context", "_coro", "_error", "_waiting")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any] | None,
        waiting: Any = None,
        error: BaseException | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        self._coro = coro
        self._waiting = waiting
        self._error = error
        self._context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        coro, value = self._coro, self._waiting
        self._coro = self._waiting = None
        assert coro is not None
        # Every further step runs in the first step's context, as a task's steps all run in
        # the task's: what the coroutine set in a context variable stays set.
        run = self._context.run if self._context is not None else _call
        if value is _NOT_STARTED:
            try:
                value = run(coro.send, None)
            except StopIteration as stop:
                return stop.value
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown into the coroutine
                try:
                    value = run(coro.throw, exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = run(coro.send, sent)
                except StopIteration as stop:
                    return stop.value

    def close(self) -> None:
        """Close the coroutine (its rest will not run)."""
        if self._coro is not None:
            self._coro.close()
            self._coro = None


def first_step(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any],
    context: contextvars.Context,
    coro: Coroutine[Any, Any, Any],
) -> Continuation | None:
    """Run `coro` in `context` until it first waits, as `task` (which must be waiting, not
    running).

    Returns:
        None when `coro` finished in that step; otherwise its :class:`Continuation`, which
        `task` must await next (it also carries an exception the step raised).

    Only called when :data:`AVAILABLE`. Called while a task runs (not from a callback), it
    runs nothing and returns the whole coroutine as the continuation.
    """
    assert _enter is not None
    assert _leave is not None
    if _current(loop) is not None:
        return Continuation(coro, _NOT_STARTED, context=context)
    _enter(loop, task)
    try:
        waiting = context.run(coro.send, None)
    except StopIteration:
        return None
    except BaseException as exc:
        return Continuation(None, error=exc)
    finally:
        _leave(loop, task)
    return Continuation(coro, waiting, context=context)
