"""One long-lived chaos worker against a private Postgres, its memory and the server's sampled.

``python -m benchmarks.rss_probe --duration 150`` runs the chaos run's holder loop
(:func:`benchmarks.chaos.holder_loop`: 3 tasks, 50 keys, the same section lengths) in this
process, with no faults and no kills, and prints every ``--every`` seconds this process's
RSS, anonymous memory and PSS, and the server's (summed over its processes, with their
count). It tells a leak in a worker (its pool, its listener) from what a chaos run's sums
show: short-lived worker incarnations and Postgres backends touching shared buffers.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import anyio

from benchmarks.chaos import ChaosConfig, holder_loop
from benchmarks.chaos_resources import resources


async def probe(duration: float, every: float) -> None:
    from tests._servers.postgres_server import PostgresServer

    from threadlock.backends.postgres import PostgresThreadLock

    server = PostgresServer.create()
    server.start()
    try:
        config = ChaosConfig(backend="postgres")
        lock = PostgresThreadLock.from_url(
            server.dsn, table="rss_probe", grace=config.grace, release_timeout=2.0, max_size=4
        )
        lines = [0]

        def write(line: str) -> None:
            lines[0] += 1

        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        async with lock:
            await lock.create_schema()
            began = time.monotonic()
            async with anyio.create_task_group() as tg:
                for index in range(config.tasks):
                    tg.start_soon(holder_loop, lock, config, random.Random(index), write)
                while (elapsed := time.monotonic() - began) < duration:
                    r = resources([postmaster], [os.getpid()], 0)
                    print(
                        f"t={elapsed:4.0f}s log_lines={lines[0]} worker: rss={r['workers_rss_kb']}"
                        f" anon={r['workers_anon_kb']} pss={r['workers_pss_kb']} kB; server:"
                        f" procs={r['server_procs']} rss={r['server_rss_kb']}"
                        f" anon={r['server_anon_kb']} shmem={r['server_shmem_kb']}"
                        f" pss={r['server_pss_kb']} kB",
                        flush=True,
                    )
                    await anyio.sleep(every)
                tg.cancel_scope.cancel()
    finally:
        server.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss_probe")
    parser.add_argument("--duration", type=float, default=150.0)
    parser.add_argument("--every", type=float, default=15.0)
    args = parser.parse_args(argv)
    anyio.run(probe, args.duration, args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
