"""`roomcast serve` that tells what its connections left to the garbage collector.

Run as `python -m tests.integration.gc_probe serve ...`: every object the collector finds
unreachable is kept (`gc.DEBUG_SAVEALL`) instead of freed, and on SIGUSR1 the process runs a
full collection and writes one line to stderr: `gc.probe garbage=<n> threshold=<t>
frozen=<f> types=<the commonest kinds>`, then forgets what it counted.
"""

from __future__ import annotations

import collections
import gc
import signal
import sys
from types import FrameType

from roomcast.cli import main


def _report(signum: int, frame: FrameType | None) -> None:
    gc.collect()
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    sys.stderr.write(
        f"gc.probe garbage={len(gc.garbage)} threshold={','.join(map(str, gc.get_threshold()))}"
        f" frozen={gc.get_freeze_count()} types={dict(kinds.most_common(8))}\n"
    )
    sys.stderr.flush()
    gc.garbage.clear()


gc.set_debug(gc.DEBUG_SAVEALL)
signal.signal(signal.SIGUSR1, _report)

if __name__ == "__main__":
    sys.exit(main())
