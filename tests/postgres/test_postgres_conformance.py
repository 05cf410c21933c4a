"""The Postgres backend through the conformance suites (lock, run registry, chain heads);
asyncio: psycopg's async connections run on asyncio only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from tests.conftest import postgres_lock

from threadlock.backends.postgres import PostgresThreadLock
from threadlock.testing import BackendConformance, ChainConformance, RegistryConformance


class TestPostgresConformance(BackendConformance):
    @pytest.fixture
    async def lock(self, pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
        # grace=30: the heartbeat re-check (grace/3) stays far beyond handoff_bound, so the
        # hand-off tests see the notification path, not the fallback.
        async with postgres_lock(pg_dsn, pg_table, max_size=20, grace=30.0) as backend:
            yield backend


class _Postgres:
    """A fresh table per test; ``reopen`` is another instance on the same table."""

    @pytest.fixture
    async def lock(self, pg_lock: PostgresThreadLock) -> PostgresThreadLock:
        return pg_lock

    @pytest.fixture
    def reopen(self, pg_dsn: str, pg_table: str) -> Callable[[], PostgresThreadLock]:
        return lambda: PostgresThreadLock.from_url(pg_dsn, table=pg_table)


class TestPostgresRegistry(_Postgres, RegistryConformance):
    pass


class TestPostgresChains(_Postgres, ChainConformance):
    pass
