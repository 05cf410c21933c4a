"""Faults against a real Postgres: restarts, a killed listener, a killed waiter process, and
exclusion across OS processes.

These tests restart or stop the session's server; each waits until it is back.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import psycopg
import pytest
from tests._servers.postgres_server import PostgresServer

from threadlock import Lease, LeaseLost
from threadlock.backends.postgres import PostgresThreadLock

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("_pg_worker.py")


async def _wait_for_waiters(lock: PostgresThreadLock, key: str, count: int) -> None:
    with anyio.fail_after(15):
        while (info := await lock.inspect(key)) is None or info.waiters < count:
            await anyio.sleep(0.01)


async def test_restart_during_hold_keeps_the_lease_and_fences_rise(
    pg_server: PostgresServer, pg_lock: PostgresThreadLock
) -> None:
    # A fast restart (clean shutdown) shorter than the TTL: renewals fail for a moment, are
    # retried, and the lease survives (the tables are logged).
    async with pg_lock.hold("k", ttl=3.0) as lease:
        await anyio.to_thread.run_sync(pg_server.restart)
        await anyio.sleep(2.0)  # renewals must have succeeded again
        info = await pg_lock.inspect("k")
        assert info is not None
        assert info.fence == lease.fence
    after = await pg_lock.acquire("k", ttl=3.0, timeout=0)
    assert after.fence > lease.fence
    assert await pg_lock.release(after)


async def test_outage_longer_than_ttl_is_lease_lost_within_about_ttl(
    pg_server: PostgresServer, pg_lock: PostgresThreadLock
) -> None:
    ttl = 1.5
    body_done = False
    started = stopped_at = cancelled_at = 0.0
    lost: LeaseLost | None = None

    async def body() -> None:
        nonlocal body_done, started, stopped_at, cancelled_at
        async with pg_lock.hold("k", ttl=ttl) as lease:
            fences.append(lease.fence)
            started = anyio.current_time()
            await anyio.to_thread.run_sync(pg_server.stop)
            stopped_at = anyio.current_time()
            try:
                await anyio.sleep(30)
                body_done = True
            finally:
                cancelled_at = anyio.current_time()

    fences: list[int] = []
    try:
        try:
            await body()
        except LeaseLost as error:
            lost = error
        learnt = anyio.current_time()
    finally:
        if not pg_server.running():
            await anyio.to_thread.run_sync(pg_server.start)
    assert not body_done
    assert lost is not None
    assert lost.fence == fences[0]
    # The body is cancelled within about the TTL; LeaseLost comes out after the shielded
    # release at the end of hold() gave up (bounded by release_timeout=5 s).
    assert stopped_at <= cancelled_at < started + ttl + 0.5
    assert learnt - started < ttl + 6.0
    fresh = await pg_lock.acquire("k", ttl=5.0, timeout=10)
    assert fresh.fence > fences[0]
    assert await pg_lock.release(fresh)


async def test_crash_with_unlogged_tables_loses_leases_but_fences_rise(
    pg_server: PostgresServer, pg_dsn: str, pg_table: str
) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, unlogged=True) as lock:
        await lock.create_schema()
        lease = await lock.acquire("k", ttl=60.0)
        # An immediate stop is a crash: unlogged tables come back empty.
        await anyio.to_thread.run_sync(pg_server.stop, "immediate")
        await anyio.to_thread.run_sync(pg_server.start)
        with anyio.fail_after(30):
            while True:
                try:
                    info = await lock.inspect("k")
                    break
                except Exception:
                    await anyio.sleep(0.1)
        assert info is None
        with pytest.raises(LeaseLost):
            await lock.extend(lease)
        fresh = await lock.acquire("k", ttl=5.0, timeout=0)
        assert fresh.fence > lease.fence
        assert await lock.release(fresh)


async def test_killed_listener_reconnects_and_waiters_still_wake(
    pg_dsn: str, pg_table: str
) -> None:
    # grace=60: the heartbeat fallback is 20 s away, so only a notification is fast enough.
    # The holder is another instance: a release by the waiter's own instance would hand the
    # key over in-process, without the listener.
    async with (
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as lock,
        PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=60.0) as other,
    ):
        await lock.create_schema()
        listener = lock._listener
        for round_ in range(3):
            holder = await other.acquire("k", ttl=60.0)
            got: list[Lease] = []

            async def waiter() -> None:
                got.append(await lock.acquire("k", ttl=60.0, timeout=None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await _wait_for_waiters(lock, "k", 1)
                with anyio.fail_after(10):
                    while listener.backend_pid() is None:
                        await anyio.sleep(0.01)
                pid = listener.backend_pid()
                connects = listener.connects
                async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
                    await c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                with anyio.fail_after(10):
                    while listener.connects == connects:
                        await anyio.sleep(0.01)
                assert listener.backend_pid() not in (None, pid)
                if round_ == 2:  # also: a release while the listener is down is not lost
                    pid = listener.backend_pid()
                    connects = listener.connects
                    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
                        await c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                assert await other.release(holder)
                with anyio.fail_after(5):
                    while not got:
                        await anyio.sleep(0.005)
            assert got[0].fence > holder.fence
            assert await lock.release(got[0])


async def test_sigkilled_waiter_process_is_skipped_within_the_grace(
    pg_dsn: str, pg_table: str
) -> None:
    grace = 1.0
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table, grace=grace) as lock:
        await lock.create_schema()
        holder = await lock.acquire("k", ttl=60.0)
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "waiter", pg_dsn, pg_table, "k", str(grace)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            await _wait_for_waiters(lock, "k", 1)
            got: list[Lease] = []

            async def local_waiter() -> None:
                got.append(await lock.acquire("k", ttl=60.0, timeout=None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(local_waiter)
                await _wait_for_waiters(lock, "k", 2)
                os.kill(proc.pid, signal.SIGKILL)
                await anyio.to_thread.run_sync(proc.wait)
                # The release hands the key to the dead head waiter first; its provisional
                # grant lapses (by the grace, not the 60 s ttl) and the queue moves on.
                assert await lock.release(holder)
                handed = await lock.inspect("k")
                with anyio.fail_after(30):  # a hang guard, well inside the 60 s ttl
                    while not got:
                        await anyio.sleep(0.01)
            # Order of events: holder -> the dead waiter (never claimed) -> the live waiter.
            assert handed is not None
            assert f":{proc.pid}" in handed.owner
            assert holder.fence < handed.fence < got[0].fence
            info = await lock.inspect("k")
            assert info is not None
            assert info.fence == got[0].fence
            assert info.waiters == 0  # the dead waiter is gone from the queue
            assert await lock.release(got[0])
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)  # reads and closes both pipes


async def test_exclusion_across_four_processes(pg_dsn: str, pg_table: str, tmp_path: Path) -> None:
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as lock:
        await lock.create_schema()
    log = tmp_path / "fences.log"
    sections = 500
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "exclusion",
                pg_dsn,
                pg_table,
                "shared",
                str(sections),
                str(log),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=110)
        assert proc.returncode == 0, err
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 4 * sections
    fences: list[int] = []
    pids = set()
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        kind_in, pid_in, fence_in = enter.split()
        kind_out, pid_out, fence_out = leave.split()
        # no overlap: every "enter" is followed by the same holder's "leave"
        assert (kind_in, kind_out) == ("enter", "leave")
        assert (pid_in, fence_in) == (pid_out, fence_out)
        fences.append(int(fence_in))
        pids.add(pid_in)
    assert len(pids) == 4
    assert all(a < b for a, b in itertools.pairwise(fences))
