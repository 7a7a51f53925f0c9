"""The Redis broker's waits for a publish's own copy (`Deliveries`): called once each, when
the offset arrives, when the room is forgotten or the subscription lost, or when time is up."""

from __future__ import annotations

import asyncio

from roomcast.brokers.redis.publishing import Deliveries


async def test_a_waiter_is_called_when_its_offset_or_a_later_one_arrives() -> None:
    deliveries = Deliveries()
    called: list[str] = []
    deliveries.when_delivered("r", 2, 5.0, lambda: called.append("two"))
    deliveries.when_delivered("r", 3, 5.0, lambda: called.append("three"))
    deliveries.when_delivered("q", 1, 5.0, lambda: called.append("q"))
    deliveries.delivered("r", 1)
    assert called == []
    deliveries.delivered("r", 2)
    assert called == ["two"]
    deliveries.delivered("r", 5)
    assert called == ["two", "three"]
    deliveries.when_delivered("r", 4, 5.0, lambda: called.append("four"))  # delivered already
    assert called == ["two", "three", "four"]
    deliveries.reset()
    assert called == ["two", "three", "four", "q"]
    deliveries.delivered("q", 1)  # nobody waits any more: nothing is called twice
    assert called == ["two", "three", "four", "q"]


async def test_forgetting_a_room_releases_its_waiters_only() -> None:
    deliveries = Deliveries()
    called: list[str] = []
    deliveries.when_delivered("r", 1, 5.0, lambda: called.append("r"))
    deliveries.when_delivered("q", 1, 5.0, lambda: called.append("q"))
    deliveries.forget("r")
    assert called == ["r"]
    deliveries.delivered("q", 1)
    assert called == ["r", "q"]


async def test_one_timer_ends_the_waits_whose_time_is_up() -> None:
    deliveries = Deliveries()
    done = asyncio.get_running_loop().create_future()
    called: list[str] = []

    def short() -> None:
        called.append("short")
        done.set_result(None)

    deliveries.when_delivered("r", 1, 0.05, short)
    deliveries.when_delivered("r", 2, 60.0, lambda: called.append("long"))
    await asyncio.wait_for(done, 5)
    assert called == ["short"]
    deliveries.delivered("r", 2)
    assert called == ["short", "long"]


async def test_a_waiter_for_a_later_offset_waits_whatever_was_asked_after_it() -> None:
    """Waiters of one room need not come in offset order (a duplicate's older offset after
    the subscription was lost): a delivery calls exactly those at or below it."""
    deliveries = Deliveries()
    called: list[int] = []
    deliveries.when_delivered("r", 9, 5.0, lambda: called.append(9))
    deliveries.when_delivered("r", 5, 5.0, lambda: called.append(5))
    deliveries.delivered("r", 6)
    assert called == [5]
    deliveries.delivered("r", 9)
    assert called == [5, 9]
