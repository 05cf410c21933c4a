"""The run registry and the chain heads on Postgres: their tables, and the upgrade from schema
version 1.

What every registry and chain store must do is checked by RegistryConformance and
ChainConformance (test_postgres_conformance.py); this module keeps what only Postgres has.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from threadlock import BackendError, ThreadBusy
from threadlock.backends.postgres import SCHEMA_VERSION, PostgresThreadLock
from threadlock.testing.registry_conformance import run_record

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
WORKER = HERE / "_pg_worker.py"
V1_SQL = HERE / "postgres_schema_v1.sql"


async def _query(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query.encode(), params)
        return await cur.fetchall() if cur.description else []


async def test_registry_tables_stay_logged_with_unlogged_leases(pg_dsn: str, pg_table: str) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, unlogged=True) as lock:
        await lock.create_schema()
    rows = await _query(
        pg_dsn,
        "SELECT relname, relpersistence FROM pg_class WHERE relname LIKE %s AND relkind = 'r'",
        (f"{pg_table}%",),
    )
    assert dict(rows) == {
        pg_table: "u",
        f"{pg_table}_waiters": "u",
        f"{pg_table}_runs": "p",
        f"{pg_table}_chains": "p",
        f"{pg_table}_inbox": "p",
        f"{pg_table}_inbox_dead": "p",
    }


# -- upgrading from schema version 1 ---------------------------------------------------------


def _v1_statements() -> list[str]:
    text = V1_SQL.read_text(encoding="utf-8")
    statements = []
    for chunk in re.split(r"^--;$", text, flags=re.MULTILINE):
        lines = chunk.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        if lines:
            statements.append("\n".join(lines))
    return statements


async def _install_v1(dsn: str, table: str) -> None:
    """What threadlock with schema version 1 installed (public schema, logged tables)."""
    lockclass = zlib.crc32(table.encode())
    lockclass = lockclass - (1 << 32) if lockclass >= 1 << 31 else lockclass
    names = {
        "leases": sql.Identifier(table),
        "waiters": sql.Identifier(f"{table}_waiters"),
        "fence_seq": sql.Identifier(f"{table}_fence_seq"),
        "fence_seq_name": sql.Literal(f'"public"."{table}_fence_seq"'),
        "grant_next": sql.Identifier(f"{table}_grant_next"),
        "settle": sql.Identifier(f"{table}_settle"),
        "sweep": sql.Identifier(f"{table}_sweep"),
        "acquire": sql.Identifier(f"{table}_acquire"),
        "release": sql.Identifier(f"{table}_release"),
        "extend": sql.Identifier(f"{table}_extend"),
        "channel": sql.Literal(f"{table}_grants"),
        "lockclass": sql.SQL(str(lockclass)),
        "unlogged": sql.SQL(""),
    }
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS threadlock_schema_version (table_name text PRIMARY"
                " KEY, version integer NOT NULL, unlogged boolean NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            )
            for statement in _v1_statements():
                await conn.execute(sql.SQL(statement).format(**names))  # type: ignore[arg-type]
            await conn.execute(
                "INSERT INTO threadlock_schema_version (table_name, version, unlogged)"
                " VALUES (%s, 1, false)",
                (table,),
            )


async def _v1_acquire(dsn: str, table: str, key: str, token: str) -> tuple[object, ...]:
    query = sql.SQL("SELECT * FROM {}(%s, %s, '', 'v1-client', 60.0, 5.0, false, NULL)").format(
        sql.Identifier(f"{table}_acquire")
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, (key, token))
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)


async def _v1_release(dsn: str, table: str, key: str, token: str) -> bool:
    query = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(f"{table}_release"))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, (key, token))
        row = await cur.fetchone()
        assert row is not None
        return bool(row[0])


async def test_version_1_schema_is_upgraded_in_place(pg_dsn: str, pg_table: str) -> None:
    await _install_v1(pg_dsn, pg_table)
    granted = await _v1_acquire(pg_dsn, pg_table, "kept", "v1-token")
    assert granted[0] == "granted"
    v1_fence = int(granted[1])  # type: ignore[call-overload]
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        # Before the upgrade the new entry points are missing: a clear error.
        with pytest.raises(BackendError, match="create_schema"):
            await lock.tracked_runs()
        await lock.create_schema()
        await lock.create_schema()  # idempotent
        # The lease taken through version 1 is intact and still excludes.
        info = await lock.inspect("kept")
        assert info is not None
        assert info.fence == v1_fence
        assert info.owner == "v1-client"
        assert info.run_id is None
        with pytest.raises(ThreadBusy):
            await lock.acquire("kept", ttl=5.0, timeout=0)
        # The registry and chain heads work; fences keep rising.
        await lock.track_run(run_record("kept", "run_1", time.time(), fence=v1_fence))
        info = await lock.inspect("kept")
        assert info is not None
        assert info.run_id == "run_1"
        lease = await lock.acquire("chain", ttl=30.0)
        assert lease.fence > v1_fence
        assert await lock.advance_chain(lease, None, "resp_1")
        assert await lock.release(lease)
        # A process still running version 1 keeps working during a rolling upgrade.
        assert await _v1_release(pg_dsn, pg_table, "kept", "v1-token")
        assert await lock.inspect("kept") is None
        again = await _v1_acquire(pg_dsn, pg_table, "kept", "v1-again")
        assert again[0] == "granted"
        assert int(again[1]) > lease.fence  # type: ignore[call-overload]
        with pytest.raises(ThreadBusy):
            await lock.acquire("kept", ttl=5.0, timeout=0)
        assert await _v1_release(pg_dsn, pg_table, "kept", "v1-again")
    rows = await _query(
        pg_dsn,
        "SELECT version, unlogged FROM threadlock_schema_version WHERE table_name = %s",
        (pg_table,),
    )
    assert rows == [(SCHEMA_VERSION, False)]


async def test_version_1_upgrade_raced_from_four_processes(pg_dsn: str, pg_table: str) -> None:
    await _install_v1(pg_dsn, pg_table)
    held = await _v1_acquire(pg_dsn, pg_table, "kept", "v1-token")
    start_at = time.time() + 1.5  # all four start their upgrade at the same moment
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "schema", pg_dsn, pg_table, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        info = await lock.inspect("kept")
        assert info is not None
        assert info.fence == held[1]
        assert await lock.tracked_runs() == []
    rows = await _query(
        pg_dsn, "SELECT version FROM threadlock_schema_version WHERE table_name = %s", (pg_table,)
    )
    assert rows == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused(pg_dsn: str, pg_table: str) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        await _query(
            pg_dsn,
            "UPDATE threadlock_schema_version SET version = %s WHERE table_name = %s",
            (SCHEMA_VERSION + 1, pg_table),
        )
        with pytest.raises(BackendError, match="newer"):
            await lock.create_schema()
