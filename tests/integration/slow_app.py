"""A roomcast server with one slow handler, to test what a shutdown does to work in flight.

Run as `python -m tests.integration.slow_app serve [flags of roomcast serve]`.
"""

from __future__ import annotations

import asyncio
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

    serve(settings, rc)


if __name__ == "__main__":
    main()
