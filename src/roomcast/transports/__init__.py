"""Transports: how sockets reach the core (ASGI for any ASGI server)."""
