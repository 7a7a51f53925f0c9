"""The HTTP API answers JSON errors even for failures nobody planned for."""

from __future__ import annotations

import httpx

from roomcast import Roomcast


async def test_unexpected_exception_is_a_json_500() -> None:
    """An endpoint that raises an unexpected exception answers 500 with a JSON error body."""
    rc = Roomcast()

    async def broken() -> dict[str, list[str]]:
        raise RuntimeError("database on fire")

    rc.node.broker.rooms = broken  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=rc, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/api/v1/rooms")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "on fire" not in response.text
