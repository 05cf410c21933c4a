"""The Redis backend through the conformance suites (lock, run registry, chain heads), on a
private server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from threadlock.backends.redis import RedisThreadLock
from threadlock.testing import BackendConformance, ChainConformance, RegistryConformance


class TestRedisConformance(BackendConformance):
    @pytest.fixture
    async def lock(self, redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
            yield backend


class _Redis:
    """A fresh prefix per test; ``reopen`` is another instance on the same prefix."""

    @pytest.fixture
    async def lock(self, redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
            yield backend

    @pytest.fixture
    def reopen(self, redis_url: str, prefix: str) -> Callable[[], RedisThreadLock]:
        return lambda: RedisThreadLock.from_url(redis_url, prefix=prefix)


class TestRedisRegistry(_Redis, RegistryConformance):
    pass


class TestRedisChains(_Redis, ChainConformance):
    pass
