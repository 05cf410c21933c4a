"""A real three-master Redis Cluster on loopback, through the conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from _servers.redis_server import RedisCluster3
from threadlock import Inbox, Lease
from threadlock.backends.redis import RedisThreadLock
from threadlock.inbox import Batch
from threadlock.protocol import RunRecord
from threadlock.testing import BackendConformance, InboxRecoveryConformance

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


class TestRedisClusterInbox(InboxRecoveryConformance):
    """The inbox and its crash recovery on a Cluster: every key's inbox in its lease's slot,
    the prefix's index of keys with pending messages in a slot of its own."""

    race_rounds = 300  # the full 2,000 run on a plain server (test_redis_inbox.py)

    @pytest.fixture
    def cluster_prefix(self) -> str:
        return f"tl-cluster-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def lock(
        self, redis_cluster: RedisCluster3, cluster_prefix: str
    ) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_cluster.url, prefix=cluster_prefix) as backend:
            yield backend

    @pytest.fixture
    async def other_lock(
        self, redis_cluster: RedisCluster3, cluster_prefix: str
    ) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_cluster.url, prefix=cluster_prefix) as backend:
            yield backend


@pytest.mark.anyio
async def test_a_sweep_finds_stranded_keys_on_every_master(redis_cluster: RedisCluster3) -> None:
    prefix = f"tl-cluster-{uuid.uuid4().hex[:12]}"
    keys = [f"chat-{n}" for n in range(30)]
    async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix) as lock:
        inbox = Inbox(lock)
        for key in keys:  # each owner took its batch and died (the lease runs out)
            async with inbox.turns(key, key, ttl=0.3) as turns:
                async for _ in turns:
                    break
            await lock.acquire(key, ttl=0.3)
        per_node = [int(node.cli("dbsize")) for node in redis_cluster.nodes]
        assert all(count > 0 for count in per_node), per_node
        answered: list[str] = []

        async def handler(batch: Batch) -> None:
            answered.extend(m.payload for m in batch.messages)

        with anyio.fail_after(20):
            while len(answered) < len(keys):
                await inbox.sweep(handler, ttl=30.0)
                await anyio.sleep(0.05)
        assert sorted(answered) == sorted(keys)
        assert await inbox.stranded() == []
        assert await lock.client.zcard(f"{prefix}:inbox-keys:{{{prefix}}}") == 0  # all removed


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


def _move_slot(cluster: RedisCluster3, slot: int) -> tuple[Any, Any]:
    """Move ``slot`` and its keys from the master that serves it to another: the steps of
    ``redis-cli --cluster reshard``. Returns (old master, new master)."""
    ids = {node: node.cli("cluster", "myid").strip() for node in cluster.nodes}
    owner = next(
        node
        for node in cluster.nodes
        if node.cli("cluster", "countkeysinslot", str(slot)).strip() != "0"
    )
    target = next(node for node in cluster.nodes if node is not owner)
    target.cli("cluster", "setslot", str(slot), "importing", ids[owner])
    owner.cli("cluster", "setslot", str(slot), "migrating", ids[target])
    while keys := owner.cli("cluster", "getkeysinslot", str(slot), "100").split():
        owner.cli("migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *keys)
    for node in (target, owner, *(n for n in cluster.nodes if n not in (owner, target))):
        node.cli("cluster", "setslot", str(slot), "node", ids[target])
    return owner, target


@pytest.mark.anyio
async def test_the_subscriber_follows_a_channel_whose_slot_moved(
    redis_cluster: RedisCluster3,
) -> None:
    # Issue 15, defect 5. grace=3600 and ttl=3600: the waiter's heartbeat and the holder's
    # expiry are an hour away, so within the bound only a notification can hand the key over,
    # and it is published on the master that serves the slot now.
    prefix = f"tl-cluster-{uuid.uuid4().hex[:12]}"
    key = "moving"
    async with RedisThreadLock.from_url(redis_cluster.url, prefix=prefix, grace=3600.0) as lock:
        channel = lock._channel(key)
        slot = int(redis_cluster.nodes[0].cli("cluster", "keyslot", channel))
        holder = await lock.acquire(key, ttl=3600.0)
        got: list[Lease] = []

        async def waiter() -> None:
            got.append(await lock.acquire(key, ttl=30.0, timeout=60.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            with anyio.fail_after(20):
                while (info := await lock.inspect(key)) is None or info.waiters != 1:
                    await anyio.sleep(0.01)
                while not any(
                    channel in node.cli("pubsub", "shardchannels").split()
                    for node in redis_cluster.nodes
                ):
                    await anyio.sleep(0.01)
            old, new = await anyio.to_thread.run_sync(_move_slot, redis_cluster, slot)
            with anyio.fail_after(20):  # the subscription moved with the slot
                while channel not in new.cli("pubsub", "shardchannels").split():
                    await anyio.sleep(0.02)
            assert channel not in old.cli("pubsub", "shardchannels").split()
            assert await lock.release(holder)
            with anyio.fail_after(20):  # notified on the new master
                while not got:
                    await anyio.sleep(0.01)
        assert got[0].fence > holder.fence
        assert await lock.release(got[0])
