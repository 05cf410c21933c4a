"""The memory backend through the conformance suites (lock, run registry, chain heads), on
asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock import MemoryThreadLock
from threadlock.protocol import RunRecord
from threadlock.testing import ChainConformance, RegistryConformance, backend_conformance

TestMemoryConformance = backend_conformance(MemoryThreadLock, anyio_backends=("asyncio", "trio"))


class _Memory:
    """A fresh memory backend; it keeps entries in the instance, so there is no ``reopen``
    (and the suites leave out the tests that need one)."""

    keeps_entries_in_instance = True

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    async def lock(self) -> AsyncIterator[MemoryThreadLock]:
        async with MemoryThreadLock() as backend:
            yield backend


class TestMemoryRegistry(_Memory, RegistryConformance):
    pass


class TestMemoryChains(_Memory, ChainConformance):
    pass


# -- bounded state (issue 18 item 6): the memory backend's registry and chains expire ----------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _clocked(**options: float) -> tuple[MemoryThreadLock, _Clock]:
    lock = MemoryThreadLock(**options)
    clock = _Clock()
    lock._clock = clock
    return lock, clock


def _record(key: str, run_id: str) -> RunRecord:
    return RunRecord(key, "response", run_id, key, 0.0, 1, "worker")


@pytest.mark.anyio
async def test_memory_registry_is_dropped_registry_ttl_after_its_last_track_run() -> None:
    lock, clock = _clocked(registry_ttl=600.0)
    for n in range(50):  # many keys, each tracked once and never untracked
        await lock.track_run(_record(f"k{n}", f"run{n}"))
    await lock.track_run(_record("busy", "old"))
    clock.now += 400
    await lock.track_run(_record("busy", "new"))  # keeps "busy" for 600 s from now
    clock.now += 250  # 650 s after the first records
    assert await lock.tracked_runs("k0") == []
    assert [r.run_id for r in await lock.tracked_runs()] == ["old", "new"]
    assert set(lock._runs) == {"busy"}  # the state itself is gone, not only hidden
    clock.now += 100
    await lock.track_run(_record("busy", "newest"))  # drops "old", recorded 750 s ago
    assert [r.run_id for r in await lock.tracked_runs("busy")] == ["new", "newest"]


@pytest.mark.anyio
async def test_memory_chain_head_is_dropped_chain_ttl_after_its_last_advance() -> None:
    lock, clock = _clocked(chain_ttl=100.0)
    for n in range(20):
        lease = await lock.acquire(f"c{n}", ttl=30.0)
        assert await lock.advance_chain(lease, None, f"resp{n}")
        assert await lock.release(lease)
    clock.now += 99
    assert await lock.chain_head("c0") == "resp0"
    clock.now += 2
    assert await lock.chain_head("c0") is None
    lease = await lock.acquire("c1", ttl=30.0)
    assert await lock.advance_chain(lease, None, "fresh")  # expired: starts a new chain
    assert await lock.release(lease)
    clock.now += 10  # the sweep of every key is amortised: one pass per chain_ttl / 16
    assert await lock.chain_head("c1") == "fresh"
    assert set(lock._chains) == {"c1"}  # the state itself is gone, not only hidden


def test_memory_registry_ttl_is_checked_as_on_redis() -> None:
    with pytest.raises(ValueError, match="registry_ttl"):
        MemoryThreadLock(registry_ttl=60.0)
    with pytest.raises(ValueError, match="chain_ttl"):
        MemoryThreadLock(chain_ttl=0)
