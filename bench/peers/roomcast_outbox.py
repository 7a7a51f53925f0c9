"""`roomcast serve` with the direct-write fan-out turned off: every frame goes through the
per-connection queue and writer task and the ASGI `send` callable (how any ASGI server runs
roomcast). The driver compares it with the default to show what the direct path is worth.

    python bench/peers/roomcast_outbox.py serve [roomcast serve flags]
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from roomcast.cli import main
from roomcast.transports.uvicorn import WebSocketProtocol

# Without the scope extension, AsgiConnection falls back to its Outbox for every frame.
WebSocketProtocol.handle_connect = WebSocketsSansIOProtocol.handle_connect  # type: ignore

if __name__ == "__main__":
    raise SystemExit(main())
