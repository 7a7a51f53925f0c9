"""A node whose Redis user has the ACL that docs/configuration.md gives ("The Redis user")
does everything a node does: presence, publishes, history."""

from __future__ import annotations

from redis.asyncio import Redis

from roomcast.brokers.redis import RedisBroker
from roomcast.node import Node
from roomcast.protocol import message_prefix
from roomcast.settings import Settings
from tests.contract.test_node_ordering import member_in
from tests.harness import RedisProcess


async def test_a_node_runs_with_the_documented_acl(redis_server: RedisProcess) -> None:
    admin = Redis.from_url(redis_server.url)
    acl = ("on", ">secret", "~rc:*", "&rc:*", "+@all")
    await admin.execute_command("ACL", "SETUSER", "roomcast", *acl)
    # What the default user may no longer touch shows the ACL holds roomcast to `rc:`.
    await admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "resetchannels")
    url = f"redis://roomcast:secret@127.0.0.1:{redis_server.port}/0"
    node = Node(Settings(node_id="n1"), broker=RedisBroker(url))
    await node.start()
    try:
        assert node.broker.available
        connection = await member_in(node, "r1")
        await node.broker.add_member("r1", "alice", "c1")
        assert await node.broker.members("r1") == ["alice"]
        for n in range(3):
            await node.broker.publish("r1", message_prefix("t", n, "r1", "x"))
        assert connection.offsets() == [1, 2, 3]
        page = await node.broker.history("r1")
        assert [p.offset for p in page.publications] == [1, 2, 3]
    finally:
        await node.shutdown()
        await admin.aclose()
