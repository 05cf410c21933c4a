"""The run registry and the chain heads on Redis: key layout, TTLs, pruning, server errors.

What every registry and chain store must do is checked by RegistryConformance and
ChainConformance (test_redis_conformance.py); this module keeps what only Redis has.
"""

from __future__ import annotations

import json
import re

import pytest

from _servers.redis_server import RedisServer, free_port
from threadlock import BackendError, Lease, ThreadBusy
from threadlock.backends.redis import RedisThreadLock
from threadlock.backends.redis.keys import digest
from threadlock.testing.registry_conformance import ODD_KEY, run_record

pytestmark = pytest.mark.anyio


def _name(lock: RedisThreadLock, key: str, part: str) -> str:
    return f"{lock.prefix}:{{{digest(key)}}}:{part}"


async def test_registry_and_chain_keys_share_the_lock_slot_and_hold_ids_only(
    redis_lock: RedisThreadLock,
) -> None:
    lease = await redis_lock.acquire(ODD_KEY, ttl=30.0)
    record = run_record(ODD_KEY, "run_x", 12.25, thread_id="thread_x")
    await redis_lock.track_run(record)
    assert await redis_lock.advance_chain(lease, None, "resp_1")
    names = [n.decode() async for n in redis_lock.client.scan_iter(match=f"{redis_lock.prefix}:*")]
    tags = {re.search(r"\{([0-9a-f]{32})\}", n)[1] for n in names}  # type: ignore[index]
    assert tags == {digest(ODD_KEY)}  # one hash tag: one Cluster slot
    assert sorted(n.rsplit(":", 1)[1] for n in names) == ["chain", "lease", "order", "runs"]
    raw = await redis_lock.client.hgetall(_name(redis_lock, ODD_KEY, "runs"))
    assert list(raw) == [b"run_x"]
    order, _, document = raw[b"run_x"].decode().partition(" ")
    assert int(order) > 0
    assert json.loads(document) == [ODD_KEY, "run", "run_x", "thread_x", 12.25, 7, "host:1:task"]
    assert lease.token not in document
    assert await redis_lock.client.get(_name(redis_lock, ODD_KEY, "chain")) == b"resp_1"
    assert await redis_lock.release(lease)


async def test_registry_and_chain_keys_carry_ttls(redis_url: str, prefix: str) -> None:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        assert lock.registry_ttl == 24 * 3600.0
        assert lock.chain_ttl == 30 * 24 * 3600.0
        lease = await lock.acquire("ttl", ttl=30.0)
        await lock.track_run(run_record("ttl", "run_1", 1.0))
        assert await lock.advance_chain(lease, None, "resp_1")
        runs_ttl = await lock.client.pttl(_name(lock, "ttl", "runs"))
        assert await lock.client.pttl(_name(lock, "ttl", "order")) == pytest.approx(
            runs_ttl, abs=1000
        )
        chain_ttl = await lock.client.pttl(_name(lock, "ttl", "chain"))
        assert 24 * 3600_000 - 60_000 < runs_ttl <= 24 * 3600_000
        assert 30 * 24 * 3600_000 - 60_000 < chain_ttl <= 30 * 24 * 3600_000
        assert await lock.release(lease)

    async with RedisThreadLock.from_url(
        redis_url, prefix=prefix, registry_ttl=900, chain_ttl=3600
    ) as lock:
        lease = await lock.acquire("ttl", ttl=30.0)
        # Every write refreshes the TTL.
        await lock.client.pexpire(_name(lock, "ttl", "runs"), 5_000)
        await lock.client.pexpire(_name(lock, "ttl", "chain"), 5_000)
        await lock.track_run(run_record("ttl", "run_2", 2.0))
        assert await lock.advance_chain(lease, "resp_1", "resp_2")
        assert 800_000 < await lock.client.pttl(_name(lock, "ttl", "runs")) <= 900_000
        assert 3_500_000 < await lock.client.pttl(_name(lock, "ttl", "chain")) <= 3_600_000
        assert await lock.release(lease)

    with pytest.raises(ValueError, match="registry_ttl"):
        RedisThreadLock.from_url(redis_url, registry_ttl=599)
    with pytest.raises(ValueError, match="chain_ttl"):
        RedisThreadLock.from_url(redis_url, chain_ttl=0)
    with pytest.raises(TypeError, match="registry_ttl"):
        RedisThreadLock.from_url(redis_url, registry_ttl="1d")


async def test_each_write_drops_entries_older_than_the_ttl(redis_url: str, prefix: str) -> None:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix, registry_ttl=600) as lock:
        await lock.track_run(run_record("old", "run_kept", 3.0))
        runs = _name(lock, "old", "runs")
        seconds, micros = await lock.client.time()
        stale = (seconds - 601) * 1_000_000 + micros
        document = json.dumps(["old", "run", "run_stale", "old", 1.0, 1, "dead"])
        await lock.client.hset(runs, "run_stale", f"{stale} {document}")
        await lock.client.zadd(_name(lock, "old", "order"), {"run_stale": stale})
        assert [r.run_id for r in await lock.tracked_runs("old")] == ["run_stale", "run_kept"]
        await lock.track_run(run_record("old", "run_new", 4.0))
        assert [r.run_id for r in await lock.tracked_runs("old")] == ["run_kept", "run_new"]


async def test_an_emptied_registry_leaves_no_key_and_prefixes_are_apart(
    redis_url: str, prefix: str
) -> None:
    async with (
        RedisThreadLock.from_url(redis_url, prefix=prefix) as lock,
        RedisThreadLock.from_url(redis_url, prefix=prefix + "-other") as other,
    ):
        await lock.track_run(run_record("thread_a", "run_1", 1.0))
        assert await lock.client.exists(_name(lock, "thread_a", "runs")) == 1
        assert await lock.client.exists(_name(lock, "thread_a", "order")) == 1
        assert await other.tracked_runs() == []  # prefixes do not see each other
        assert await other.tracked_runs("thread_a") == []
        await lock.untrack_run("thread_a", "run_1")
        assert await lock.client.exists(_name(lock, "thread_a", "runs")) == 0
        assert await lock.client.exists(_name(lock, "thread_a", "order")) == 0


async def test_record_fields_and_expected_are_checked(redis_lock: RedisThreadLock) -> None:
    # Beyond RegistryConformance/ChainConformance: Redis also checks the record's own key and
    # run id, and the type of `expected` (the memory and Postgres backends do not, yet).
    lock = redis_lock
    with pytest.raises(TypeError, match="record must be a RunRecord"):
        await lock.track_run(("k", "run", "r", "t", 1.0, 1, "o"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record.key"):
        await lock.track_run(run_record("", "run_1", 1.0))
    with pytest.raises(ValueError, match="record.run_id"):
        await lock.track_run(run_record("k", "a\x00b", 1.0))
    lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
    with pytest.raises(TypeError, match="expected"):
        await lock.advance_chain(lease, 5, "resp_1")  # type: ignore[arg-type]
    assert await lock.tracked_runs() == []
    assert await lock.chain_head("k") is None


async def test_backend_errors_are_wrapped(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    async with RedisThreadLock.from_url(url, prefix=prefix) as lock:
        lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
        for call in (
            lambda: lock.track_run(run_record("k", "run_1", 1.0)),
            lambda: lock.untrack_run("k", "run_1"),
            lambda: lock.tracked_runs("k"),
            lock.tracked_runs,
            lambda: lock.chain_head("k"),
            lambda: lock.advance_chain(lease, None, "resp_1"),
        ):
            with pytest.raises(BackendError) as error:
                await call()
            assert error.value.__cause__ is not None


async def test_registry_reads_do_not_scan_the_runs_hash(private_redis: RedisServer) -> None:
    """With 1,000 runs registered, a busy reply, inspect and track read no whole hash: no
    HGETALL (issue 15, defect 6); what they answer is unchanged."""
    async with RedisThreadLock.from_url(private_redis.url, prefix="scan") as lock:
        for n in range(1000):
            await lock.track_run(run_record("many", f"run_{n}", float(n)))
        lease = await lock.acquire("many", ttl=30.0)
        await lock.client.config_resetstat()
        with pytest.raises(ThreadBusy) as busy:
            await lock.acquire("many", ttl=30.0, timeout=0)
        assert busy.value.holder is not None
        assert busy.value.holder.run_id == "run_999"
        info = await lock.inspect("many")
        assert info is not None
        assert info.run_id == "run_999"
        await lock.track_run(run_record("many", "run_1000", 1000.0))
        info = await lock.inspect("many")
        assert info is not None
        assert info.run_id == "run_1000"
        await lock.track_run(run_record("many", "run_5", 5.5))  # again: keeps its place
        info = await lock.inspect("many")
        assert info is not None
        assert info.run_id == "run_1000"
        stats = await lock.client.info("commandstats")
        assert "cmdstat_hgetall" not in stats
        assert "cmdstat_hscan" not in stats
        await lock.untrack_run("many", "run_1000")
        info = await lock.inspect("many")
        assert info is not None
        assert info.run_id == "run_999"
        assert len(await lock.tracked_runs("many")) == 1000
        assert await lock.release(lease)
