"""The examples' handlers, resolvers and subscribers tested in-process with roomcast.testing,
as an application tests its own (tests/integration/test_example.py runs them under uvicorn)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from roomcast import CloseCode, PublishToRoom
from roomcast.testing import ClientClosed, TestServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    """A fresh copy of examples/NAME.py (its own Roomcast instance)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pydantic look their module up
    spec.loader.exec_module(module)
    return module


async def test_fastapi_app_handlers() -> None:
    """fastapi_app: the greeting subscriber, the shout handler and the three order handlers."""
    example = load("fastapi_app")
    async with TestServer(example.rc) as server:
        alice = await server.connect("alice", "lobby")
        greeting = await alice.receive_topic("greeting")
        assert (greeting["payload"], greeting["to"]) == ({"text": "hi alice"}, "alice")
        await alice.send("shout", {"text": "hello"}, id=1)
        assert (await alice.receive_topic("shout"))["payload"] == {"text": "HELLO"}
        await alice.send("order", {"item": "tea", "card": "0000"}, id=2)
        assert (await alice.receive_topic("order.received"))["payload"] == {"item": "tea"}
        assert (await alice.receive_topic("order.placed"))["payload"]["by"] == "alice"
        error = await alice.receive_topic("error")
        assert (error["payload"]["code"], error["payload"]["id"]) == ("handler_error", 2)
        offset = await example.rc.send(PublishToRoom("lobby", "announcement", {"text": "x"}))
        assert (await alice.receive_topic("announcement"))["offset"] == offset


async def test_fastapi_custom_auth_resolver() -> None:
    """fastapi_custom_auth: the session cookie admits, an unknown one gets 4401, a room the
    user may not enter 4403, and a topic outside `publish` a forbidden error."""
    example = load("fastapi_custom_auth")
    example.SESSIONS["s-bob"] = "bob"
    cookie = {"cookie": "sid=s-bob"}
    async with TestServer(example.rc) as server:
        bob = await server.connect(None, "lobby", headers=cookie)
        assert bob.welcome["payload"]["username"] == "bob"
        await bob.send("shout", {"text": "x"}, id=1)
        assert (await bob.receive_topic("error"))["payload"]["code"] == "forbidden"
        for room, headers, code in (
            ("lobby", {"cookie": "sid=unknown"}, CloseCode.UNAUTHENTICATED),
            ("team-a", cookie, CloseCode.FORBIDDEN),
        ):
            with pytest.raises(ClientClosed) as refused:
                await server.connect(None, room, headers=headers)
            assert refused.value.code == code
