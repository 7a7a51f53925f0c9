"""The Redis broker's publishing: batched, pipelined PUBLISH script calls.

A publish is one run of the PUBLISH script (scripts.py), which assigns the room's next
offset, retains the message and announces it on the room's channel in one atomic step.
Publishes asked for while a round trip is under way share the next one: on one Redis, as one
`EVALSHA` of PUBLISH_BATCH (up to :data:`BATCH_CALLS` publishes each, in order, each with its
own answer or error: one call instead of one per publish is most of what a publish costs
Redis beyond its own writes); on a Redis Cluster, whose rooms span slots, as one pipeline of
PUBLISH calls.

The pipeline sends `EVALSHA` itself, without redis-py's `Pipeline.load_scripts`, which adds a
`SCRIPT EXISTS` round trip to every batch; when Redis answers `NOSCRIPT` (it restarted without
its script cache), the script is loaded and the refused calls, which did not run, are sent
once more. Each call is encoded (RESP) when it is queued, from the room's part, encoded once
per room (its keys, history size and ttl, channel: the script's first arguments), and the
message's own (prefix, target, epoch).

A publish either certainly did not happen (`BrokerUnavailable`: the node knew Redis was
unreachable, or no connection could be had, so nothing was written) or may have happened
(`BrokerTimeout`: the pipeline was written, and its answers did not all come), which is why
the pipeline is written and read here on one connection taken from the pool, rather than by
redis-py's `Pipeline`, whose errors do not say which of the two it was.

On a Redis Cluster the batch is split by master: one pipeline per master, on a connection to
it, all sent at once (each call touches one slot; rooms of one master keep their order; rooms
of different masters have no order between them). A call answered `MOVED` or `ASK` did not run: it
is sent once more through the cluster client, which follows the redirect.

A node that serves the room also waits (bounded) until its own subscription delivered the
message, so that a sender's `ack` follows its own copy (:class:`Deliveries`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from functools import partial
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from ...errors import BrokerTimeout, RoomcastError
from ...protocol import message_frame
from ..base import Publication
from . import redispy, wire
from .calls import FAULTS, Calls, unavailable

__all__ = ["BATCH_CALLS", "DELIVERY_WAIT", "REPLICA_WAIT_MS", "Deliveries", "Publishing"]

BATCH_CALLS = 256
"""Most publishes in one PUBLISH_BATCH call (a longer batch is several calls, pipelined): one
script call holds Redis for its whole run."""

DELIVERY_WAIT = 2.0
"""Seconds `publish` waits for its own message to reach this node's members (then returns)."""
REPLICA_WAIT_MS = 100
"""Milliseconds a batch of publishes on a Redis Cluster shard with replicas waits for one of
them to confirm it (`WAIT`); past that it is acknowledged all the same."""

_Answer = Callable[[Any], None]
"""What takes a publish call's answer from Redis: its result, or the exception for it."""
_Call = tuple[tuple[Any, ...], bytes, bytes]
"""One PUBLISH script call: its arguments (number of keys, keys, argv: its first key names
its slot), and the RESP encoding of its keys and of its argv."""
_Batch = list[tuple[_Call, _Answer]]
ROOM_CACHE_SIZE = 4096
"""Rooms whose PUBLISH keys and arguments are kept between publishes (then forgotten)."""


class Deliveries:
    """Who waits for a room's offset to arrive on this node's subscription.

    A waiter is a callback, called once: when the offset was delivered, when the node stops
    receiving the room, or when its time is up. One timer serves every waiter: it fires at
    the earliest deadline and ends what is due.
    """

    def __init__(self) -> None:
        self._delivered: dict[str, int] = {}
        """Per room, the highest offset this node's subscription delivered."""
        self._waiters: dict[str, list[tuple[int, float, Callable[[], None]]]] = {}
        """Per room, (offset, deadline, callback) in the order asked for."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the first waiter (on Python 3.11 `get_running_loop` makes a system
        call, `getpid`, each time: a publish's waiter does without)."""

    def when_delivered(
        self, room: str, offset: int, timeout: float, callback: Callable[[], None]
    ) -> None:
        """Call `callback` once `offset` of `room` was delivered here (now, if it was), or
        after `timeout` seconds."""
        if self._delivered.get(room, 0) >= offset:
            callback()
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiters.setdefault(room, []).append((offset, deadline, callback))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def delivered(self, room: str, offset: int) -> None:
        """The subscription delivered `offset` of `room`: call whoever waits for it."""
        if offset > self._delivered.get(room, 0):
            self._delivered[room] = offset
        waiters = self._waiters.get(room)
        if waiters:
            keep = []
            for waiter in waiters:
                if waiter[0] <= offset:
                    waiter[2]()
                else:
                    keep.append(waiter)
            self._waiters[room] = keep

    def forget(self, room: str) -> None:
        """The node no longer receives `room`: nobody waits for it."""
        self._delivered.pop(room, None)
        for _, _, callback in self._waiters.pop(room, ()):
            callback()

    def reset(self) -> None:
        """The subscription was lost: release every waiter and forget every position."""
        self._delivered.clear()
        waiters, self._waiters = self._waiters, {}
        for room_waiters in waiters.values():
            for _, _, callback in room_waiters:
                callback()

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due: list[Callable[[], None]] = []
        earliest = math.inf
        for room, waiters in list(self._waiters.items()):
            keep = []
            for waiter in waiters:
                if waiter[1] <= now:
                    due.append(waiter[2])
                else:
                    keep.append(waiter)
                    earliest = min(earliest, waiter[1])
            if keep:
                self._waiters[room] = keep
            else:
                del self._waiters[room]
        if earliest < math.inf:
            self._timer = loop.call_at(earliest, self._expire)
        for callback in due:
            callback()


class Publishing:
    """Batched publishes of one node.

    Args:
        calls: the node's command connections.
        channel_prefix: the start of the room channels (wire.channel_prefix).
        retention: a room's history size and ttl in milliseconds (its class's).
        keys: a room's keys for the PUBLISH script (wire.room_keys, as its class has them).
        idempotency_window_ms: how long a publish's idempotency key is remembered.
        deliveries: where the subscription reports what it delivered.
        serves: whether this node receives a room (then a publish waits for its own copy).
    """

    def __init__(
        self,
        calls: Calls,
        *,
        channel_prefix: str,
        retention: Callable[[str], tuple[int, int]],
        keys: Callable[[str], list[str]],
        idempotency_window_ms: int,
        deliveries: Deliveries,
        serves: Callable[[str], bool],
    ) -> None:
        self._calls = calls
        self._channel_prefix = channel_prefix
        self._retention = retention
        self._keys = keys
        self._idempotency_window_ms = idempotency_window_ms
        self._serves = serves
        self._deliveries = deliveries
        self._rooms: dict[str, tuple[tuple[Any, ...], bytes, bytes]] = {}
        """Per room recently published to: its keys, history size and ttl, and channel, and
        their encoding (the keys', the rest's); a room's class, and so all of these, never
        changes."""
        self._batch: _Batch = []
        """Publishes asked for since the last batch went out, in call order."""
        self._epoch = ""
        """The epoch the publishes of the next batch offer for a room's new incarnation
        (one per batch: a room starts at most one incarnation in a batch)."""
        self._packed_epoch = b""
        self._renew_epoch()
        self._flushing = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the first publish (see `Deliveries._loop`)."""

    def publish_soon(
        self,
        room: str,
        prefix: str,
        to: str | None,
        exclude: str | None = None,
        key: str | None = None,
    ) -> asyncio.Future[Publication]:
        """Queue one publish for the next batch: its publication, or its error, comes in the
        future returned (see `Broker.publish`). When this node serves the room, the future
        is done once the node's own copy was delivered, or after `DELIVERY_WAIT` seconds (a
        duplicate too: its ack follows the first one's copy, as the first one's would)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[Publication] = loop.create_future()
        if not self._calls.available:
            done.set_exception(unavailable())
            return done
        known = self._rooms.get(room)
        if known is None:
            if len(self._rooms) >= ROOM_CACHE_SIZE:
                self._rooms.clear()
            keys = self._keys(room)
            size, ttl_ms = self._retention(room)
            channel = wire.channel(self._channel_prefix, room)
            known = self._rooms[room] = (
                (*keys, size, ttl_ms, channel),
                b"".join([_bulk(k.encode()) for k in keys]),
                _bulk(b"%d" % size) + _bulk(b"%d" % ttl_ms) + _bulk(channel),
            )
        fixed, packed_keys, packed_room = known
        target = wire.encode_target(to, exclude)
        argv = b"%b%b%b%b" % (
            packed_room,
            _bulk(prefix.encode()),
            _bulk(target.encode()),
            self._packed_epoch,
        )
        call: _Call
        if key is None:
            call = ((4, *fixed, prefix, target, self._epoch), packed_keys, argv)
        else:
            idempotency_key = wire.idempotency_key(room, key)
            window = self._idempotency_window_ms
            call = (
                (5, *fixed[:4], idempotency_key, *fixed[4:], prefix, target, self._epoch, window),
                packed_keys + _bulk(idempotency_key.encode()),
                argv + _bulk(b"%d" % window),
            )
        self._batch.append((call, partial(self._answered, done, room, prefix, to, exclude)))
        if not self._flushing:
            self._flushing = True
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return done

    def _answered(
        self,
        done: asyncio.Future[Publication],
        room: str,
        prefix: str,
        to: str | None,
        exclude: str | None,
        result: Any,
    ) -> None:
        """Redis answered one publish call: `done` gets its publication (once its own copy
        arrived, when this node serves the room) or its error."""
        if done.done():  # the caller stopped waiting
            return
        if isinstance(result, BaseException):
            done.set_exception(result)
            return
        try:
            offset, epoch = int(result[0]), result[1].decode()
        except Exception as exc:  # pragma: no cover - what the PUBLISH script returns
            done.set_exception(exc)
            return
        publication = Publication(
            room, offset, message_frame(prefix, offset), to, epoch, exclude, len(result) > 2
        )
        if self._serves(room):
            self._deliveries.when_delivered(
                room, offset, DELIVERY_WAIT, partial(_resolve, done, publication)
            )
        else:
            done.set_result(publication)

    async def _flush(self) -> None:
        """Send the publishes queued meanwhile in one pipeline: one round trip, not one each.

        One flush at a time: what is asked for while a batch is on its way goes in the next
        batch, sent once this one is answered, so batches reach Redis in order. Scripts run
        one by one in Redis; the order of the batches and within each is the order in which
        the publishes were asked for (so one sender's offsets follow its calls).
        """
        try:
            await asyncio.sleep(0)  # let the publishes of this loop iteration join the batch
            while self._batch:
                batch, self._batch = self._batch, []
                self._renew_epoch()
                await self._send(batch)
        except BaseException as exc:
            batch, self._batch = self._batch, []
            _fail(batch, unavailable(repr(exc)))
            raise
        finally:
            self._flushing = False

    def _renew_epoch(self) -> None:
        self._epoch = wire.new_epoch()
        self._packed_epoch = _bulk(self._epoch.encode())

    async def _send(self, batch: _Batch) -> None:
        try:
            results = await self._run([call for call, _ in batch])
        except RoomcastError as exc:
            _fail(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        for (_, answer), result in zip(batch, results, strict=True):
            answer(result)

    async def _run(self, calls: list[_Call]) -> list[Any]:
        if not self._calls.cluster:
            return await self._run_slot(calls)
        groups: dict[object, list[int]] = {}
        for index, (args, _, _) in enumerate(calls):
            groups.setdefault(self._calls.server_of(args[1]), []).append(index)
        if len(groups) == 1:
            return await self._run_slot(calls)
        results: list[Any] = [None] * len(calls)
        answers = await asyncio.gather(
            *(self._run_slot([calls[i] for i in indexes]) for indexes in groups.values()),
            return_exceptions=True,
        )
        for indexes, answer in zip(groups.values(), answers, strict=True):
            for position, i in enumerate(indexes):
                results[i] = answer if isinstance(answer, BaseException) else answer[position]
        return results

    async def _run_slot(self, calls: list[_Call]) -> list[Any]:
        """Publish calls whose rooms are served by one master (all of them on one Redis)."""
        publish = self._calls.script_publish
        if self._calls.cluster and not redispy.POOLED:
            return [await self._one(publish.sha, args) for args, _, _ in calls]
        if not self._calls.cluster and len(calls) > 1:
            script, source, send = (
                self._calls.script_publish_batch,
                self._calls.publish_batch_source,
                self._batched,
            )
        else:
            script, source, send = publish, self._calls.publish_source, self._pipeline
        results = await send(script.sha, calls)
        refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if refused:
            # Redis restarted without its script cache. A script that was refused did not
            # run, so those calls are sent again, once, after loading it.
            again: list[Any]
            try:
                script.sha = await self._calls.redis.script_load(source)
            except FAULTS as exc:
                again = [unavailable(exc)] * len(refused)
            else:
                try:
                    again = await send(script.sha, [calls[i] for i in refused])
                except RoomcastError as exc:
                    again = [exc] * len(refused)
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        moved = [i for i, r in enumerate(results) if isinstance(r, redispy.REDIRECTS)]
        if moved and isinstance(self._calls.redis, RedisCluster):
            # The slot moved (a failover, a resharding): those calls did not run. Once more,
            # in order, through the client, which follows MOVED and ASK.
            await redispy.redirected(self._calls.redis, results[moved[0]])
            for i in moved:
                results[i] = await self._one(publish.sha, calls[i][0])
        return results

    async def _one(self, sha: str, args: tuple[Any, ...]) -> Any:
        """One publish call through the client (its answer, or the error for it); `args`
        starts with the number of keys."""
        try:
            return await self._calls.redis.evalsha(sha, *args)
        except ResponseError as exc:
            return exc
        except FAULTS as exc:
            return BrokerTimeout(
                f"the broker (redis) stopped answering: the message may or may not have been"
                f" published ({exc})"
            )

    async def _pipeline(self, sha: str, calls: list[_Call]) -> list[Any]:
        """Send `EVALSHA` of PUBLISH for each call on one connection, then read every answer:
        a result, or the `ResponseError` Redis answered for that call (see `_roundtrip`)."""
        head = b"$7\r\nEVALSHA\r\n" + _bulk(sha.encode())
        commands = [
            b"*%d\r\n%b%b%b%b" % (len(args) + 2, head, _NUMKEYS[args[0]], keys, argv)
            for args, keys, argv in calls
        ]
        return await self._roundtrip(calls[0][0][1], commands)

    async def _batched(self, sha: str, calls: list[_Call]) -> list[Any]:
        """Send the calls as `EVALSHA` of PUBLISH_BATCH (`sha`), up to `BATCH_CALLS` each,
        pipelined on one connection: each publish's answer, or the `ResponseError` it met
        (one for all of a batch call that Redis refused, a `NOSCRIPT` for instance)."""
        head = b"$7\r\nEVALSHA\r\n" + _bulk(sha.encode())
        chunks = [calls[i : i + BATCH_CALLS] for i in range(0, len(calls), BATCH_CALLS)]
        commands = []
        for chunk in chunks:
            keys = sum(args[0] for args, _, _ in chunk)
            commands.append(
                b"*%d\r\n%b%b%b%b"
                % (
                    3 + sum(len(args) for args, _, _ in chunk),
                    head,
                    _bulk(b"%d" % keys),
                    b"".join([packed for _, packed, _ in chunk]),
                    b"".join([_NUMKEYS[args[0]] + argv for args, _, argv in chunk]),
                )
            )
        results: list[Any] = []
        for chunk, answer in zip(
            chunks, await self._roundtrip(calls[0][0][1], commands), strict=True
        ):
            if isinstance(answer, list) and len(answer) == len(chunk):
                results += answer
            else:
                if not isinstance(answer, BaseException):  # pragma: no cover - the script's
                    answer = ResponseError(f"unexpected answer to a batch: {answer!r:.200}")
                results += [answer] * len(chunk)
        return results

    async def _roundtrip(self, first_key: str, commands: list[bytes]) -> list[Any]:
        """Send `commands` on one connection (to the master of `first_key`'s slot), then read
        every answer: a result, or the `ResponseError` Redis answered for that command.

        Raises:
            BrokerUnavailable: no connection could be had: nothing was sent.
            BrokerTimeout: the calls were sent (in part or whole) and Redis did not answer
                them all (the connection failed, or no answer within the reply timeout):
                some may have run.
        """
        calls = len(commands)
        conn, release = await self._calls.connection(first_key)
        replicas = self._calls.replicas(first_key)
        try:
            if replicas:
                # A Redis Cluster shard with a replica: answer once the replica has the
                # batch too (bounded), so that a publish acknowledged before its master
                # dies is still there after the replica took over.
                commands.append(_WAIT)
            packed_all = b"".join(commands)
            results: list[Any] = []
            try:
                await conn.send_packed_command(packed_all, check_health=False)
                # The reply timeout bounds the batch's answers together: one timer per round
                # trip, not one per answer (`math.inf`: no timer of redis-py's own).
                expected = len(commands)
                async with asyncio.timeout(conn.socket_timeout):
                    while len(results) < expected:
                        try:
                            results.append(await conn.read_response(timeout=math.inf))
                        except ResponseError as exc:
                            results.append(exc)
                        # The answers that came with it: taken without an awaited read each.
                        results += redispy.buffered_replies(conn, expected - len(results))
                del results[calls:]  # WAIT's answer
            except FAULTS as exc:
                raise BrokerTimeout(
                    f"the broker (redis) stopped answering: the message may or may not have "
                    f"been published ({exc})"
                ) from None
            except BaseException:
                # Answers still due on this connection must not be read as another call's.
                await conn.disconnect(nowait=True)
                raise
        finally:
            await release()
        return results


def _bulk(value: bytes) -> bytes:
    """`value` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_NUMKEYS = {4: b"$1\r\n4\r\n", 5: b"$1\r\n5\r\n"}
"""A PUBLISH call's number of keys, encoded (without, with an idempotency key)."""

_WAIT = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n" + _bulk(b"%d" % REPLICA_WAIT_MS)
"""`WAIT 1 <REPLICA_WAIT_MS>`, encoded."""


def _resolve(done: asyncio.Future[Publication], publication: Publication) -> None:
    if not done.done():
        done.set_result(publication)


def _fail(batch: _Batch, error: BaseException) -> None:
    for _, answer in batch:
        answer(error)
