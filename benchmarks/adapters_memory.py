"""In-process adapters: threadlock's memory backend and the in-process baselines.

* ``memory``: ``MemoryThreadLock.acquire`` / ``release`` (the primitives).
* ``memory-hold``: the same backend through ``lock.hold()`` (task group and renewal task),
  which is what applications use.
* ``asyncio-lock``: the baseline of the issue, a ``dict`` of ``asyncio.Lock`` keyed by key
  (asyncio only). Its waiters queue FIFO, but a release only wakes the head waiter, which
  takes the lock when it next runs (no direct hand-off), and the dict is never pruned.
* ``anyio-lock``: a ``dict`` of ``anyio.Lock``, for reference on trio too.
* ``memory-lease-floor``: the floor of any acquire that returns a fenced lease: the
  ``asyncio-lock`` pair plus building one :class:`threadlock.Lease` (a token, a fence, two
  clock reads) per acquire, and nothing else (no validation, no observer, no expiry). Issue
  14's "S1 >= 0.5x a dict of asyncio.Locks" is measured beside it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from benchmarks.adapter import AdapterConfig, Capabilities, register_adapter
from benchmarks.targets import Ref, Target, register_targets
from threadlock import Lease, MemoryThreadLock

__all__ = [
    "AnyioLockAdapter",
    "AsyncioLockAdapter",
    "LeaseFloorAdapter",
    "MemoryAdapter",
    "MemoryHoldAdapter",
]


class MemoryAdapter:
    name = "memory"
    capabilities = Capabilities(exclusive=True, fifo=True)

    def __init__(self, config: AdapterConfig) -> None:
        self._ttl = float(config.get("memory_ttl", "30") or 30)
        self._lock = MemoryThreadLock()

    async def setup(self) -> None:
        return None

    async def teardown(self) -> None:
        await self._lock.aclose()

    async def acquire(self, key: str) -> Lease:
        return await self._lock.acquire(key, ttl=self._ttl, timeout=None)

    async def release(self, handle: Lease) -> None:
        await self._lock.release(handle)


class MemoryHoldAdapter:
    name = "memory-hold"
    capabilities = Capabilities(exclusive=True, fifo=True)

    def __init__(self, config: AdapterConfig) -> None:
        self._ttl = float(config.get("memory_ttl", "30") or 30)
        self._lock = MemoryThreadLock()

    async def setup(self) -> None:
        return None

    async def teardown(self) -> None:
        await self._lock.aclose()

    async def acquire(self, key: str) -> AbstractAsyncContextManager[Lease]:
        cm = self._lock.hold(key, ttl=self._ttl, timeout=None)
        await cm.__aenter__()
        return cm

    async def release(self, handle: AbstractAsyncContextManager[Lease]) -> None:
        await handle.__aexit__(None, None, None)


class _DictOfLocksAdapter:
    """One in-process lock per key, made by ``make_lock`` (the baselines)."""

    name = ""
    capabilities = Capabilities()

    def __init__(self, config: AdapterConfig) -> None:
        self._locks: dict[str, Any] = {}

    def make_lock(self) -> Any:
        raise NotImplementedError

    async def setup(self) -> None:
        return None

    async def teardown(self) -> None:
        self._locks.clear()

    async def acquire(self, key: str) -> Any:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = self.make_lock()
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        handle.release()


class AsyncioLockAdapter(_DictOfLocksAdapter):
    name = "asyncio-lock"
    capabilities = Capabilities(exclusive=True, fifo=False, loops=frozenset({"asyncio"}))

    def make_lock(self) -> asyncio.Lock:
        return asyncio.Lock()


class LeaseFloorAdapter(_DictOfLocksAdapter):
    name = "memory-lease-floor"
    capabilities = Capabilities(exclusive=True, fifo=False, loops=frozenset({"asyncio"}))

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self._ttl = float(config.get("memory_ttl", "30") or 30)
        self._fences = itertools.count(1)

    def make_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def acquire(self, key: str) -> tuple[asyncio.Lock, Lease]:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = self.make_lock()
        await lock.acquire()
        fence = next(self._fences)
        now = time.time()
        time.monotonic()  # the backend reads both clocks: wall for the lease, monotonic for expiry
        lease = Lease(key, f"t{fence}", fence, self._ttl, now, now + self._ttl)
        return lock, lease

    async def release(self, handle: tuple[asyncio.Lock, Lease]) -> None:
        handle[0].release()


class AnyioLockAdapter(_DictOfLocksAdapter):
    name = "anyio-lock"
    capabilities = Capabilities(exclusive=True, fifo=True)

    def make_lock(self) -> anyio.Lock:
        return anyio.Lock()


register_adapter("memory", MemoryAdapter, description="MemoryThreadLock acquire/release")
register_adapter("memory-hold", MemoryHoldAdapter, description="MemoryThreadLock via hold()")
register_adapter("asyncio-lock", AsyncioLockAdapter, description="dict of asyncio.Lock")
register_adapter("anyio-lock", AnyioLockAdapter, description="dict of anyio.Lock")
register_adapter(
    "memory-lease-floor",
    LeaseFloorAdapter,
    description="floor: dict of asyncio.Lock + one Lease built per acquire",
)

#: The memory backend's goals from issue 2, against the asyncio.Lock baseline.
BASELINE = Ref("asyncio-lock")
register_targets(
    Target("memory", "S1", "pairs_per_s", ">=", 0.2, ref=BASELINE),
    Target("memory", "S2", "handoff_p99_us", "<", 100.0),
    Target("memory", "S2", "self_reacquire_pct", "<=", 0.0),
    Target("memory", "S3", "inversions", "<=", 0.0),
    Target("memory", "S3", "drain_ms", "<=", 1.3, ref=BASELINE),
)
