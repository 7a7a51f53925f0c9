"""The outbound queue of one connection: the byte limit, the replay allowance, abort."""

from __future__ import annotations

import asyncio

from roomcast.connection import Outbox


class Peer:
    """A socket whose writes block until `reading` is set, recording what got through."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.written: list[str] = []
        self.closed: list[tuple[int, str]] = []
        self.overflows = 0
        self.writing = asyncio.Event()
        self.wrote = asyncio.Event()

    async def write(self, text: str) -> None:
        self.writing.set()
        await self.reading.wait()
        self.written.append(text)
        self.wrote.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def overflow(self) -> None:
        self.overflows += 1


async def test_overflow_fires_past_the_limit() -> None:
    """Queuing more than max_bytes while the peer does not read calls on_overflow."""
    peer = Peer()
    outbox = Outbox(peer.write, peer.close, 100, peer.overflow)
    outbox.start()
    for _ in range(10):
        outbox.send("x" * 10)
    assert peer.overflows == 0
    outbox.send("x" * 11)
    assert peer.overflows == 1


async def test_allowance_takes_a_replay_and_ends_once_drained() -> None:
    """allow(n) lets n more bytes in without an overflow; once the queue has drained below
    the limit the allowance is gone and the limit applies again."""
    peer = Peer()
    outbox = Outbox(peer.write, peer.close, 100, peer.overflow)
    outbox.start()
    outbox.allow(500)
    for _ in range(50):
        outbox.send("r" * 10)
    assert peer.overflows == 0
    assert not outbox.idle  # frames keep going through the queue while it drains
    peer.reading.set()
    async with asyncio.timeout(5):
        while len(peer.written) < 50:
            peer.wrote.clear()
            await peer.wrote.wait()
    assert outbox.allowance == 0
    peer.reading.clear()
    for _ in range(10):
        outbox.send("y" * 10)
    assert peer.overflows == 0
    outbox.send("y")
    assert peer.overflows == 1


async def test_abort_restarts_a_writer_stuck_in_a_write() -> None:
    """abort() drops the queue and sends the close at once, even though the writer is
    blocked writing to a peer that stopped reading."""
    peer = Peer()
    outbox = Outbox(peer.write, peer.close, 1000, peer.overflow)
    outbox.start()
    outbox.send("a")
    outbox.send("b")
    await asyncio.wait_for(peer.writing.wait(), 5)  # the writer is now blocked in a write
    stuck = outbox.task
    outbox.abort(4408, "slow consumer")
    assert outbox.task is not stuck
    assert outbox.task is not None
    await asyncio.wait_for(asyncio.shield(outbox.task), 5)
    assert peer.closed == [(4408, "slow consumer")]
    assert peer.written == []
    assert outbox.buffered == 0
    assert stuck is not None
    assert stuck.cancelled()
    outbox.send("ignored")
    assert outbox.buffered == 0


async def test_abort_of_an_idle_writer_sends_the_close() -> None:
    """abort() of a writer waiting for frames wakes it to send the close."""
    peer = Peer()
    peer.reading.set()
    outbox = Outbox(peer.write, peer.close, 1000, peer.overflow)
    outbox.start()
    outbox.send("a")
    async with asyncio.timeout(5):
        await peer.wrote.wait()  # the writer went on to park on its waiter without yielding
    assert outbox.idle
    writer = outbox.task
    outbox.abort(4408, "slow consumer")
    assert outbox.task is writer
    assert writer is not None
    await asyncio.wait_for(writer, 5)
    assert peer.closed == [(4408, "slow consumer")]
    assert peer.written == ["a"]
