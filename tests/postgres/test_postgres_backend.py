"""Postgres-specific behaviour: names, schema management, errors, hand-off by notification."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import threadlock
from threadlock import BackendError, Lease, LeaseLost, ThreadBusy
from threadlock.backends.postgres import SCHEMA_VERSION, PostgresThreadLock

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("_pg_worker.py")

HOSTILE_NAMES = [
    "'; DROP TABLE x; --",
    'a"b',
    "a'b",
    "tables; DROP",
    "käse",
    "1abc",
    "a b",
    "a-b",
    "",
    "x" * 64,
    "abc\n",
    "$threadlock$",
]


async def _tables(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'S')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        )
        return {row[0] for row in await cur.fetchall()}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_bad_table_or_schema_name_is_value_error_before_any_sql(name: str) -> None:
    # A pool that could not connect anywhere: any SQL would fail with something else.
    pool: AsyncConnectionPool = AsyncConnectionPool("postgresql://nobody@127.0.0.1:1/x", open=False)
    with pytest.raises(ValueError, match="table"):
        PostgresThreadLock(pool, table=name)
    with pytest.raises(ValueError, match="schema"):
        PostgresThreadLock(pool, schema=name)
    with pytest.raises(ValueError, match="table"):
        PostgresThreadLock.from_url("postgresql://nobody@127.0.0.1:1/x", table=name)
    with pytest.raises(ValueError, match="table"):
        threadlock.from_url("postgres://nobody@127.0.0.1:1/x", table=name)
    assert pool.closed


async def test_bad_argument_types_name_the_argument() -> None:
    with pytest.raises(ValueError, match="table"):  # room is left for the derived names
        PostgresThreadLock.from_url("postgresql://x@127.0.0.1:1/x", table="t" * 49)
    PostgresThreadLock.from_url("postgresql://x@127.0.0.1:1/x", table="t" * 48)
    with pytest.raises(TypeError, match="pool"):
        PostgresThreadLock("postgresql://x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="table"):
        PostgresThreadLock.from_url("postgresql://x@127.0.0.1:1/x", table=3)
    with pytest.raises(ValueError, match="url"):
        PostgresThreadLock.from_url("redis://localhost")
    with pytest.raises(ValueError, match="grace"):
        PostgresThreadLock.from_url("postgresql://x@127.0.0.1:1/x", grace=0)


async def test_from_url_does_not_connect_and_both_schemes_work() -> None:
    for scheme in ("postgresql", "postgres"):
        lock = threadlock.from_url(f"{scheme}://nobody@127.0.0.1:1/x", table="t1")
        assert isinstance(lock, PostgresThreadLock)
        assert isinstance(lock, threadlock.ThreadLock)
        await lock.aclose()


async def test_unreachable_server_is_backend_error() -> None:
    lock = PostgresThreadLock.from_url("postgresql://nobody@127.0.0.1:1/x", pool_timeout=0.5)
    try:
        with pytest.raises(BackendError) as raised:
            await lock.acquire("k", ttl=1.0, timeout=0)
        assert raised.value.__cause__ is not None  # the driver's error is chained
        with pytest.raises(BackendError):
            await lock.inspect("k")
    finally:
        await lock.aclose()


async def test_missing_schema_says_how_to_create_it(pg_dsn: str, pg_table: str) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        for call in (
            lambda: lock.acquire("k", ttl=1.0, timeout=0),
            lambda: lock.inspect("k"),
            lock.held,
        ):
            with pytest.raises(BackendError, match="create_schema") as raised:
                await call()
            assert isinstance(raised.value.__cause__, psycopg.Error)
    # ... and nothing was created on first use.
    assert not any(pg_table in name for name in await _tables(pg_dsn))


async def test_create_schema_is_idempotent_and_versioned(pg_dsn: str, pg_table: str) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        lease = await lock.acquire("kept", ttl=30.0)
        await lock.create_schema()  # again: changes nothing, keeps the lease
        info = await lock.inspect("kept")
        assert info is not None
        assert info.fence == lease.fence
        assert await lock.release(lease)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT version, unlogged FROM threadlock_schema_version WHERE table_name = %s",
            (pg_table,),
        )
        assert await cur.fetchall() == [(SCHEMA_VERSION, False)]


async def test_create_schema_raced_from_four_processes(pg_dsn: str, pg_table: str) -> None:
    start_at = time.time() + 1.5  # all four start their DDL at the same moment
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
    names = await _tables(pg_dsn)
    assert f"public.{pg_table}" in names
    assert f"public.{pg_table}_waiters" in names
    assert f"public.{pg_table}_fence_seq" in names


async def test_schema_argument_and_unlogged_tables(pg_dsn: str, pg_table: str) -> None:
    schema = f"s_{pg_table}"
    async with PostgresThreadLock.from_url(
        pg_dsn, table=pg_table, schema=schema, unlogged=True
    ) as lock:
        await lock.create_schema()
        lease = await lock.acquire("k", ttl=30.0, timeout=0)
        assert [i.key for i in await lock.held()] == ["k"]
        assert await lock.release(lease)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT c.relname, c.relpersistence FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relkind IN ('r', 'S') ORDER BY 1",
            (schema,),
        )
        persistence = dict(await cur.fetchall())
    assert persistence[pg_table] == "u"
    assert persistence[f"{pg_table}_waiters"] == "u"
    assert persistence[f"{pg_table}_fence_seq"] == "p"  # fences stay durable


async def test_hostile_keys_stay_plain_keys(pg_dsn: str, pg_table: str) -> None:
    keys = [
        "'; DROP TABLE x; --",
        f"'; DROP TABLE {pg_table}; --",
        '"; DROP TABLE x; --',
        "$threadlock$; DROP TABLE x; $threadlock$",
        "\\'\\\\",
        "%s %(x)s {leases}",
        "ключ 🔒 鍵",
        "\t\n\r",
    ]
    before = await _tables(pg_dsn)
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
        leases: list[Lease] = []
        for key in keys:
            leases.append(await lock.acquire(key, ttl=30.0, timeout=0))
            with pytest.raises(ThreadBusy):
                await lock.acquire(key, ttl=30.0, timeout=0)
        assert sorted(i.key for i in await lock.held()) == sorted(keys)
        for key, lease in zip(keys, leases, strict=True):
            info = await lock.inspect(key)
            assert info is not None
            assert info.fence == lease.fence
            assert await lock.release(lease)
        assert await lock.held() == []
    after = await _tables(pg_dsn)
    assert before <= after  # nothing was dropped


async def test_free_keys_leave_no_rows(pg_dsn: str, pg_lock: PostgresThreadLock) -> None:
    for index in range(20):
        lease = await pg_lock.acquire(f"k{index}", ttl=30.0)
        assert await pg_lock.release(lease)
    short = [await pg_lock.acquire(f"e{index}", ttl=0.05) for index in range(5)]
    await anyio.sleep(0.1)
    for old in short:  # an expired lease is re-taken, then released: no rows left
        lease = await pg_lock.acquire(old.key, ttl=30.0, timeout=0)
        assert await pg_lock.release(lease)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        for suffix in ("", "_waiters"):
            cur = await conn.execute(f'SELECT count(*) FROM "{pg_lock.table}{suffix}"')
            assert await cur.fetchone() == (0,)


async def test_handoff_is_notified_even_with_a_long_heartbeat(pg_dsn: str, pg_table: str) -> None:
    # grace=60 puts the waiter's own heartbeat re-check 20 s away, and the holder's TTL is
    # 60 s: only the notification can hand the key over within the bound. The holder is
    # another instance (as another process would be), so the hand-off goes through NOTIFY.
    async with (
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as lock,
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as other,
    ):
        await lock.create_schema()
        for _ in range(5):
            holder = await other.acquire("k", ttl=60.0)
            got: list[Lease] = []

            async def waiter() -> None:
                got.append(await lock.acquire("k", ttl=60.0, timeout=None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                with anyio.fail_after(5):
                    while (info := await lock.inspect("k")) is None or info.waiters < 1:
                        await anyio.sleep(0.005)
                assert await other.release(holder)
                with anyio.fail_after(3):
                    while not got:
                        await anyio.sleep(0.001)
            assert got[0].fence > holder.fence
            assert await lock.release(got[0])


async def _notifications(dsn: str, channel: str, seconds: float) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        return [n.payload async for n in conn.notifies(timeout=seconds)]


async def test_local_handoff_is_in_process_and_remote_one_is_notified(
    pg_dsn: str, pg_table: str
) -> None:
    # A release hands a waiter of its own instance a full lease in the same statement (no
    # NOTIFY, no confirmation round trip); a waiter of another instance gets a provisional
    # grant and a notification.
    async with (
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as lock,
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as other,
    ):
        await lock.create_schema()
        for waiting_on, notified in ((lock, False), (other, True)):
            holder = await lock.acquire("k", ttl=60.0)
            got: list[Lease] = []
            heard: list[str] = []

            async def waiter(backend: PostgresThreadLock = waiting_on) -> None:
                got.append(await backend.acquire("k", ttl=60.0, timeout=None))

            async def listen() -> None:
                heard.extend(await _notifications(pg_dsn, lock.channel, 1.0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                with anyio.fail_after(5):
                    while (info := await lock.inspect("k")) is None or info.waiters < 1:
                        await anyio.sleep(0.005)
                tg.start_soon(listen)
                await anyio.sleep(0.2)  # the test's LISTEN is in place
                assert await lock.release(holder)
                with anyio.fail_after(3):
                    while not got:
                        await anyio.sleep(0.001)
                info = await lock.inspect("k")
                assert info is not None
                assert info.fence == got[0].fence > holder.fence
                assert got[0].expires_at - got[0].acquired_at == pytest.approx(60.0, abs=0.5)
                assert info.expires_at == pytest.approx(got[0].expires_at)
            assert bool(heard) is notified
            assert await waiting_on.release(got[0])


async def test_local_handoff_to_a_cancelled_waiter_passes_the_key_on(
    pg_lock: PostgresThreadLock,
) -> None:
    holder = await pg_lock.acquire("k", ttl=60.0)
    got: list[Lease] = []

    async def second() -> None:
        got.append(await pg_lock.acquire("k", ttl=60.0, timeout=None))

    first_scope = anyio.CancelScope()

    async def first() -> None:
        with first_scope:
            await pg_lock.acquire("k", ttl=60.0, timeout=None)
            pytest.fail("the cancelled waiter returned a lease")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        with anyio.fail_after(5):
            while (info := await pg_lock.inspect("k")) is None or info.waiters < 1:
                await anyio.sleep(0.005)
        tg.start_soon(second)
        with anyio.fail_after(5):
            while (info := await pg_lock.inspect("k")) is None or info.waiters < 2:
                await anyio.sleep(0.005)
        # The release hands "first" its lease in-process; "first" is cancelled before it
        # runs again and must give the key on to "second".
        assert await pg_lock.release(holder)
        first_scope.cancel()
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.005)
    info = await pg_lock.inspect("k")
    assert info is not None
    assert info.fence == got[0].fence
    assert await pg_lock.release(got[0])
    assert await pg_lock.held() == []


async def test_fail_fast_retry_after_is_the_holders_remaining_ttl(
    pg_lock: PostgresThreadLock,
) -> None:
    holder = await pg_lock.acquire("k", ttl=20.0)
    with pytest.raises(ThreadBusy) as busy:
        await pg_lock.acquire("k", ttl=5.0, timeout=0)
    assert 15.0 < busy.value.retry_after <= 20.0
    assert busy.value.holder is not None
    assert busy.value.holder.owner.startswith(pg_lock.owner)
    assert await pg_lock.release(holder)


async def test_closed_backend_is_backend_error(pg_lock: PostgresThreadLock) -> None:
    await pg_lock.aclose()
    with pytest.raises(BackendError, match="closed"):
        await pg_lock.acquire("k", ttl=1.0)


async def _commit_setting(
    dsn: str, query: psycopg.sql.Composable, params: tuple[object, ...]
) -> str:
    """Run one threadlock function call in a transaction; the synchronous_commit it left."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            await conn.execute(query, params)
            cur = await conn.execute("SELECT current_setting('synchronous_commit')")
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])


@pytest.mark.parametrize("unlogged", [False, True])
async def test_relaxed_commit_only_where_no_fence_is_handed_out(
    pg_dsn: str, pg_table: str, unlogged: bool
) -> None:
    sql = psycopg.sql
    acquire = sql.SQL("SELECT * FROM {}(%s, %s, %s, 'o', 30.0, 5.0, %s, NULL, %s)").format(
        sql.Identifier(f"{pg_table}_acquire")
    )
    release = sql.SQL("SELECT * FROM {}(%s, %s, %s, %s)").format(
        sql.Identifier(f"{pg_table}_release")
    )
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, unlogged=unlogged) as lock:
        await lock.create_schema()
    relaxed = "on" if unlogged else "off"  # never relaxed on UNLOGGED tables
    # A grant hands out a fence: synchronous.
    assert await _commit_setting(pg_dsn, acquire, ("k", "t1", "w1", True, True)) == "on"
    # Waiting (enqueue, heartbeat) and busy hand out nothing: relaxed.
    assert await _commit_setting(pg_dsn, acquire, ("k", "t2", "w2", True, True)) == relaxed
    assert await _commit_setting(pg_dsn, acquire, ("k", "t3", "", False, True)) == relaxed
    assert await _commit_setting(pg_dsn, acquire, ("k", "t2", "w2", True, False)) == "on"
    # A release that hands a waiter of another instance a provisional grant: relaxed (the
    # grantee's confirmation is synchronous) ...
    assert await _commit_setting(pg_dsn, release, ("k", "t1", True, "elsewhere")) == relaxed
    assert await _commit_setting(pg_dsn, acquire, ("k", "t2", "w2", True, True)) == "on"
    # ... one that hands a local waiter its full lease: synchronous.
    assert await _commit_setting(pg_dsn, acquire, ("k", "t4", "me-4", True, True)) == relaxed
    assert await _commit_setting(pg_dsn, release, ("k", "t2", True, "me-")) == "on"
    assert await _commit_setting(pg_dsn, release, ("k", "t4", True, "me-")) == relaxed
    assert await _commit_setting(pg_dsn, release, ("k", "t4", False, "me-")) == "on"


async def test_a_ttl_beyond_postgres_range_is_a_value_error(pg_lock: PostgresThreadLock) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await pg_lock.acquire("k", ttl=1e20, timeout=0)
    lease = await pg_lock.acquire("k", ttl=1e9, timeout=0)  # about 31 years: fine
    with pytest.raises(ValueError, match="ttl"):
        await pg_lock.extend(lease, ttl=1e20)
    assert await pg_lock.release(lease)


async def test_a_forged_lease_with_a_nul_is_not_held(pg_lock: PostgresThreadLock) -> None:
    for forged in (Lease("a\x00b", "token", 1, 1.0, 0.0, 0.0), Lease("k", "t\x00", 1, 1.0, 0, 0)):
        assert await pg_lock.release(forged) is False
        with pytest.raises(LeaseLost):
            await pg_lock.extend(forged)
        assert await pg_lock.advance_chain(forged, None, "resp_1") is False
