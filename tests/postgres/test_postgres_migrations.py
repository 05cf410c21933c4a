"""The numbered Postgres migrations: what a fresh schema holds, and what an upgrade retires."""

from __future__ import annotations

import anyio
import psycopg
import pytest
from psycopg import sql

from threadlock import Inbox
from threadlock.backends.postgres import SCHEMA_VERSION, PostgresThreadLock
from threadlock.backends.postgres.schema import MIGRATIONS

CURRENT_FUNCTIONS = {
    ("_grant_head_waiter", 3),
    ("_sweep", 1),
    ("_acquire", 9),
    ("_release", 4),
    ("_extend", 3),
    ("_advance_chain", 4),  # schema version 4's signature, a wrapper (rolling upgrades)
    ("_advance_chain", 5),
    ("_inbox_batch", 3),
    ("_inbox_mine", 3),
    ("_inbox_post", 5),
    ("_inbox_take", 3),
    ("_inbox_finish", 5),
    ("_inbox_ack", 3),
    ("_inbox_nack", 5),
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


@pytest.mark.anyio
async def test_a_version_4_schema_upgrades_and_keeps_its_runs_and_chains(
    pg_dsn: str, pg_table: str
) -> None:
    """Migration 5 (issue 18, defect 6): rows of before get a tracked_at and stay readable."""
    runs = sql.Identifier(pg_table + "_runs")
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        lease = await lock.acquire("chain", ttl=60.0)
        assert await lock.advance_chain(lease, None, "resp_1")
        # Back to what version 4 had: no tracked_at, no bound indexes, the 4-argument advance.
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN tracked_at").format(runs))
            await conn.execute(
                sql.SQL("DROP INDEX {}").format(sql.Identifier(pg_table + "_chains_updated"))
            )
            await conn.execute(
                sql.SQL("DROP FUNCTION {}(text, text, text, text, double precision)").format(
                    sql.Identifier(pg_table + "_advance_chain")
                )
            )
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (key, run_id, kind, thread_id, created_at, fence, owner)"
                    " VALUES ('chain', 'run_v4', 'run', 'thread_1', 1.0, 1, 'w')"
                ).format(runs)
            )
            await conn.execute(
                "UPDATE threadlock_schema_version SET version = 4 WHERE table_name = %s",
                (pg_table,),
            )
        await lock.create_schema()
        assert await _functions(pg_dsn, pg_table) == CURRENT_FUNCTIONS
        assert [r.run_id for r in await lock.tracked_runs("chain")] == ["run_v4"]
        assert await lock.chain_head("chain") == "resp_1"
        assert await lock.advance_chain(lease, "resp_1", "resp_2")
        assert await lock.release(lease)
        indexed = await _rows(
            pg_dsn,
            "SELECT t.relname, a.attname FROM pg_index i"
            " JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]"
            " WHERE t.relname IN (%s, %s) AND i.indnatts = 1",
            (pg_table + "_runs", pg_table + "_chains"),
        )
        assert {(pg_table + "_runs", "tracked_at"), (pg_table + "_chains", "updated_at")} <= set(
            indexed
        )


# -- defect 4 of issue 15: the sweep is indexed and off the key's advisory lock --------------


async def _rows(dsn: str, query: str, params: tuple[str, ...]) -> list[tuple[str, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return [tuple(str(value) for value in row) for row in await cur.fetchall()]


@pytest.fixture
async def fresh_schema(pg_dsn: str, pg_table: str) -> str:
    """``pg_table``, with the current schema created."""
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
    return pg_table


@pytest.mark.anyio
async def test_the_columns_the_sweep_scans_are_indexed(pg_dsn: str, fresh_schema: str) -> None:
    table = fresh_schema
    indexed = await _rows(
        pg_dsn,
        "SELECT t.relname, a.attname FROM pg_index i"
        " JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]"
        " WHERE t.relname IN (%s, %s) AND i.indnatts = 1",
        (table, table + "_waiters"),
    )
    assert {(table, "expires_at"), (table + "_waiters", "alive_until")} <= set(indexed)


@pytest.mark.anyio
async def test_the_newest_run_of_a_key_is_found_by_index(pg_dsn: str, fresh_schema: str) -> None:
    # Every busy answer and inspect reads the key's newest tracked run (ORDER BY seq DESC
    # LIMIT 1): one index probe, not a read of all the key's runs (issue 15, defect 6).
    rows = await _rows(
        pg_dsn, "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (fresh_schema + "_runs",)
    )
    assert any(definition.endswith("(key, seq)") for (definition,) in rows), rows


@pytest.mark.anyio
async def test_the_acquire_function_no_longer_sweeps_under_the_key_lock(
    pg_dsn: str, fresh_schema: str
) -> None:
    ((body,),) = await _rows(
        pg_dsn, "SELECT pg_get_functiondef(%s::regproc)", (f'"{fresh_schema}_acquire"',)
    )
    assert "pg_advisory_xact_lock" in body
    assert f"{fresh_schema}_sweep" not in body


@pytest.mark.anyio
async def test_expired_leases_and_dead_waiters_of_idle_keys_are_still_swept(
    pg_dsn: str, pg_table: str
) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        for index in range(8):
            await lock.acquire(f"stale{index}", ttl=0.05)  # never released: they expire
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (key, seq, token, wid, owner, ttl, grace, enqueued_at,"
                    " alive_until) VALUES ('dead', 1, 't', 'w', 'o', 1, 1, now(), now())"
                ).format(sql.Identifier(pg_table + "_waiters"))
            )
            await anyio.sleep(0.1)
            for index in range(64):  # uncontended acquires of other keys
                assert await lock.release(await lock.acquire(f"busy{index}", ttl=30.0))
            with anyio.fail_after(10):  # the sweep runs beside the acquires, not in them
                while True:
                    cur = await conn.execute(
                        sql.SQL(
                            "SELECT (SELECT count(*) FROM {}) + (SELECT count(*) FROM {})"
                        ).format(sql.Identifier(pg_table), sql.Identifier(pg_table + "_waiters"))
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    if row[0] == 0:
                        break
                    await anyio.sleep(0.02)


# -- migration 6 (issue 11): the inbox tables -------------------------------------------------


@pytest.mark.anyio
async def test_a_version_5_schema_gains_the_inbox_and_keeps_its_leases(
    pg_dsn: str, pg_table: str
) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        held = await lock.acquire("kept", ttl=60.0)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            for suffix in ("_inbox", "_inbox_dead"):
                await conn.execute(
                    sql.SQL("DROP TABLE {}").format(sql.Identifier(pg_table + suffix))
                )
            await conn.execute(
                sql.SQL("DROP SEQUENCE {}").format(sql.Identifier(pg_table + "_inbox_seq"))
            )
            await conn.execute(
                "UPDATE threadlock_schema_version SET version = 5 WHERE table_name = %s",
                (pg_table,),
            )
        await lock.create_schema()
        info = await lock.inspect("kept")
        assert info is not None
        assert info.fence == held.fence
        inbox = Inbox(lock)
        async with inbox.turns("k", "after the upgrade") as turns:
            answered = [m.payload async for batch in turns for m in batch.messages]
        assert answered == ["after the upgrade"]
        assert await lock.release(held)
    rows = await _rows(
        pg_dsn,
        "SELECT version FROM threadlock_schema_version WHERE table_name = %s",
        (pg_table,),
    )
    assert rows == [(str(SCHEMA_VERSION),)]
    assert SCHEMA_VERSION == 6


@pytest.mark.anyio
async def test_the_inbox_release_boundary_calls_the_release_function(
    pg_dsn: str, fresh_schema: str
) -> None:
    ((body,),) = await _rows(
        pg_dsn, "SELECT pg_get_functiondef(%s::regproc)", (f'"{fresh_schema}_inbox_finish"',)
    )
    assert f"{fresh_schema}_release" in body
    assert "DELETE FROM" not in body  # the lease row is deleted by the release function only


@pytest.mark.anyio
async def test_the_inbox_tables_are_logged_even_when_the_leases_are_not(
    pg_dsn: str, pg_table: str
) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, unlogged=True) as lock:
        await lock.create_schema()
    rows = await _rows(
        pg_dsn,
        "SELECT relname, relpersistence FROM pg_class WHERE relname IN (%s, %s, %s)",
        (pg_table, pg_table + "_inbox", pg_table + "_inbox_dead"),
    )
    assert dict(rows) == {pg_table: "u", pg_table + "_inbox": "p", pg_table + "_inbox_dead": "p"}
