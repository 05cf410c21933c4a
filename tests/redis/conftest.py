"""Fixtures for the Redis backend tests: private redis-server processes, fresh prefixes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from _servers.redis_server import RedisServer
from threadlock.backends.redis import RedisThreadLock


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server shared by the tests that do not restart or kill it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own, which it may kill and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return f"tl-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client does not run on trio


@pytest.fixture
async def redis_lock(redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        yield lock
