"""Fixtures for the Postgres tests (the cluster and the per-test table are in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.conftest import postgres_lock

from threadlock.backends.postgres import PostgresThreadLock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def pg_lock(pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
    async with postgres_lock(pg_dsn, pg_table, grace=1.0) as lock:
        yield lock
