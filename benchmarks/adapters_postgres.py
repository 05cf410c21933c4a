"""Postgres adapters: threadlock's backend and its peers, against the same server in one run.

* ``postgres``: ``PostgresThreadLock.acquire`` / ``release`` (logged tables, the default
  durable commits).
* ``postgres-relaxed``: the same with ``relaxed_commit=True`` (the default until issue 14).
* ``postgres-unlogged``: the same with ``unlogged=True``.
* ``pg-select1``: the floor, one ``SELECT 1`` round trip per call (no exclusion).
* ``pg-advisory``: a session advisory lock, ``pg_advisory_lock(hashtext(key))`` on a
  connection taken from a pool and kept for as long as the lock is held.
* ``pg-polling``: a naive lease table: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``,
  retried after a 10 ms sleep while busy; release deletes the row.

Options: ``pg_dsn`` (``--pg-dsn``, or env ``THREADLOCK_BENCH_PG_DSN``). Without it, one
throwaway cluster is started for the whole run (``tests/_servers/postgres_server.py``, with
its durability settings at the Postgres defaults) and removed at exit.
psycopg's async connections run on asyncio only.
"""

from __future__ import annotations

import atexit
import secrets
import threading
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from benchmarks.adapter import AdapterConfig, Capabilities, register_adapter
from benchmarks.targets import Ref, Target, register_targets
from threadlock import Lease
from threadlock.backends.postgres import PostgresThreadLock

__all__ = [
    "AdvisoryAdapter",
    "PollingAdapter",
    "PostgresAdapter",
    "Select1Adapter",
]

ASYNCIO = frozenset({"asyncio"})
POOL_SIZE = 80  # S4 runs 64 tasks; the advisory lock pins one connection per holder
_SERVER_LOCK = threading.Lock()
_SERVER: Any = None


def _dsn(config: AdapterConfig) -> str:
    dsn = config.get("pg_dsn", env="THREADLOCK_BENCH_PG_DSN")
    if dsn:
        return dsn
    global _SERVER  # noqa: PLW0603 - one server per run, shared by every adapter
    with _SERVER_LOCK:
        if _SERVER is None:
            from tests._servers.postgres_server import PostgresServer

            server = PostgresServer.create(
                settings={"fsync": "on", "full_page_writes": "on", "max_connections": "300"}
            )
            server.start()
            atexit.register(server.destroy)
            _SERVER = server
        return str(_SERVER.dsn)


def _table(config: AdapterConfig, name: str) -> str:
    return f"bench_{name}_{config.run_id}"[:40].replace("-", "_").lower() + secrets.token_hex(3)


class PostgresAdapter:
    name = "postgres"
    capabilities = Capabilities(exclusive=True, fifo=True, loops=ASYNCIO)
    unlogged = False
    relaxed = False

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._ttl = float(config.get("pg_ttl", "30") or 30)
        self._lock: PostgresThreadLock | None = None

    async def setup(self) -> None:
        dsn = _dsn(self._config)
        self._lock = PostgresThreadLock.from_url(
            dsn,
            table=_table(self._config, self.name),
            unlogged=self.unlogged,
            relaxed_commit=self.relaxed,
            min_size=16,
            max_size=POOL_SIZE,
        )
        await self._lock.create_schema()
        pool = await self._lock._db.ready()  # the backend opens its pool lazily
        await pool.wait()  # all min_size connections up before timing

    async def teardown(self) -> None:
        if self._lock is None:
            return
        table = self._lock.table
        await self._lock.aclose()
        async with await psycopg.AsyncConnection.connect(_dsn(self._config)) as conn:
            for suffix in (
                "_acquire",
                "_release",
                "_extend",
                "_advance_chain",
                "_settle",
                "_grant_next",
                "_hand_on",
                "_sweep",
            ):
                await conn.execute(f'DROP FUNCTION IF EXISTS "{table}{suffix}" CASCADE')
            await conn.execute(
                f'DROP TABLE IF EXISTS "{table}", "{table}_waiters", "{table}_runs",'
                f' "{table}_chains"'
            )
            await conn.execute(f'DROP SEQUENCE IF EXISTS "{table}_fence_seq"')
            await conn.execute(
                "DELETE FROM threadlock_schema_version WHERE table_name = %s", (table,)
            )

    async def acquire(self, key: str) -> Lease:
        assert self._lock is not None
        return await self._lock.acquire(key, ttl=self._ttl, timeout=None)

    async def release(self, handle: Lease) -> None:
        assert self._lock is not None
        await self._lock.release(handle)


class UnloggedAdapter(PostgresAdapter):
    name = "postgres-unlogged"
    unlogged = True


class RelaxedAdapter(PostgresAdapter):
    name = "postgres-relaxed"
    relaxed = True


class _PoolAdapter:
    name = "pg"
    capabilities = Capabilities(exclusive=True, loops=ASYNCIO)

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._pool: AsyncConnectionPool[Any] | None = None

    async def setup(self) -> None:
        self._pool = AsyncConnectionPool(
            _dsn(self._config),
            open=False,
            min_size=16,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
        )
        await self._pool.open(wait=True)

    async def teardown(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class Select1Adapter(_PoolAdapter):
    name = "pg-select1"
    capabilities = Capabilities(exclusive=False, loops=ASYNCIO)

    async def acquire(self, key: str) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def release(self, handle: None) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")


class AdvisoryAdapter(_PoolAdapter):
    name = "pg-advisory"
    capabilities = Capabilities(exclusive=True, fifo=False, max_tasks=POOL_SIZE, loops=ASYNCIO)

    async def acquire(self, key: str) -> tuple[Any, str]:
        assert self._pool is not None
        conn = await self._pool.getconn()
        try:
            await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        except BaseException:
            await self._pool.putconn(conn)
            raise
        return conn, key

    async def release(self, handle: tuple[Any, str]) -> None:
        assert self._pool is not None
        conn, key = handle
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        finally:
            await self._pool.putconn(conn)


class PollingAdapter(_PoolAdapter):
    name = "pg-polling"
    capabilities = Capabilities(exclusive=True, fifo=False, loops=ASYNCIO)

    async def setup(self) -> None:
        await super().setup()
        self._table = _table(self._config, "poll")
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute(
                f'CREATE TABLE "{self._table}" (key text PRIMARY KEY, token text NOT NULL,'
                " expires_at timestamptz NOT NULL)"
            )
        self._q_take = (
            f'INSERT INTO "{self._table}" AS t (key, token, expires_at)'
            " VALUES (%s, %s, clock_timestamp() + interval '30 seconds')"
            " ON CONFLICT (key) DO UPDATE SET token = excluded.token,"
            " expires_at = excluded.expires_at WHERE t.expires_at < clock_timestamp()"
            " RETURNING t.token"
        )
        self._q_drop = f'DELETE FROM "{self._table}" WHERE key = %s AND token = %s'

    async def teardown(self) -> None:
        if self._pool is not None:
            async with self._pool.connection() as conn:
                await conn.execute(f'DROP TABLE IF EXISTS "{self._table}"')
        await super().teardown()

    async def acquire(self, key: str) -> tuple[str, str]:
        assert self._pool is not None
        token = secrets.token_hex(8)
        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(self._q_take, (key, token))
                if await cur.fetchone() is not None:
                    return key, token
            await anyio.sleep(0.010)

    async def release(self, handle: tuple[str, str]) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute(self._q_drop, handle)


register_adapter("postgres", PostgresAdapter, description="PostgresThreadLock acquire/release")
register_adapter(
    "postgres-unlogged", UnloggedAdapter, description="PostgresThreadLock, unlogged=True"
)
register_adapter(
    "postgres-relaxed", RelaxedAdapter, description="PostgresThreadLock, relaxed_commit=True"
)
register_adapter("pg-select1", Select1Adapter, description="floor: SELECT 1 round trip")
register_adapter("pg-advisory", AdvisoryAdapter, description="session pg_advisory_lock")
register_adapter("pg-polling", PollingAdapter, description="lease table, 10 ms polling")

# Issue 4's goals, against the session advisory lock on the same server.
ADVISORY = Ref("pg-advisory")
for _name in ("postgres", "postgres-unlogged", "postgres-relaxed"):
    register_targets(
        Target(_name, "S1", "pairs_per_s", ">=", 0.6, ref=ADVISORY),
        Target(_name, "S2", "handoff_p99_us", "<=", 2000.0),
        Target(_name, "S2", "self_reacquire_pct", "<=", 0.0),
        Target(_name, "S3", "inversions", "<=", 0.0),
        Target(_name, "S3", "drain_ms", "<=", 1.5, ref=ADVISORY),
    )
