"""The Postgres backend through the whole conformance suite (asyncio: psycopg's async
connections run on asyncio only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from threadlock.backends.postgres import PostgresThreadLock
from threadlock.testing import BackendConformance


class TestPostgresConformance(BackendConformance):
    @pytest.fixture
    async def lock(self, pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
        # grace=30: the heartbeat re-check (grace/3) stays far beyond handoff_bound, so the
        # hand-off tests see the notification path, not the fallback.
        backend = PostgresThreadLock.from_url(pg_dsn, table=pg_table, max_size=20, grace=30.0)
        await backend.create_schema()
        try:
            yield backend
        finally:
            await backend.aclose()
