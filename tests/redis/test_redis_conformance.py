"""The Redis backend through the whole conformance suite, on a private server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock.backends.redis import RedisThreadLock
from threadlock.testing import BackendConformance


class TestRedisConformance(BackendConformance):
    @pytest.fixture
    async def lock(self, redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
            yield backend
