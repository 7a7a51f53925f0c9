"""The command bus (one handler per command type) and the event bus (subscribers as tasks)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from roomcast.commands import CommandBus, KickMember, PublishToRoom, SendToMember, SendWsMessage
from roomcast.events import Event, EventBus, MemberJoined, MemberLeft, MessagePublished
from roomcast.protocol import SERVER_SENDER


async def test_command_goes_to_its_handler_and_returns_its_result() -> None:
    """send() runs the handler of the command's type and returns what it returns."""
    bus = CommandBus()
    seen: list[object] = []

    async def publish(command: PublishToRoom) -> int:
        seen.append(command)
        return 41

    async def kick(command: KickMember) -> None:
        seen.append(command)

    bus.register(PublishToRoom, publish)
    bus.register(KickMember, kick)
    command = PublishToRoom("r1", "t", {"a": 1})
    assert await bus.send(command) == 41
    assert await bus.send(KickMember("r1", "bob")) is None
    assert seen == [command, KickMember("r1", "bob")]
    assert command.sender == SERVER_SENDER


async def test_command_without_handler_and_double_registration() -> None:
    """An unregistered command type is a LookupError; a second handler is a ValueError."""
    bus = CommandBus()
    with pytest.raises(LookupError):
        await bus.send(SendToMember("r1", "bob", "t", 1))

    async def handler(command: SendToMember) -> int:
        return 1

    bus.register(SendToMember, handler)
    with pytest.raises(ValueError, match="already"):
        bus.register(SendWsMessage, handler)


async def test_command_handler_errors_propagate() -> None:
    """An exception in the command's handler reaches the sender."""
    bus = CommandBus()

    async def failing(command: KickMember) -> None:
        raise RuntimeError("boom")

    bus.register(KickMember, failing)
    with pytest.raises(RuntimeError, match="boom"):
        await bus.send(KickMember("r", "u"))


async def test_event_reaches_subscribers_of_its_type_and_bases() -> None:
    """publish() schedules every subscriber of the event's type and of Event; others not."""
    bus = EventBus()
    got: list[tuple[str, Event]] = []
    done = asyncio.Event()

    async def on_joined(event: MemberJoined) -> None:
        got.append(("joined", event))

    async def on_any(event: Event) -> None:
        got.append(("any", event))
        done.set()

    async def on_left(event: MemberLeft) -> None:
        got.append(("left", event))

    bus.subscribe(MemberJoined, on_joined)
    bus.subscribe(Event, on_any)
    bus.subscribe(MemberLeft, on_left)
    event = MemberJoined("r1", "alice", "c1", "n1")
    bus.publish(event)
    assert got == []  # subscribers run as tasks, not inside publish()
    await bus.drain(5)
    assert sorted(got, key=lambda item: item[0]) == [("any", event), ("joined", event)]
    assert done.is_set()


async def test_event_subscriber_error_is_logged_and_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that raises is logged; the other subscribers still run."""
    bus = EventBus()
    ran: list[str] = []

    async def failing(event: MemberLeft) -> None:
        raise RuntimeError("subscriber failed")

    async def fine(event: MemberLeft) -> None:
        ran.append(event.username)

    bus.subscribe(MemberLeft, failing)
    bus.subscribe(MemberLeft, fine)
    with caplog.at_level(logging.ERROR, logger="roomcast"):
        bus.publish(MemberLeft("r1", "bob", "c", "n", "closed"))
        await bus.drain(5)
    assert ran == ["bob"]
    assert any(r.getMessage() == "event.subscriber_error" and r.exc_info for r in caplog.records)


async def test_unsubscribe_and_wants() -> None:
    """wants() says whether anything listens; the returned function unsubscribes."""
    bus = EventBus()
    assert not bus.wants(MessagePublished)
    calls: list[Event] = []

    async def handler(event: MessagePublished) -> None:
        calls.append(event)

    unsubscribe = bus.subscribe(MessagePublished, handler)
    assert bus.wants(MessagePublished)
    unsubscribe()
    unsubscribe()  # a second call is harmless
    assert not bus.wants(MessagePublished)
    bus.publish(MessagePublished("r", "t", 1, "alice", 1))
    await bus.drain(5)
    assert calls == []

    @bus.on(Event)
    async def any_event(event: Event) -> None:
        calls.append(event)

    assert bus.wants(MessagePublished)
