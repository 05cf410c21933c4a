"""The Postgres backend through the inbox conformance suite (two instances on one table, as
two workers), plus what is particular to Postgres: the messages are rows of the table that
``create_schema()`` made, and keys, ids and payloads are bound parameters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from tests.conftest import postgres_lock

from threadlock import Inbox
from threadlock.backends.postgres import PostgresThreadLock
from threadlock.testing import InboxRecoveryConformance

ODD = "{a}b} ' \" ]] -- $$ $threadlock$ \\ % käse 🧀; DROP TABLE x; --"


class TestPostgresInbox(InboxRecoveryConformance):
    @pytest.fixture
    async def lock(self, pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
        async with postgres_lock(pg_dsn, pg_table, grace=1.0) as backend:
            yield backend

    @pytest.fixture
    async def other_lock(
        self, lock: PostgresThreadLock, pg_dsn: str, pg_table: str
    ) -> AsyncIterator[PostgresThreadLock]:
        async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=1.0) as backend:
            yield backend


@pytest.mark.anyio
async def test_messages_are_rows_of_the_inbox_table(
    pg_lock: PostgresThreadLock, pg_dsn: str
) -> None:
    inbox = Inbox(pg_lock)
    async with inbox.turns("row-key", "m", id="m1") as turns:
        async for batch in turns:
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
                cur = await conn.execute(f'SELECT key, id, pending FROM "{pg_lock.table}_inbox"')
                assert await cur.fetchall() == [("row-key", "m1", True)]
            assert batch.messages[0].payload == "m"
    assert await inbox.pending("row-key") == []


@pytest.mark.anyio
async def test_odd_keys_ids_and_payloads_are_data(pg_lock: PostgresThreadLock) -> None:
    inbox = Inbox(pg_lock)
    answered = []
    for payload in [ODD, ODD.encode(), {"k": ODD}]:
        async with inbox.turns(ODD, payload, id=ODD + str(len(answered))) as turns:
            async for batch in turns:
                answered.append((batch.messages[0].id, batch.messages[0].payload))
    assert answered == [(ODD + "0", ODD), (ODD + "1", ODD.encode()), (ODD + "2", {"k": ODD})]
    assert await inbox.pending(ODD) == []
