"""`roomcast serve` under a uvicorn that lacks one internal the fast path relies on.

Run as `python -m tests.contract.uvicorn_without_internals serve ...`: it removes a method of
uvicorn's WebSocket protocol (one uvicorn's own class only calls on a failure path), then runs
roomcast's CLI, which must notice, warn once and serve on the plain ASGI path.
"""

from __future__ import annotations

import sys

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

del WebSocketsSansIOProtocol.send_500_response

from roomcast.cli import main  # noqa: E402  (after the removal, as an upgrade would be)

if __name__ == "__main__":
    sys.exit(main())
