"""A separate OS process for the Postgres tests (run as a script, never imported by pytest).

python _pg_worker.py exclusion DSN TABLE KEY SECTIONS LOGFILE
python _pg_worker.py waiter DSN TABLE KEY GRACE
python _pg_worker.py schema DSN TABLE START_AT
"""

from __future__ import annotations

import os
import sys
import time

import anyio

from threadlock.backends.postgres import PostgresThreadLock


async def exclusion(dsn: str, table: str, key: str, sections: int, logfile: str) -> None:
    fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    try:
        async with PostgresThreadLock.from_url(dsn, table=table, max_size=4) as lock:
            for _ in range(sections):
                async with lock.hold(key, ttl=30.0, timeout=60.0) as lease:
                    # O_APPEND writes of one short line are atomic: the file order is the
                    # order in which the sections really entered and left.
                    os.write(fd, f"enter {pid} {lease.fence}\n".encode())
                    await anyio.sleep(0)
                    os.write(fd, f"leave {pid} {lease.fence}\n".encode())
    finally:
        os.close(fd)


async def waiter(dsn: str, table: str, key: str, grace: float) -> None:
    async with PostgresThreadLock.from_url(dsn, table=table, grace=grace) as lock:
        lease = await lock.acquire(key, ttl=60.0, timeout=None)
        print(f"granted {lease.fence}", flush=True)
        await anyio.sleep(3600)


async def schema(dsn: str, table: str, start_at: float) -> None:
    async with PostgresThreadLock.from_url(dsn, table=table) as lock:
        await anyio.sleep(max(0.0, start_at - time.time()))
        await lock.create_schema()
        lease = await lock.acquire(f"from-{os.getpid()}", ttl=5.0, timeout=0)
        assert await lock.release(lease)
    print("ok", flush=True)


def main(argv: list[str]) -> None:
    mode, dsn, table = argv[1:4]
    if mode == "exclusion":
        anyio.run(exclusion, dsn, table, argv[4], int(argv[5]), argv[6])
    elif mode == "waiter":
        anyio.run(waiter, dsn, table, argv[4], float(argv[5]))
    elif mode == "schema":
        anyio.run(schema, dsn, table, float(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
