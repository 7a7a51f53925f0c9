"""What a node does with a publish's answer when Redis may have left the message to it: it
delivers it while its subscription of the room is the one the call named, announces it
itself once that subscription ended, and repairs the room when the answer was lost."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from redis.exceptions import ResponseError

from roomcast.brokers.base import Publication
from roomcast.brokers.redis import wire
from roomcast.brokers.redis.publishing import Publishing
from roomcast.errors import BrokerTimeout
from tests.unit.test_redis_publish_encoding import publishing_of

PREFIX = '{"topic":"t","payload":1,"offset":'


class Own:
    """A subscription of room r1, number 7 (`OwnCopies`), that records what it is asked."""

    node_channel = wire.node_channel(wire.channel_prefix(0), "n1", "t0")
    own_copies = True

    def __init__(self) -> None:
        self.subscription = 7
        self.delivered: list[Publication] = []
        self.doubts = 0

    def own(self, room: str) -> int:
        return self.subscription if room == "r1" else 0

    def deliver_own(self, publication: Publication, subscription: int) -> bool:
        if subscription != self.subscription:
            return False
        self.delivered.append(publication)
        return True

    def doubt(self) -> None:
        self.doubts += 1

    def expect(self, rooms: set[str]) -> None:
        pass

    def settled(self) -> None:
        pass


def setup() -> tuple[Publishing, Own, list[tuple[bytes, bytes]]]:
    announced: list[tuple[bytes, bytes]] = []

    async def announce(channel: bytes, payload: bytes) -> None:
        announced.append((channel, payload))

    calls: Any = SimpleNamespace(available=True, cluster=False, announce=announce)
    own = Own()
    publishing = publishing_of(calls, own, serves=lambda room: room == "r1")
    publishing._deliveries.delivered("r1", 2)  # this node has delivered r1 up to 2
    return publishing, own, announced


async def answer(publishing: Publishing, result: Any) -> asyncio.Future[Publication]:
    """Queue one publish to r1 and hand it `result` as Redis' answer (no Redis involved)."""
    done = publishing.publish_soon("r1", PREFIX, None)
    ((_, answered),), _ = publishing._batch_of(publishing._queued)
    publishing._queued.clear()
    answered(result)
    await asyncio.sleep(0)  # the flush task, which finds nothing to send
    return done


async def test_an_unannounced_publish_is_delivered_by_its_node() -> None:
    publishing, own, announced = setup()
    done = await answer(publishing, [3, b"e1", 2])
    publication = Publication("r1", 3, PREFIX + "3}", None, "e1")
    assert done.result() == publication
    assert own.delivered == [publication]
    assert announced == []


async def test_a_subscription_ended_before_the_answer_makes_the_node_announce_it() -> None:
    """The room was unsubscribed (and subscribed again: another number) while the call was
    under way: the script may have counted another node as the one subscriber."""
    publishing, own, announced = setup()
    done = publishing.publish_soon("r1", PREFIX, "bob", "c1")
    ((_, answered),), _ = publishing._batch_of(publishing._queued)
    publishing._queued.clear()
    own.subscription = 8
    answered([4, b"e1", 2])
    publication = done.result()
    await asyncio.gather(*publishing._flushes)
    assert own.delivered == []
    assert announced == [
        (wire.channel(wire.channel_prefix(0), "r1"), wire.encode_publication(publication))
    ]
    assert wire.decode("r1", announced[0][1]) == Publication(
        "r1", 4, PREFIX + "4}", "bob", "e1", "c1"
    )


async def test_an_announced_publish_waits_for_the_subscription() -> None:
    """Answer without the third element: announced, so the copy comes by the subscription."""
    publishing, own, _ = setup()
    done = await answer(publishing, [5, b"e1"])
    assert not done.done()
    publishing._deliveries.delivered("r1", 5)
    await asyncio.sleep(0)
    assert done.result().offset == 5
    assert own.delivered == []


async def test_a_lost_answer_makes_the_node_doubt_its_subscription() -> None:
    """A publish whose answer did not come may have run, or may run later, and been left to
    this node: the subscription is started again (`Subscriber.doubt`)."""
    publishing, own, _ = setup()
    done = await answer(publishing, BrokerTimeout("no answer"))
    assert isinstance(done.exception(), BrokerTimeout)
    assert own.doubts == 1


async def test_a_pubsub_refused_since_the_node_connected_stops_leaving_publishes() -> None:
    publishing, own, _ = setup()
    done = await answer(publishing, ResponseError("NOPERM this user has no permissions"))
    assert isinstance(done.exception(), ResponseError)
    assert own.own_copies is False
