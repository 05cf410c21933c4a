"""A real three-master Redis Cluster on loopback, through the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from _servers.redis_server import RedisCluster3
from threadlock.backends.redis import RedisThreadLock
from threadlock.testing import BackendConformance


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster3]:
    cluster = RedisCluster3().start()
    try:
        yield cluster
    finally:
        cluster.stop()


class TestRedisClusterConformance(BackendConformance):
    @pytest.fixture
    async def lock(self, redis_cluster: RedisCluster3) -> AsyncIterator[RedisThreadLock]:
        prefix = f"tl-cluster-{uuid.uuid4().hex[:12]}"
        async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix) as backend:
            yield backend


@pytest.mark.anyio
async def test_locks_spread_over_every_master_and_use_sharded_pubsub(
    redis_cluster: RedisCluster3,
) -> None:
    prefix = f"tl-cluster-{uuid.uuid4().hex[:12]}"
    async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix) as lock:
        keys = [f"conversation-{n}" for n in range(60)]
        leases = [await lock.acquire(key, ttl=30.0, timeout=0) for key in keys]
        per_node = [int(node.cli("dbsize")) for node in redis_cluster.nodes]
        assert all(count > 0 for count in per_node), per_node
        assert sorted(i.key for i in await lock.held()) == sorted(keys)  # across all masters
        # Waiters on keys in different slots are woken through sharded channels.
        got: list[str] = []

        async def waiter(key: str) -> None:
            lease = await lock.acquire(key, ttl=30.0, timeout=None)
            got.append(key)
            await lock.release(lease)

        async with anyio.create_task_group() as tg:
            for key in keys[:6]:
                tg.start_soon(waiter, key)
            with anyio.fail_after(20):
                for key in keys[:6]:
                    while (info := await lock.inspect(key)) is None or info.waiters != 1:
                        await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # let the subscriptions confirm
            channels = set()
            for node in redis_cluster.nodes:
                channels.update(node.cli("pubsub", "shardchannels").split())
            assert len(channels) == 6
            for lease in leases[:6]:
                assert await lock.release(lease)
            with anyio.fail_after(5):  # notified; the heartbeat fallback is slower
                while len(got) < 6:
                    await anyio.sleep(0.005)
        for lease in leases[6:]:
            assert await lock.release(lease)
        assert await lock.held() == []
