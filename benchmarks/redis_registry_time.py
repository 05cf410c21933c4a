"""Redis server time of the run registry's reads with many runs registered (issue 15, 6).

``python -m benchmarks.redis_registry_time [--redis-url URL] [--ops N] [--sizes 10,1000,10000]``

For each size, one key's registry is filled with that many entries (written straight into the
runs hash and its order, in the layout of ``lua/track.lua``), the key is held, and ``N`` of
each operation run: ``inspect``, a fail-fast acquire that finds the key busy (its reply
carries the newest run id), and ``track_run`` of a new run id (then untracked again, not
counted). Around each batch ``INFO commandstats`` is read after ``CONFIG RESETSTAT``: the
server µs per operation are the ``usec`` of ``EVALSHA`` (which holds the calls its script
makes), and ``hgetall`` counts the whole-hash reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from threadlock import ThreadBusy
from threadlock.backends.redis import RedisThreadLock
from threadlock.backends.redis.keys import digest
from threadlock.testing.registry_conformance import run_record


async def _batch(
    admin: aioredis.Redis, ops: int, op: Callable[[int], Awaitable[None]]
) -> tuple[float, float]:
    await admin.config_resetstat()
    for n in range(ops):
        await op(n)
    info: dict[str, dict[str, Any]] = await admin.info("commandstats")
    usec = int(info.get("cmdstat_evalsha", {}).get("usec", 0))
    hgetall = int(info.get("cmdstat_hgetall", {}).get("calls", 0))
    return usec / ops, hgetall / ops


async def _fill(admin: aioredis.Redis, prefix: str, key: str, size: int) -> None:
    base = f"{prefix}:{{{digest(key)}}}"
    seconds, micros = await admin.time()
    start = seconds * 1_000_000 + micros - size
    pipe = admin.pipeline(transaction=False)
    for n in range(size):
        order = start + n
        document = json.dumps([key, "run", f"run_{n}", key, float(n), 1, "bench"])
        pipe.hset(f"{base}:runs", f"run_{n}", f"{order} {document}")
        pipe.zadd(f"{base}:order", {f"run_{n}": order})
    pipe.pexpire(f"{base}:runs", 3_600_000)
    pipe.pexpire(f"{base}:order", 3_600_000)
    await pipe.execute()


async def measure(url: str, ops: int, sizes: list[int]) -> list[tuple[int, str, float, float]]:
    admin = aioredis.Redis.from_url(url)
    lock = RedisThreadLock(aioredis.Redis.from_url(url), prefix="rt", _owns_client=True)
    rows: list[tuple[int, str, float, float]] = []
    try:
        for size in sizes:
            key = f"size-{size}"
            await _fill(admin, "rt", key, size)
            lease = await lock.acquire(key, ttl=600)

            async def inspect(n: int, key: str = key) -> None:
                await lock.inspect(key)

            async def busy(n: int, key: str = key) -> None:
                try:
                    await lock.acquire(key, ttl=30, timeout=0)
                except ThreadBusy:
                    return
                raise AssertionError("the key should be busy")

            async def track(n: int, key: str = key) -> None:
                await lock.track_run(run_record(key, f"new_{n}", 1.0))

            for name, op in (("inspect", inspect), ("busy reply", busy), ("track", track)):
                usec, hgetall = await _batch(admin, ops, op)
                rows.append((size, name, usec, hgetall))
            for n in range(ops):
                await lock.untrack_run(key, f"new_{n}")
            await lock.release(lease)
    finally:
        await lock.aclose()
        await admin.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_registry_time")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    server = None
    url = args.redis_url
    if url is None:
        from tests._servers.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        rows = asyncio.run(measure(url, args.ops, sizes))
    finally:
        if server is not None:
            server.stop()
    print(f"{args.ops} operations per batch; server µs per operation (EVALSHA), HGETALL per op")
    for size, name, usec, hgetall in rows:
        print(f"{size:>6} runs  {name:<10}  {usec:9.2f} µs  hgetall/op {hgetall:g}")


if __name__ == "__main__":
    main()
