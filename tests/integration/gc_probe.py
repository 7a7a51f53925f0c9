"""`roomcast serve` that tells what its connections left to the garbage collector.

Run as `python -m tests.integration.gc_probe serve ...`: every object the collector finds
unreachable is kept (`gc.DEBUG_SAVEALL`) instead of freed, and on SIGUSR1 the process runs a
full collection and writes one line to stderr: `gc.probe garbage=<n> protocols=<p>
threshold=<t> frozen=<f> types=<the commonest kinds>` (`protocols`: uvicorn protocol objects
alive, one per open socket), then forgets what it counted.
"""

from __future__ import annotations

import collections
import gc
import signal
import sys
from types import FrameType

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from roomcast.cli import main


def _report(signum: int, frame: FrameType | None) -> None:
    gc.collect()
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    gc.garbage.clear()
    kept = (H11Protocol, WebSocketsSansIOProtocol)
    protocols = sum(isinstance(o, kept) for o in gc.get_objects())
    sys.stderr.write(
        f"gc.probe garbage={sum(kinds.values())} protocols={protocols}"
        f" threshold={','.join(map(str, gc.get_threshold()))}"
        f" frozen={gc.get_freeze_count()} types={dict(kinds.most_common(8))}\n"
    )
    sys.stderr.flush()


gc.set_debug(gc.DEBUG_SAVEALL)
signal.signal(signal.SIGUSR1, _report)

if __name__ == "__main__":
    sys.exit(main())
