"""A real three-master Redis Cluster on loopback, through the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from _servers.redis_server import RedisCluster3
from threadlock.backends.redis import RedisThreadLock
from threadlock.protocol import RunRecord
from threadlock.testing import BackendConformance

# One worker starts the three-node cluster (module scope) and runs all of it.
pytestmark = pytest.mark.xdist_group("redis-cluster")


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


@pytest.mark.anyio
async def test_registry_and_chains_on_every_master(redis_cluster: RedisCluster3) -> None:
    prefix = f"tl-cluster-{uuid.uuid4().hex[:12]}"
    keys = [f"thread-{n}" for n in range(30)]
    async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix) as lock:
        for n, key in enumerate(keys):
            await lock.track_run(RunRecord(key, "run", f"run-{n}", key, float(n), n, "w"))
        per_node = [int(node.cli("dbsize")) for node in redis_cluster.nodes]
        assert all(count > 0 for count in per_node), per_node
    async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix) as fresh:
        records = await fresh.tracked_runs()  # one listing across all masters
        assert [r.run_id for r in records] == [f"run-{n}" for n in range(30)]
        lease = await fresh.acquire(keys[3], ttl=30.0, timeout=0)
        info = await fresh.inspect(keys[3])
        assert info is not None
        assert info.run_id == "run-3"
        assert await fresh.advance_chain(lease, None, "resp_1")
        assert await fresh.advance_chain(lease, None, "resp_2") is False
        assert await fresh.chain_head(keys[3]) == "resp_1"
        assert await fresh.release(lease)
        assert await fresh.advance_chain(lease, "resp_1", "resp_2") is False
        for n, key in enumerate(keys):
            await fresh.untrack_run(key, f"run-{n}")
        assert await fresh.tracked_runs() == []
