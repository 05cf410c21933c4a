"""Fixtures for the Agents SDK tests: the real ``openai-agents`` package against FakeOpenAI.

The SDK runs on asyncio only. Its tracing is switched off (it would export to OpenAI).
``fake_http`` serves a FakeOpenAI over HTTP on 127.0.0.1 for workers in other processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from tests._servers.fake_openai_http import serve_over_http

from threadlock import MemoryThreadLock, ThreadLock
from threadlock.testing import FakeOpenAI

agents = pytest.importorskip("agents", reason="the agents extra (openai-agents) is not installed")
agents.set_tracing_disabled(True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
async def lock(request: pytest.FixtureRequest) -> AsyncIterator[ThreadLock]:
    if request.param == "memory":
        async with MemoryThreadLock() as memory:
            yield memory
    else:
        from threadlock.backends.redis import RedisThreadLock

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
        async with RedisThreadLock.from_url(url, prefix=prefix) as redis:
            yield redis


@pytest.fixture
def fake_http() -> Iterator[tuple[FakeOpenAI, str]]:
    """A FakeOpenAI (1 s per response) served by uvicorn; yields it and its base URL."""
    fake = FakeOpenAI(response_duration=1.0)
    with serve_over_http(fake) as url:
        yield fake, url
