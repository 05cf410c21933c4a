"""Fixtures for the Postgres tests: ONE throwaway cluster per session, one table per test.

Where the server binaries are missing the tests skip with the reason; under ``CI=true`` they
fail instead, so a CI image without Postgres cannot pass silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from tests._servers.postgres_server import PostgresServer, ServerUnavailable

from threadlock.backends.postgres import PostgresThreadLock


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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pg_lock(pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
    lock = PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=1.0)
    await lock.create_schema()
    try:
        yield lock
    finally:
        await lock.aclose()
