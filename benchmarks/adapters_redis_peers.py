"""Redis lock libraries compared with threadlock (benchmark-only dev dependencies).

* ``python-redis-lock``: ``redis_lock.Lock`` (sync; run in a worker thread per call).
* ``pottery-redlock``: pottery's ``AIORedlock`` with one master.

Same server as ``adapters_redis.py`` (``--redis-url`` or a private one).
"""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio as aioredis
import redis_lock
from pottery import AIORedlock

import redis
from benchmarks.adapter import AdapterConfig, register_adapter
from benchmarks.adapters_redis import TTL, prefix, redis_url
from benchmarks.redis_commands import RedisCapabilities

__all__ = ["PotteryAdapter", "PythonRedisLockAdapter"]


class PythonRedisLockAdapter:
    name = "python-redis-lock"
    # One worker thread per waiting caller: bounded by anyio's default thread limiter.
    capabilities = RedisCapabilities(exclusive=True, fifo=False, max_tasks=32)

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._prefix = prefix(config, self.name)
        self._client: redis.Redis | None = None

    async def setup(self) -> None:
        self._client = redis.Redis.from_url(redis_url(self._config), max_connections=64)
        await anyio.to_thread.run_sync(self._client.ping)

    async def teardown(self) -> None:
        if self._client is not None:
            self._client.close()

    async def acquire(self, key: str) -> Any:
        lock = redis_lock.Lock(self._client, f"{self._prefix}:{key}", expire=int(TTL))
        await anyio.to_thread.run_sync(lock.acquire)
        return lock

    async def release(self, handle: Any) -> None:
        await anyio.to_thread.run_sync(handle.release)


class PotteryAdapter:
    name = "pottery-redlock"
    capabilities = RedisCapabilities(exclusive=True, fifo=False, loops=frozenset({"asyncio"}))

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._prefix = prefix(config, self.name)
        self._client: aioredis.Redis | None = None

    async def setup(self) -> None:
        self._client = aioredis.Redis.from_url(redis_url(self._config))
        await self._client.ping()

    async def teardown(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def acquire(self, key: str) -> Any:
        lock = AIORedlock(
            key=f"{self._prefix}:{key}",
            masters={self._client},
            auto_release_time=TTL,
        )
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        await handle.release()


register_adapter("python-redis-lock", PythonRedisLockAdapter, description="redis_lock.Lock")
register_adapter("pottery-redlock", PotteryAdapter, description="pottery AIORedlock, 1 master")
