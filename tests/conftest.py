"""Shared test configuration, and the private-server fixtures every folder can reach.

The servers start on first use only (a memory-only run starts none). Where ``redis-server``
or the Postgres binaries are missing the tests that need them skip with the reason; under
``CI=true`` they fail instead, so a CI image without a server cannot pass silently.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from tests._servers.postgres_server import PostgresServer, ServerUnavailable
from tests._servers.redis_server import RedisServer

from threadlock.backends.postgres import PostgresThreadLock

pytest_plugins = ["pytester"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Collect garbage once a test's fixtures (module- and session-scoped ones included) are
    torn down, so a ResourceWarning (an unclosed connection; any warning is an error here) is
    reported by the test that leaked it, not by whichever test the collector runs in later.

    What survives that collection is alive, so it is frozen (``gc.freeze``): the next test's
    collection then walks only the objects made since, not the whole heap of imported SDKs
    (a full walk cost about 0.1-0.3 s of CPU per test, minutes over the suite). A frozen object
    that later becomes cyclic garbage can only be a class-, module- or session-scoped one, so
    where the next test has another parent (or there is none) everything is unfrozen and
    collected again, in the teardown that tore those fixtures down. (``gc.get_referrers``
    does not see frozen objects, so nothing is left frozen after the last test.)"""
    try:
        return (yield)
    finally:
        if nextitem is None or nextitem.parent is not item.parent:
            gc.unfreeze()
        gc.collect()
        if nextitem is not None:  # nothing stays frozen after the last test
            gc.freeze()


# -- Redis ------------------------------------------------------------------------------------


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
    """A fresh Redis key prefix, so every test starts from an empty backend."""
    return f"tl-test-{uuid.uuid4().hex[:12]}"


# -- Postgres: ONE throwaway cluster per session, one table per test -------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the Postgres tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.create()
    except ServerUnavailable as error:
        _unavailable(str(error))
        raise  # unreachable
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PostgresServer) -> str:
    return pg_server.dsn


@pytest.fixture
def pg_table() -> str:
    """A fresh table name, so every test starts from an empty backend."""
    return f"tl_{uuid.uuid4().hex[:16]}"


@asynccontextmanager
async def postgres_lock(dsn: str, table: str, **options: Any) -> AsyncIterator[PostgresThreadLock]:
    """A ``PostgresThreadLock`` on ``table`` with its schema created, closed on exit."""
    lock = PostgresThreadLock.from_url(dsn, table=table, **options)
    await lock.create_schema()
    try:
        yield lock
    finally:
        await lock.aclose()
