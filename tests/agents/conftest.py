"""Fixtures for the Agents SDK tests: the real ``openai-agents`` package against FakeOpenAI.

The SDK runs on asyncio only. Its tracing is switched off (it would export to OpenAI).
``fake_http`` serves a FakeOpenAI over HTTP on 127.0.0.1 for workers in other processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.sync.conftest import _asgi_app

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
    import uvicorn

    fake = FakeOpenAI(response_duration=1.0)
    config = uvicorn.Config(
        _asgi_app(fake), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-openai-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the FakeOpenAI server did not start"
        assert time.monotonic() < deadline, "the FakeOpenAI server did not start in time"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
