"""HTTP API keys and the startup log's security lines."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import ServerProcess


def test_several_api_keys(start_server: Callable[..., ServerProcess]) -> None:
    """Each configured key is accepted; a missing or wrong key gets 401 unauthenticated."""
    server = start_server("--api-key", "first-key,second-key")
    with server.http() as http:
        for key in ("first-key", "second-key"):
            response = http.get("/api/v1/rooms", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer first-key2"},
            {"Authorization": "first-key"},
            {"Authorization": "Basic first-key"},
        ):
            response = http.get("/api/v1/rooms", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "unauthenticated"
        # Liveness stays open for probes.
        assert http.get("/healthz").status_code == 200


def test_every_rooms_path_needs_the_key_even_one_of_no_route(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Without the key every `/api/v1/rooms...` call is 401, a wrong method or an unknown
    path too; with it, those are 405 (with `Allow`) and 404, in JSON."""
    server = start_server("--api-key", "the-key")
    calls = [
        ("PUT", "/api/v1/rooms", 405),
        ("POST", "/api/v1/rooms/r1/members", 405),
        ("GET", "/api/v1/rooms/r1/messages", 405),
        ("GET", "/api/v1/rooms/r1/zzz", 404),
        ("GET", "/api/v1/rooms/", 404),
        ("DELETE", "/api/v1/roomsx", 404),
    ]
    with server.http() as http:
        for method, path, status in calls:
            response = http.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
            response = http.request(method, path, headers={"Authorization": "Bearer the-key"})
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"]["code"] in ("bad_request", "not_found")
        allowed = http.put("/api/v1/rooms", headers={"Authorization": "Bearer the-key"})
        assert allowed.headers["allow"] == "GET, HEAD"


def test_startup_log_says_who_may_connect(start_server: Callable[..., ServerProcess]) -> None:
    """Without a key the log says the API answers loopback only; beyond loopback without
    authentication it warns; with a key and JWT it does neither."""
    open_server = start_server("--host", "0.0.0.0")
    assert open_server.log is not None
    open_server.log.wait_for(r"warning roomcast\.insecure host=0\.0\.0\.0", 5)
    open_server.log.wait_for(r"api\.loopback_only", 5)
    closed = start_server(
        "--host",
        "0.0.0.0",
        "--api-key",
        "k",
        "--jwt-secret",
        "a-secret-long-enough-for-hs256-0123456789",
    )
    assert closed.log is not None
    closed.log.wait_for(r"api\.keys keys=1", 5)
    text = closed.log.text()
    assert "roomcast.insecure" not in text
    assert "api.loopback_only" not in text
