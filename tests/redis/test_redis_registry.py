"""The run registry and the chain heads on Redis: entries in Redis, TTLs, compare-and-set."""

from __future__ import annotations

import dataclasses
import json
import re

import anyio
import pytest

from _servers.redis_server import free_port
from threadlock import BackendError, Lease, ThreadBusy
from threadlock.backends.redis import RedisThreadLock, _digest
from threadlock.protocol import ChainStore, RunRecord, RunRegistry

pytestmark = pytest.mark.anyio

ODD = "{a}b} *?[x] '; -- käse 🧀"


def _record(key: str, run_id: str, created_at: float, **changes: object) -> RunRecord:
    fields: dict[str, object] = {
        "key": key,
        "kind": "run",
        "run_id": run_id,
        "thread_id": key,
        "created_at": created_at,
        "fence": 7,
        "owner": "host:1:task",
    }
    fields.update(changes)
    return RunRecord(**fields)  # type: ignore[arg-type]


def _name(lock: RedisThreadLock, key: str, part: str) -> str:
    return f"{lock.prefix}:{{{_digest(key)}}}:{part}"


async def test_is_a_run_registry_and_chain_store(redis_lock: RedisThreadLock) -> None:
    assert isinstance(redis_lock, RunRegistry)
    assert isinstance(redis_lock, ChainStore)


async def test_registry_round_trip_across_two_instances(redis_url: str, prefix: str) -> None:
    async with (
        RedisThreadLock.from_url(redis_url, prefix=prefix) as one,
        RedisThreadLock.from_url(redis_url, prefix=prefix) as two,
    ):
        first = _record("thread_a", "run_1", 100.0)
        second = _record("thread_a", "run_2", 50.0, kind="response", thread_id="conv_a")
        other = _record("thread_b", "run_3", 75.0, fence=9, owner="elsewhere")
        for record in (first, second, other):
            await one.track_run(record)
        # Per key: in the order recorded. All keys: oldest created_at first.
        assert await two.tracked_runs("thread_a") == [first, second]
        assert await two.tracked_runs() == [second, other, first]
        assert await two.tracked_runs("nothing") == []
        # Recording the same key and run id again replaces it and keeps its place.
        again = _record("thread_a", "run_1", 100.0, fence=8, owner="retry")
        await two.track_run(again)
        assert await one.tracked_runs("thread_a") == [again, second]
        await two.untrack_run("thread_a", "run_1")
        await two.untrack_run("thread_a", "run_1")  # missing: not an error
        await two.untrack_run("thread_zzz", "run_1")
        assert await one.tracked_runs() == [second, other]
        await one.untrack_run("thread_a", "run_2")
        await one.untrack_run("thread_b", "run_3")
        assert await two.tracked_runs() == []
        # An emptied registry leaves no key behind.
        assert await one.client.exists(_name(one, "thread_a", "runs")) == 0


async def test_entries_survive_the_instance_that_wrote_them(redis_url: str, prefix: str) -> None:
    record = _record(ODD, "run_odd", 1.5, thread_id="thread ö", owner="a b:c")
    writer = RedisThreadLock.from_url(redis_url, prefix=prefix)
    await writer.track_run(record)
    await writer.aclose()  # as good as gone: nothing is kept in the process
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as fresh:
        assert await fresh.tracked_runs() == [record]
        assert await fresh.tracked_runs(ODD) == [record]
    async with RedisThreadLock.from_url(redis_url, prefix=prefix + "-other") as other:
        assert await other.tracked_runs() == []  # prefixes do not see each other


async def test_registry_and_chain_keys_share_the_lock_slot_and_hold_ids_only(
    redis_lock: RedisThreadLock,
) -> None:
    lease = await redis_lock.acquire(ODD, ttl=30.0)
    record = _record(ODD, "run_x", 12.25, thread_id="thread_x")
    await redis_lock.track_run(record)
    assert await redis_lock.advance_chain(lease, None, "resp_1")
    names = [n.decode() async for n in redis_lock.client.scan_iter(match=f"{redis_lock.prefix}:*")]
    tags = {re.search(r"\{([0-9a-f]{32})\}", n)[1] for n in names}  # type: ignore[index]
    assert tags == {_digest(ODD)}  # one hash tag: one Cluster slot
    assert sorted(n.rsplit(":", 1)[1] for n in names) == ["chain", "fence", "lease", "runs"]
    raw = await redis_lock.client.hgetall(_name(redis_lock, ODD, "runs"))
    assert list(raw) == [b"run_x"]
    order, _, document = raw[b"run_x"].decode().partition(" ")
    assert int(order) > 0
    assert json.loads(document) == [ODD, "run", "run_x", "thread_x", 12.25, 7, "host:1:task"]
    assert lease.token not in document
    assert await redis_lock.client.get(_name(redis_lock, ODD, "chain")) == b"resp_1"
    assert await redis_lock.release(lease)


async def test_registry_and_chain_keys_carry_ttls(redis_url: str, prefix: str) -> None:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        assert lock.registry_ttl == 24 * 3600.0
        assert lock.chain_ttl == 30 * 24 * 3600.0
        lease = await lock.acquire("ttl", ttl=30.0)
        await lock.track_run(_record("ttl", "run_1", 1.0))
        assert await lock.advance_chain(lease, None, "resp_1")
        runs_ttl = await lock.client.pttl(_name(lock, "ttl", "runs"))
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
        await lock.track_run(_record("ttl", "run_2", 2.0))
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
        await lock.track_run(_record("old", "run_kept", 3.0))
        runs = _name(lock, "old", "runs")
        seconds, micros = await lock.client.time()
        stale = (seconds - 601) * 1_000_000 + micros
        document = json.dumps(["old", "run", "run_stale", "old", 1.0, 1, "dead"])
        await lock.client.hset(runs, "run_stale", f"{stale} {document}")
        assert [r.run_id for r in await lock.tracked_runs("old")] == ["run_stale", "run_kept"]
        await lock.track_run(_record("old", "run_new", 4.0))
        assert [r.run_id for r in await lock.tracked_runs("old")] == ["run_kept", "run_new"]


async def test_inspect_and_held_show_the_newest_tracked_run(redis_lock: RedisThreadLock) -> None:
    lock = redis_lock
    await lock.track_run(_record("free", "run_free", 1.0))
    assert await lock.inspect("free") is None  # a free key has no LockInfo, runs or not
    lease = await lock.acquire("busy", ttl=30.0)
    other = await lock.acquire("quiet", ttl=30.0)
    info = await lock.inspect("busy")
    assert info is not None
    assert info.run_id is None
    await lock.track_run(_record("busy", "run_1", 5.0))
    await lock.track_run(_record("busy", "run_2", 1.0))  # newest by recording, not created_at
    info = await lock.inspect("busy")
    assert info is not None
    assert info.run_id == "run_2"
    assert info.fence == lease.fence
    await lock.track_run(_record("busy", "run_1", 5.0, fence=2))  # keeps its place
    held = {i.key: i for i in await lock.held()}
    assert held["busy"].run_id == "run_2"
    assert held["quiet"].run_id is None
    await lock.untrack_run("busy", "run_2")
    info = await lock.inspect("busy")
    assert info is not None
    assert info.run_id == "run_1"
    with pytest.raises(ThreadBusy) as busy:
        await lock.acquire("busy", ttl=30.0, timeout=0)
    assert busy.value.holder is not None
    assert busy.value.holder.run_id == "run_1"
    assert await lock.release(lease)
    assert await lock.release(other)


async def test_advance_chain_is_a_compare_and_set_under_the_lease(
    redis_lock: RedisThreadLock,
) -> None:
    lock = redis_lock
    assert await lock.chain_head("chain") is None
    lease = await lock.acquire("chain", ttl=30.0)
    assert await lock.advance_chain(lease, "resp_0", "resp_1") is False  # there is no head
    assert await lock.advance_chain(lease, None, "resp_1") is True
    assert await lock.chain_head("chain") == "resp_1"
    assert await lock.advance_chain(lease, None, "resp_x") is False  # a head exists now
    assert await lock.advance_chain(lease, "resp_0", "resp_x") is False  # the head moved
    forged = dataclasses.replace(lease, token="0" * len(lease.token))
    assert await lock.advance_chain(forged, "resp_1", "resp_x") is False
    assert await lock.advance_chain(lease, "resp_1", "resp_2") is True
    assert await lock.chain_head("chain") == "resp_2"

    # A released lease, and one that expired, can no longer move the head.
    assert await lock.release(lease)
    assert await lock.advance_chain(lease, "resp_2", "resp_x") is False
    short = await lock.acquire("chain", ttl=0.05)
    await anyio.sleep(0.1)
    assert await lock.advance_chain(short, "resp_2", "resp_x") is False
    # The next holder moves it on; the stale lease of an earlier holder still cannot.
    nxt = await lock.acquire("chain", ttl=30.0, timeout=0)
    assert await lock.advance_chain(nxt, "resp_2", "resp_3") is True
    assert await lock.advance_chain(short, "resp_3", "resp_x") is False
    assert await lock.chain_head("chain") == "resp_3"
    # Chains are per key.
    assert await lock.chain_head("other chain") is None
    assert await lock.release(nxt)


async def test_arguments_are_checked_and_name_the_argument(redis_lock: RedisThreadLock) -> None:
    lock = redis_lock
    with pytest.raises(TypeError, match="record must be a RunRecord"):
        await lock.track_run(("k", "run", "r", "t", 1.0, 1, "o"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="record.key"):
        await lock.track_run(_record("", "run_1", 1.0))
    with pytest.raises(ValueError, match="record.run_id"):
        await lock.track_run(_record("k", "a\x00b", 1.0))
    with pytest.raises(ValueError, match="key"):
        await lock.untrack_run("", "run_1")
    with pytest.raises(TypeError, match="run_id"):
        await lock.untrack_run("k", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        await lock.tracked_runs("")
    with pytest.raises(TypeError, match="key"):
        await lock.chain_head(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease"):
        await lock.advance_chain("lease", None, "resp_1")  # type: ignore[arg-type]
    lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="new"):
        await lock.advance_chain(lease, None, "")
    with pytest.raises(TypeError, match="expected"):
        await lock.advance_chain(lease, 5, "resp_1")  # type: ignore[arg-type]
    assert await lock.tracked_runs() == []
    await lock.aclose()
    with pytest.raises(BackendError):
        await lock.track_run(_record("k", "run_1", 1.0))
    with pytest.raises(BackendError):
        await lock.tracked_runs()
    with pytest.raises(BackendError):
        await lock.chain_head("k")


async def test_backend_errors_are_wrapped(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    async with RedisThreadLock.from_url(url, prefix=prefix) as lock:
        lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
        for call in (
            lambda: lock.track_run(_record("k", "run_1", 1.0)),
            lambda: lock.untrack_run("k", "run_1"),
            lambda: lock.tracked_runs("k"),
            lock.tracked_runs,
            lambda: lock.chain_head("k"),
            lambda: lock.advance_chain(lease, None, "resp_1"),
        ):
            with pytest.raises(BackendError) as error:
                await call()
            assert error.value.__cause__ is not None
