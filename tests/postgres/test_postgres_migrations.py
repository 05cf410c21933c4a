"""The numbered Postgres migrations: what a fresh schema holds, and what an upgrade retires."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from threadlock.backends.postgres import SCHEMA_VERSION, PostgresThreadLock
from threadlock.backends.postgres.schema import MIGRATIONS

CURRENT_FUNCTIONS = {
    ("_grant_head_waiter", 3),
    ("_sweep", 1),
    ("_acquire", 9),
    ("_release", 4),
    ("_extend", 3),
    ("_advance_chain", 4),
}


async def _functions(dsn: str, table: str) -> set[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT p.proname, p.pronargs FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND starts_with(p.proname, %s)",
            (table + "_",),
        )
        return {(str(name)[len(table) :], int(nargs)) for name, nargs in await cur.fetchall()}


def test_migrations_are_numbered_from_one_and_the_last_is_the_version() -> None:
    assert [number for number, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1][0] == SCHEMA_VERSION


@pytest.mark.anyio
async def test_a_fresh_schema_has_only_the_current_functions(pg_dsn: str, pg_table: str) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        assert await _functions(pg_dsn, pg_table) == CURRENT_FUNCTIONS
        lease = await lock.acquire("k", ttl=30.0)
        assert await lock.release(lease)


@pytest.mark.anyio
async def test_a_version_2_schema_upgrades_and_drops_the_retired_helpers(
    pg_dsn: str, pg_table: str
) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        held = await lock.acquire("kept", ttl=60.0)
        # What version 2 also had: these helper names.
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            for suffix, args in (
                ("_hand_on", "p_key text, p_now timestamptz, p_local text"),
                ("_grant_next", "p_key text, p_now timestamptz"),
                ("_settle", "p_key text, p_now timestamptz"),
            ):
                await conn.execute(
                    sql.SQL(
                        "CREATE FUNCTION {}(" + args + ") RETURNS void LANGUAGE sql AS $$ $$"
                    ).format(sql.Identifier(pg_table + suffix))
                )
            await conn.execute(
                "UPDATE threadlock_schema_version SET version = 2 WHERE table_name = %s",
                (pg_table,),
            )
        assert len(await _functions(pg_dsn, pg_table)) == len(CURRENT_FUNCTIONS) + 3
        await lock.create_schema()
        assert await _functions(pg_dsn, pg_table) == CURRENT_FUNCTIONS
        info = await lock.inspect("kept")
        assert info is not None
        assert info.fence == held.fence
        assert await lock.release(held)
        again = await lock.acquire("kept", ttl=5.0)
        assert again.fence > held.fence
        assert await lock.release(again)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT version FROM threadlock_schema_version WHERE table_name = %s", (pg_table,)
        )
        assert await cur.fetchall() == [(SCHEMA_VERSION,)]
