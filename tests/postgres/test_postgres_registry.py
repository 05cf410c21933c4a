"""The run registry and the chain heads on Postgres, and the upgrade from schema version 1."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

from threadlock import BackendError, Lease, ThreadBusy
from threadlock.backends.postgres import SCHEMA_VERSION, PostgresThreadLock
from threadlock.protocol import ChainStore, RunRecord, RunRegistry

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
WORKER = HERE / "_pg_worker.py"
V1_SQL = HERE / "postgres_schema_v1.sql"


def _record(key: str, run_id: str, created_at: float, **changes: object) -> RunRecord:
    fields: dict[str, object] = {
        "key": key,
        "kind": "run",
        "run_id": run_id,
        "thread_id": key,
        "created_at": created_at,
        "fence": 7,
        "owner": "host:1:task",
    }
    fields.update(changes)
    return RunRecord(**fields)  # type: ignore[arg-type]


async def _query(dsn: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query.encode(), params)
        return await cur.fetchall() if cur.description else []


async def test_is_a_run_registry_and_chain_store(pg_lock: PostgresThreadLock) -> None:
    assert isinstance(pg_lock, RunRegistry)
    assert isinstance(pg_lock, ChainStore)


async def test_registry_round_trip_across_two_instances(pg_dsn: str, pg_table: str) -> None:
    async with (
        PostgresThreadLock.from_url(pg_dsn, table=pg_table) as one,
        PostgresThreadLock.from_url(pg_dsn, table=pg_table) as two,
    ):
        await one.create_schema()
        first = _record("thread_a", "run_1", 100.0)
        second = _record("thread_a", "run_2", 50.0, kind="response", thread_id="conv_a")
        other = _record("thread_b", "run_3", 75.0, fence=9, owner="elsewhere")
        for record in (first, second, other):
            await one.track_run(record)
        # Per key: in the order recorded. All keys: oldest created_at first.
        assert await two.tracked_runs("thread_a") == [first, second]
        assert await two.tracked_runs() == [second, other, first]
        assert await two.tracked_runs("nothing") == []
        # Recording the same key and run id again replaces it and keeps its place.
        again = _record("thread_a", "run_1", 100.0, fence=8, owner="retry")
        await two.track_run(again)
        assert await one.tracked_runs("thread_a") == [again, second]
        await two.untrack_run("thread_a", "run_1")
        await two.untrack_run("thread_a", "run_1")  # missing: not an error
        await two.untrack_run("thread_zzz", "run_1")
        assert await one.tracked_runs() == [second, other]
        await one.untrack_run("thread_a", "run_2")
        await one.untrack_run("thread_b", "run_3")
        assert await two.tracked_runs() == []


async def test_registry_and_chain_heads_survive_a_new_instance(pg_dsn: str, pg_table: str) -> None:
    record = _record("thread_a", "run_1", time.time())
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as first:
        await first.create_schema()
        await first.track_run(record)
        lease = await first.acquire("chain-1", ttl=30.0)
        assert await first.advance_chain(lease, None, "resp_1")
        # Closed without releasing or untracking, as a crashed process would leave it.
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as fresh:
        assert await fresh.tracked_runs() == [record]
        assert await fresh.chain_head("chain-1") == "resp_1"


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
    }


async def test_registry_and_chain_arguments_are_checked(pg_lock: PostgresThreadLock) -> None:
    lease = await pg_lock.acquire("k", ttl=30.0)
    with pytest.raises(TypeError, match="record"):
        await pg_lock.track_run(("k", "run", "r"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        await pg_lock.untrack_run("", "run_1")
    with pytest.raises(ValueError, match="run_id"):
        await pg_lock.untrack_run("k", "")
    with pytest.raises(TypeError, match="run_id"):
        await pg_lock.untrack_run("k", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        await pg_lock.tracked_runs("a\x00b")
    with pytest.raises(ValueError, match="key"):
        await pg_lock.chain_head("")
    with pytest.raises(TypeError, match="lease"):
        await pg_lock.advance_chain("k", None, "resp_1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="new"):
        await pg_lock.advance_chain(lease, None, "")
    assert await pg_lock.chain_head("k") is None  # nothing was written
    assert await pg_lock.release(lease)
    await pg_lock.aclose()
    with pytest.raises(BackendError, match="closed"):
        await pg_lock.tracked_runs()
    with pytest.raises(BackendError, match="closed"):
        await pg_lock.chain_head("k")


async def test_advance_chain_is_compare_and_set_under_the_lease(
    pg_lock: PostgresThreadLock,
) -> None:
    lease = await pg_lock.acquire("chain", ttl=30.0)
    assert await pg_lock.chain_head("chain") is None
    assert await pg_lock.advance_chain(lease, None, "resp_1")
    assert not await pg_lock.advance_chain(lease, None, "resp_x")  # the head is no longer None
    assert not await pg_lock.advance_chain(lease, "resp_0", "resp_x")  # moved head
    assert await pg_lock.advance_chain(lease, "resp_1", "resp_2")
    assert await pg_lock.chain_head("chain") == "resp_2"
    # Renewals keep the token: the renewed lease still advances.
    lease = await pg_lock.extend(lease)
    assert await pg_lock.advance_chain(lease, "resp_2", "resp_3")
    assert await pg_lock.release(lease)
    # A released lease is stale, even with the right head.
    assert not await pg_lock.advance_chain(lease, "resp_3", "resp_4")
    assert await pg_lock.chain_head("chain") == "resp_3"


async def test_advance_chain_refuses_an_expired_or_superseded_lease(
    pg_lock: PostgresThreadLock,
) -> None:
    old = await pg_lock.acquire("chain", ttl=0.2)
    assert await pg_lock.advance_chain(old, None, "resp_1")
    await anyio.sleep(0.3)
    # Expired, and nobody took the key since: still refused.
    assert not await pg_lock.advance_chain(old, "resp_1", "resp_2")
    new = await pg_lock.acquire("chain", ttl=30.0, timeout=0)
    assert not await pg_lock.advance_chain(old, "resp_1", "resp_2")  # someone else holds it
    forged = Lease(old.key, "not-the-token", new.fence, new.ttl, new.acquired_at, new.expires_at)
    assert not await pg_lock.advance_chain(forged, "resp_1", "resp_2")
    assert await pg_lock.advance_chain(new, "resp_1", "resp_2")
    assert await pg_lock.chain_head("chain") == "resp_2"
    assert await pg_lock.release(new)


async def test_advance_chain_races_one_winner(pg_dsn: str, pg_table: str) -> None:
    # Many tasks and two instances race the same CAS with one live lease: one wins.
    async with (
        PostgresThreadLock.from_url(pg_dsn, table=pg_table) as one,
        PostgresThreadLock.from_url(pg_dsn, table=pg_table) as two,
    ):
        await one.create_schema()
        lease = await one.acquire("chain", ttl=30.0)
        wins: list[bool] = []

        async def attempt(lock: PostgresThreadLock, index: int) -> None:
            wins.append(await lock.advance_chain(lease, None, f"resp_{index}"))

        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(attempt, one if index % 2 else two, index)
        assert wins.count(True) == 1
        assert await one.release(lease)


async def test_run_id_shows_the_newest_tracked_run_in_inspect_held_and_busy(
    pg_lock: PostgresThreadLock,
) -> None:
    lease = await pg_lock.acquire("thread_a", ttl=30.0)
    info = await pg_lock.inspect("thread_a")
    assert info is not None
    assert info.run_id is None
    now = time.time()
    await pg_lock.track_run(_record("thread_a", "run_1", now, fence=lease.fence))
    await pg_lock.track_run(_record("thread_a", "run_2", now - 10, fence=lease.fence))
    await pg_lock.track_run(_record("thread_b", "run_9", now))  # not held: not listed
    info = await pg_lock.inspect("thread_a")
    assert info is not None
    assert info.run_id == "run_2"  # the newest recorded, whatever its created_at
    assert [(i.key, i.run_id) for i in await pg_lock.held()] == [("thread_a", "run_2")]
    with pytest.raises(ThreadBusy) as busy:
        await pg_lock.acquire("thread_a", ttl=30.0, timeout=0)
    assert busy.value.holder is not None
    assert busy.value.holder.run_id == "run_2"
    await pg_lock.untrack_run("thread_a", "run_2")
    info = await pg_lock.inspect("thread_a")
    assert info is not None
    assert info.run_id == "run_1"
    assert await pg_lock.release(lease)
    assert await pg_lock.inspect("thread_a") is None  # free: no info, whatever is tracked


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
        await lock.track_run(_record("kept", "run_1", time.time(), fence=v1_fence))
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
