"""Where a Postgres acquire+release spends: statements, round trips, WAL and WAL syncs per pair.

``python -m benchmarks.postgres_cost [--pairs N] [--cycles M] [--rounds R]
[--concurrency 1,8,32] [--out DIR]``

A private Postgres (``tests/_servers/postgres_server.py``) on a free port, with the Postgres
defaults for durability (``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``),
``pg_stat_statements`` preloaded (``track = all``: statements inside the plpgsql functions are
counted too) and autovacuum off (so that no background work lands in a batch). Each subject
runs on a pool of its own, as the workload role ``postgres``; the stats are read by another
role, whose statements are left out.

Subjects: threadlock with ``relaxed_commit=True`` and ``False``; a bare session advisory lock
(``pg_advisory_lock`` / ``pg_advisory_unlock`` on a connection kept while held); a plain lease
table (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` / ``DELETE``), its release
committed with ``synchronous_commit = off`` in the relaxed mode (``set_config`` in the same
statement, as threadlock does). Per subject and round, batches of:

* ``pairs, one key`` / ``pairs, fresh keys``: N uncontended acquire+release pairs;
* ``hand-off``: M cycles of A holds, B waits (enqueued; for the lease table: one busy
  attempt), A releases, B gets the key, B releases. threadlock's B is of the same instance
  (the in-process hand-off) or of another instance (``hand-off, other instance``: the
  provisional grant, NOTIFY and B's confirmation);
* ``concurrent``: C tasks, each doing pairs on keys of its own, on a pool of C connections
  (the group commit case), per C in ``--concurrency``.

Around each batch every connection of the subject's pool runs ``pg_stat_force_next_flush()``
(so that its pending WAL counters reach ``pg_stat_wal``), then ``pg_stat_statements`` and
``pg_stat_wal`` are reset / read. Per pair (per cycle): round trips counted client-side (every
``AsyncConnection.execute``), top-level and nested statements and WAL records/bytes of the
workload's statements (``pg_stat_statements``), WAL records/bytes/writes/syncs of the whole
server (``pg_stat_wal``, which includes the WAL writer's background flushes of asynchronous
commits) and the wall-clock µs per pair. The counts are robust on a loaded machine; the times
are not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from threadlock.backends.postgres import PostgresThreadLock

_FLUSH = "SELECT pg_stat_force_next_flush()"
_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "max_connections": "300",
    "autovacuum": "off",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "5000",
}


class _Trips:
    """Counts the statements the client sends (one round trip each: prepared, autocommit)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        original = psycopg.AsyncConnection.execute

        async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            cls.count += 1
            return await original(self, *args, **kwargs)

        psycopg.AsyncConnection.execute = execute  # type: ignore[method-assign]


class Observer:
    """A connection of another role: resets and reads the stats, polls who waits."""

    def __init__(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("DROP ROLE IF EXISTS observer")
            conn.execute("CREATE ROLE observer SUPERUSER LOGIN")
            row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = current_user").fetchone()
            assert row is not None
            self.workload = int(row[0])
        self.conn = psycopg.connect(dsn.replace("postgres@", "observer@", 1), autocommit=True)

    def reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")
        self.conn.execute("SELECT pg_stat_reset_shared('wal')")

    def read(self) -> dict[str, float]:
        row = self.conn.execute(
            "SELECT coalesce(sum(calls) FILTER (WHERE toplevel), 0),"
            " coalesce(sum(calls) FILTER (WHERE NOT toplevel), 0),"
            " coalesce(sum(wal_records) FILTER (WHERE toplevel), 0),"
            " coalesce(sum(wal_bytes) FILTER (WHERE toplevel), 0),"
            " coalesce(sum(total_exec_time) FILTER (WHERE toplevel), 0)"
            " FROM pg_stat_statements WHERE userid = %s AND query NOT LIKE %s",
            (self.workload, "%pg_stat_force_next_flush%"),
        ).fetchone()
        wal = self.conn.execute(
            "SELECT wal_records, wal_bytes, wal_fpi, wal_write, wal_sync FROM pg_stat_wal"
        ).fetchone()
        assert row is not None
        assert wal is not None
        top, nested, s_records, s_bytes, exec_ms = (float(v) for v in row)
        records, wbytes, fpi, writes, syncs = (float(v) for v in wal)
        return {
            "round_trips": 0.0,  # filled in by the caller
            "statements_top": top,
            "statements_nested": nested,
            "statements": top + nested,
            "server_exec_us": exec_ms * 1000,
            "stmt_wal_records": s_records,
            "stmt_wal_bytes": s_bytes,
            "wal_records": records,
            "wal_bytes": wbytes,
            "wal_fpi": fpi,
            "wal_writes": writes,
            "wal_syncs": syncs,
        }

    def count(self, query: str, params: tuple[Any, ...]) -> int:
        row = self.conn.execute(query, params).fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        self.conn.close()


async def _flush(pools: list[AsyncConnectionPool[Any]]) -> None:
    """Every connection of the pools flushes its pending stats (a cursor: not counted)."""
    for pool in pools:
        conns = [await pool.getconn() for _ in range(pool.max_size)]
        try:
            for conn in conns:
                async with conn.cursor() as cur:
                    await cur.execute(_FLUSH)
        finally:
            for conn in conns:
                await pool.putconn(conn)


async def _pool(dsn: str, size: int) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, open=False, min_size=size, max_size=size, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    return pool


async def _until(obs: Observer, query: str, params: tuple[Any, ...]) -> None:
    """Wait until the observer's count query says somebody waits (polled in a thread)."""
    while await asyncio.to_thread(obs.count, query, params) < 1:
        await asyncio.sleep(0.0005)


class Subject:
    """One lock under measurement: its pools, a pair, a hand-off cycle."""

    name = ""
    mode = ""

    def __init__(self, dsn: str, obs: Observer, size: int) -> None:
        self.dsn, self.obs, self.size = dsn, obs, size
        self.pools: list[AsyncConnectionPool[Any]] = []

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()

    async def pair(self, key: str) -> None:
        raise NotImplementedError

    async def cycle(self, key: str) -> None:
        raise NotImplementedError


class Threadlock(Subject):
    name = "threadlock"

    def __init__(self, dsn: str, obs: Observer, size: int, relaxed: bool) -> None:
        super().__init__(dsn, obs, size)
        self.relaxed = relaxed
        self.mode = "relaxed" if relaxed else "durable"
        self.table = f"cost_{secrets.token_hex(4)}"

    async def open(self) -> None:
        self.pools = [await _pool(self.dsn, self.size), await _pool(self.dsn, 2)]
        self.a, self.b = (
            PostgresThreadLock(pool, table=self.table, relaxed_commit=self.relaxed)
            for pool in self.pools
        )
        await self.a.create_schema()
        self.waiting = f'SELECT count(*) FROM "{self.table}_waiters" WHERE key = %s'

    async def close(self) -> None:
        await self.a.aclose()
        await self.b.aclose()
        await super().close()

    async def pair(self, key: str) -> None:
        await self.a.release(await self.a.acquire(key, ttl=30))

    async def _cycle(self, key: str, waiter: PostgresThreadLock) -> None:
        first = await self.a.acquire(key, ttl=30)
        second = asyncio.ensure_future(waiter.acquire(key, ttl=30))
        await _until(self.obs, self.waiting, (key,))
        await self.a.release(first)
        await waiter.release(await second)

    async def cycle(self, key: str) -> None:
        await self._cycle(key, self.a)

    async def cycle_other(self, key: str) -> None:
        await self._cycle(key, self.b)


class Advisory(Subject):
    name = "advisory lock"
    mode = "n/a"

    async def open(self) -> None:
        self.pools = [await _pool(self.dsn, max(self.size, 2))]
        self.blocked = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = hashtext(%s)::oid"
        )

    async def _lock(self, key: str) -> Any:
        conn = await self.pools[0].getconn()
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,), prepare=True)
        return conn

    async def _unlock(self, conn: Any, key: str) -> None:
        await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,), prepare=True)
        await self.pools[0].putconn(conn)

    async def pair(self, key: str) -> None:
        await self._unlock(await self._lock(key), key)

    async def cycle(self, key: str) -> None:
        first = await self._lock(key)
        second = asyncio.ensure_future(self._lock(key))
        await _until(self.obs, self.blocked, (key,))
        await self._unlock(first, key)
        await self._unlock(await second, key)


class LeaseTable(Subject):
    name = "plain lease table"

    def __init__(self, dsn: str, obs: Observer, size: int, relaxed: bool) -> None:
        super().__init__(dsn, obs, size)
        self.mode = "relaxed" if relaxed else "durable"
        table = f"plain_{secrets.token_hex(4)}"
        self.create = (
            f'CREATE TABLE "{table}" (key text PRIMARY KEY, token text NOT NULL,'
            " expires_at timestamptz NOT NULL)"
        )
        self.take = (
            f'INSERT INTO "{table}" AS t (key, token, expires_at)'
            " VALUES (%s, %s, clock_timestamp() + interval '30 seconds')"
            " ON CONFLICT (key) DO UPDATE SET token = excluded.token,"
            " expires_at = excluded.expires_at WHERE t.expires_at <= clock_timestamp()"
            " RETURNING t.token"
        )
        drop = f'DELETE FROM "{table}" WHERE key = %s AND token = %s'
        if relaxed:  # the same statement sets the commit mode, as threadlock's release does
            drop += " AND set_config('synchronous_commit', 'off', true) = 'off'"
        self.drop = drop

    async def open(self) -> None:
        self.pools = [await _pool(self.dsn, self.size)]
        async with self.pools[0].connection() as conn, conn.cursor() as cur:
            await cur.execute(self.create)

    async def _take(self, key: str, token: str) -> bool:
        async with self.pools[0].connection() as conn:
            cur = await conn.execute(self.take, (key, token), prepare=True)
            return await cur.fetchone() is not None

    async def _drop(self, key: str, token: str) -> None:
        async with self.pools[0].connection() as conn:
            await conn.execute(self.drop, (key, token), prepare=True)

    async def pair(self, key: str) -> None:
        token = secrets.token_hex(8)
        assert await self._take(key, token)
        await self._drop(key, token)

    async def cycle(self, key: str) -> None:
        first, second = secrets.token_hex(8), secrets.token_hex(8)
        assert await self._take(key, first)
        assert not await self._take(key, second)  # busy: a polling waiter's one retry
        await self._drop(key, first)
        assert await self._take(key, second)
        await self._drop(key, second)


async def _batch(
    subject: Subject, units: int, run: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    await _flush(subject.pools)
    subject.obs.reset()
    _Trips.count = 0
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    trips = _Trips.count
    await _flush(subject.pools)
    await asyncio.sleep(0.5)  # the WAL writer reports its own flushes on its next round
    stats = subject.obs.read()
    stats["round_trips"] = trips
    out = {name: value / units for name, value in stats.items()}
    out["us_per_unit"] = elapsed * 1e6 / units
    out["per_s"] = units / elapsed
    return out


def _sequential(
    units: int, step: Callable[[str], Awaitable[None]], prefix: str | None
) -> Callable[[], Awaitable[None]]:
    """``units`` steps one after the other: on one key (``prefix`` None) or on fresh keys."""

    async def run() -> None:
        for n in range(units):
            await step("one" if prefix is None else f"{prefix}{n}")

    return run


def _concurrent(subject: Subject, tasks: int, per_task: int, tag: str) -> Callable[[], Any]:
    async def worker(t: int) -> None:
        for n in range(per_task):
            await subject.pair(f"{tag}-{t}-{n % 8}")

    async def run() -> None:
        await asyncio.gather(*(worker(t) for t in range(tasks)))

    return run


async def _subject_rounds(
    make: Callable[[int], Subject], args: argparse.Namespace, results: dict[str, Any]
) -> None:
    subject = make(2)
    await subject.open()
    label = f"{subject.name} ({subject.mode})"
    try:
        for n in range(50):  # warm-up: prepared statements, plpgsql compiled, listener up
            await subject.pair(f"warm-{n % 4}")
            if n % 10 == 0:
                await subject.cycle(f"warm-c{n}")
                if isinstance(subject, Threadlock):
                    await subject.cycle_other(f"warm-o{n}")
        for r in range(args.rounds):
            batches: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [
                (
                    "pairs, one key",
                    args.pairs,
                    _sequential(args.pairs, subject.pair, None),
                ),
                (
                    "pairs, fresh keys",
                    args.pairs,
                    _sequential(args.pairs, subject.pair, f"f{r}-"),
                ),
                (
                    "hand-off",
                    args.cycles,
                    _sequential(args.cycles, subject.cycle, f"h{r}-"),
                ),
            ]
            if isinstance(subject, Threadlock):
                batches.append(
                    (
                        "hand-off, other instance",
                        args.cycles,
                        _sequential(args.cycles, subject.cycle_other, f"o{r}-"),
                    )
                )
            for batch, units, run in batches:
                results.setdefault(label, {}).setdefault(batch, []).append(
                    await _batch(subject, units, run)
                )
    finally:
        await subject.close()
    for tasks in args.concurrency:
        subject = make(tasks)
        await subject.open()
        try:
            per_task = max(1, args.pairs // tasks)
            await _concurrent(subject, tasks, 20, "warm")()
            for r in range(args.rounds):
                results.setdefault(label, {}).setdefault(f"concurrent, {tasks} tasks", []).append(
                    await _batch(
                        subject, tasks * per_task, _concurrent(subject, tasks, per_task, f"c{r}")
                    )
                )
        finally:
            await subject.close()


async def measure(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    obs = Observer(dsn)
    _Trips.install()
    results: dict[str, Any] = {}
    makers: list[Callable[[int], Subject]] = [
        lambda size: Threadlock(dsn, obs, size, relaxed=True),
        lambda size: Threadlock(dsn, obs, size, relaxed=False),
        lambda size: LeaseTable(dsn, obs, size, relaxed=True),
        lambda size: LeaseTable(dsn, obs, size, relaxed=False),
        lambda size: Advisory(dsn, obs, size),
    ]
    try:
        for make in makers:
            await _subject_rounds(make, args, results)
    finally:
        obs.close()
    return results


_COLUMNS = (
    ("round_trips", "round trips", "{:.2f}"),
    ("statements_top", "statements", "{:.2f}"),
    ("statements_nested", "in functions", "{:.2f}"),
    ("wal_records", "WAL records", "{:.1f}"),
    ("wal_bytes", "WAL bytes", "{:,.0f}"),
    ("wal_syncs", "WAL syncs", "{:.2f}"),
    ("server_exec_us", "server exec µs", "{:,.0f}"),
    ("us_per_unit", "wall µs", "{:,.0f}"),
)


def _median(rounds: list[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in rounds)


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Postgres cost per pair: statements, round trips, WAL",
        "",
        f"`{meta['command']}`",
        "",
        f"- date: {meta['date']}; Postgres {meta['server_version']}; Python {meta['python']};"
        f" {meta['cpus']} CPUs; load average at start {meta['load_start']}, at end"
        f" {meta['load_end']}",
        f"- {meta['pairs']} pairs / {meta['cycles']} hand-off cycles per batch, {meta['rounds']}"
        " rounds; medians over the rounds. Per pair (per cycle for a hand-off). Round trips"
        " counted client-side; statements (top-level, and run inside threadlock's plpgsql"
        " functions) and server exec µs from pg_stat_statements; WAL from pg_stat_wal (the"
        " whole server, the WAL writer's background flushes included). Counts are robust on"
        " a loaded machine; the µs are not.",
        "",
    ]
    batches: list[str] = []
    for per_subject in results.values():
        for batch in per_subject:
            if batch not in batches:
                batches.append(batch)
    for batch in batches:
        lines += [f"## {batch}", ""]
        head = "| subject | commit | " + " | ".join(c[1] for c in _COLUMNS) + " | per s |"
        lines += [head, "| --- | --- |" + " ---: |" * (len(_COLUMNS) + 1)]
        for label, per_subject in results.items():
            if batch not in per_subject:
                continue
            rounds = per_subject[batch]
            name, mode = label.rsplit(" (", 1)
            cells = [fmt.format(_median(rounds, field)) for field, _, fmt in _COLUMNS]
            lines.append(
                f"| {name} | {mode.rstrip(')')} | "
                + " | ".join(cells)
                + f" | {_median(rounds, 'per_s'):,.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _parse_levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres_cost")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=_parse_levels, default=[1, 8, 32])
    parser.add_argument("--out", type=Path, help="write postgres-cost.json/.md here")
    args = parser.parse_args()
    from tests._servers.postgres_server import PostgresServer

    server = PostgresServer.create(settings=_SETTINGS)
    server.start()
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        with psycopg.connect(server.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            version = "?" if row is None else str(row[0])
        results = asyncio.run(measure(server.dsn, args))
    finally:
        server.destroy()
    argv = " ".join(
        f"--{k} {','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k != "out" and v is not None
    )
    meta = {
        "command": f"python -m benchmarks.postgres_cost {argv}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "server_version": version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "pairs": args.pairs,
        "cycles": args.cycles,
        "rounds": args.rounds,
        "settings": _SETTINGS,
    }
    text = render(results, meta)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "postgres-cost.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=1) + "\n"
        )
        (args.out / "postgres-cost.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
