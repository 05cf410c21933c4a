"""The guard and recovery tests run once per backend: memory (asyncio and trio), Redis and
Postgres (asyncio: their clients run on asyncio only). Every test gets a fresh, empty ``lock``;
the Redis and Postgres cases start their private servers (tests/conftest.py) on first use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
from tests.conftest import postgres_lock

from threadlock import MemoryThreadLock, ThreadLock
from threadlock.testing import FakeOpenAI

CASES = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("redis", "asyncio"), id="redis"),
    pytest.param(("postgres", "asyncio"), id="postgres"),
]


@pytest.fixture(params=CASES)
def backend_case(request: pytest.FixtureRequest) -> tuple[str, str]:
    case: tuple[str, str] = request.param
    return case


@pytest.fixture
def anyio_backend(backend_case: tuple[str, str]) -> str:
    return backend_case[1]


@contextlib.asynccontextmanager
async def _instance(name: str, request: pytest.FixtureRequest) -> AsyncIterator[ThreadLock]:
    """A Redis or Postgres instance on the test's store (another one each time it is called)."""
    if name == "redis":
        from threadlock.backends.redis import RedisThreadLock

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
        async with RedisThreadLock.from_url(url, prefix=prefix) as redis:
            yield redis
    else:
        dsn, table = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_table")
        async with postgres_lock(dsn, table, max_size=20) as postgres:
            yield postgres


@pytest.fixture
async def lock(
    backend_case: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[ThreadLock]:
    name = backend_case[0]
    if name == "memory":
        async with MemoryThreadLock() as memory:
            yield memory
    else:
        async with _instance(name, request) as instance:
            yield instance


@pytest.fixture
def reopen(
    backend_case: tuple[str, str], request: pytest.FixtureRequest, lock: ThreadLock
) -> Callable[[], AbstractAsyncContextManager[ThreadLock]]:
    """``async with reopen() as other``: another instance on ``lock``'s store, as a new
    process would open (the memory backend's store is its instance: there, ``lock`` itself)."""

    @contextlib.asynccontextmanager
    async def other() -> AsyncIterator[ThreadLock]:
        if backend_case[0] == "memory":
            yield lock
        else:
            async with _instance(backend_case[0], request) as instance:
                yield instance

    return other


@pytest.fixture(scope="session", autouse=True)
def _warm_openai_sdk() -> None:
    """Make one call of each kind through the openai SDK before the timed scenarios.

    The SDK builds its response models (and imports its Assistants types) on first use, which
    takes about a second on a loaded machine; ``test_cancelling_mid_run_releases_the_lock``
    (a 0.3 s window) fails on any backend when it is the first to list runs in the process.
    """

    async def warm() -> None:
        fake = FakeOpenAI(run_duration=0, response_duration=0)
        client = fake.client()
        thread = fake.add_thread()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            await client.beta.threads.messages.create(thread, role="user", content="hi")
            run = await client.beta.threads.runs.create(thread, assistant_id="asst_1")
            await client.beta.threads.runs.list(thread, limit=1)
            await client.beta.threads.runs.retrieve(run.id, thread_id=thread)
        conversation = fake.add_conversation()
        await client.responses.create(model="m", conversation=conversation, input="hi")
        await client.close()

    anyio.run(warm)
