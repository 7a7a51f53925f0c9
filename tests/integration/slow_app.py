"""A roomcast server with one slow handler, to test what a shutdown does to work in flight.

Run as `python -m tests.integration.slow_app serve [flags of roomcast serve]`.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys

from roomcast import Roomcast
from roomcast.cli import build_parser
from roomcast.context import Context
from roomcast.log import log_event
from roomcast.server import serve
from roomcast.settings import OPTIONS, Settings


def main() -> None:
    args = build_parser().parse_args(sys.argv[1:])
    settings = Settings.from_sources({opt.name: getattr(args, opt.name) for opt in OPTIONS})
    rc = Roomcast(settings)

    @rc.on("slow")
    async def slow(ctx: Context) -> None:
        log_event("slow.started", username=ctx.username)
        await asyncio.sleep(float(ctx.payload))
        offset = await ctx.broadcast("slow.done", ctx.payload)
        log_event("slow.done", username=ctx.username, offset=offset)

    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")

    @rc.on("context")
    async def context(ctx: Context) -> None:
        # A context variable set before the handler's first wait is still set after it, as in
        # any coroutine (the direct receive path runs the first step in a callback).
        seen.set(str(ctx.payload))
        await asyncio.sleep(0.01)
        await ctx.broadcast("context.seen", seen.get())

    serve(settings, rc)


if __name__ == "__main__":
    main()
