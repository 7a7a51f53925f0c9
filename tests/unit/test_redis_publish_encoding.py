"""The PUBLISH script calls as the Redis broker encodes them itself (RESP, from each room's
part encoded once): byte for byte what hiredis encodes for the same arguments."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hiredis import pack_command
from redis.exceptions import ResponseError

from roomcast.brokers.redis import wire
from roomcast.brokers.redis.publishing import _NUMKEYS, BATCH_CALLS, Deliveries, Publishing


def publishing_of(calls: Any) -> Publishing:
    """A node's publishing over `calls` (a stand-in), rooms of 100 messages for 300 s."""
    return Publishing(
        calls,
        channel_prefix=wire.channel_prefix(0),
        retention=lambda room: (100, 300_000),
        keys=lambda room: wire.room_keys(room),
        idempotency_window_ms=120_000,
        deliveries=Deliveries(),
        serves=lambda room: False,
    )


async def test_each_call_is_encoded_as_hiredis_encodes_its_arguments() -> None:
    calls: Any = SimpleNamespace(available=True, cluster=False)
    publishing = publishing_of(calls)
    publishing.publish_soon("r1", '{"topic":"t","payload":"é","offset":', None)
    publishing.publish_soon("r1", '{"topic":"t","payload":2,"offset":', "bob", "c7", "key-1")
    publishing.publish_soon("}odd", '{"topic":"t","payload":3,"offset":', None, "c8")
    batch = list(publishing._batch)
    for task in list(publishing._flushes):
        task.cancel()
    await asyncio.gather(*publishing._flushes, return_exceptions=True)
    sha = "0123456789abcdef0123456789abcdef01234567"
    head = pack_command(("EVALSHA", sha))
    head = head[head.index(b"\r\n") + 2 :]  # the two bulk strings without the array header
    for (args, keys, argv), _ in batch:
        ours = b"*%d\r\n%b%b%b%b" % (len(args) + 2, head, _NUMKEYS[args[0]], keys, argv)
        assert ours == pack_command(("EVALSHA", sha, *args))
    first, second, third = (args for (args, _, _), _ in batch)
    assert first[0] == 4
    assert first[-3:-1] == ('{"topic":"t","payload":"é","offset":', "")
    assert second[0] == 5
    assert second[5] == wire.idempotency_key("r1", "key-1")
    assert second[-3] == "bob c7"
    assert second[-1] == 120_000
    assert third[1:5] == tuple(wire.room_keys("}odd"))


async def test_a_call_through_the_client_passes_its_number_of_keys_once() -> None:
    """A call sent again through the client (a `MOVED` answer, a cluster without pooled
    connections) is the same EVALSHA as in the pipeline."""
    sent: list[tuple[Any, ...]] = []

    async def evalsha(*args: Any) -> list[Any]:
        sent.append(args)
        return [1, b"e"]

    calls: Any = SimpleNamespace(
        available=True, cluster=True, redis=SimpleNamespace(evalsha=evalsha)
    )
    publishing = publishing_of(calls)
    publishing.publish_soon("r1", '{"offset":', None)
    (args, _, _), _ = publishing._batch[0]
    for task in list(publishing._flushes):
        task.cancel()
    await asyncio.gather(*publishing._flushes, return_exceptions=True)
    assert await publishing._one("sha", args) == [1, b"e"]
    assert sent == [("sha", *args)]
    assert sent[0][1:6] == (4, *wire.room_keys("r1"))


async def test_a_batch_is_one_script_call_per_batch_calls_with_every_call_in_it() -> None:
    """PUBLISH_BATCH takes every call's keys, then every call's number of keys and argv, in
    call order; past BATCH_CALLS publishes, a second call follows on the same connection."""
    sent: list[list[bytes]] = []

    async def roundtrip(first_key: str, commands: list[bytes]) -> list[Any]:
        sent.append(commands)
        return [[[i, b"e"] for i in range(BATCH_CALLS)], [[BATCH_CALLS, b"e"], ResponseError("x")]]

    sha = "0123456789abcdef0123456789abcdef01234567"
    calls: Any = SimpleNamespace(available=True, cluster=False)
    publishing = publishing_of(calls)
    for i in range(BATCH_CALLS + 2):
        publishing.publish_soon(
            f"r{i % 3}", f'{{"n":{i},"offset":', None, None, "k" if i % 2 else None
        )
    batch = [call for call, _ in publishing._batch]
    for task in list(publishing._flushes):
        task.cancel()
    await asyncio.gather(*publishing._flushes, return_exceptions=True)
    publishing._roundtrip = roundtrip  # type: ignore[method-assign]
    results = await publishing._batched(sha, batch)
    assert len(sent) == 1
    assert len(sent[0]) == 2
    for command, chunk in zip(sent[0], (batch[:BATCH_CALLS], batch[BATCH_CALLS:]), strict=True):
        keys = [k for args, _, _ in chunk for k in args[1 : 1 + args[0]]]
        argv = [a for args, _, _ in chunk for a in (args[0], *args[1 + args[0] :])]
        assert command == pack_command(("EVALSHA", sha, len(keys), *keys, *argv))
    assert results[: BATCH_CALLS + 1] == [[i, b"e"] for i in range(BATCH_CALLS + 1)]
    assert isinstance(results[-1], ResponseError)
