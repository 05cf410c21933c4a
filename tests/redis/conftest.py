"""Fixtures for the Redis backend tests (the servers and prefixes are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock.backends.redis import RedisThreadLock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client does not run on trio


@pytest.fixture
async def redis_lock(redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        yield lock
