"""roomcast under an application's own `uvicorn.run`, with roomcast's protocol classes and a
2-second handshake timeout, as docs/security.md tells such an application to run it.

    python tests/integration/own_uvicorn.py
"""

from __future__ import annotations

import uvicorn

from roomcast import Roomcast
from roomcast.transports.uvicorn import handshake_protocol, websocket_protocol

if __name__ == "__main__":
    uvicorn.run(
        Roomcast(),
        host="127.0.0.1",
        port=0,
        http=handshake_protocol(2.0),
        ws=websocket_protocol(2.0),
        ws_per_message_deflate=False,
        log_level="info",
    )
