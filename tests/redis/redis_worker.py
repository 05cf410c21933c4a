"""A separate OS process for the Redis tests (run as a script, not collected by pytest).

python redis_worker.py sections URL PREFIX KEY COUNT OUTFILE
    hold KEY COUNT times; append "fence start_ns end_ns" per section to OUTFILE
    (CLOCK_MONOTONIC is shared by every process on Linux, so the times compare).
python redis_worker.py wait URL PREFIX KEY GRACE
    queue for KEY (ttl 60 s, no timeout); print "GOT" if it is ever granted.
"""

from __future__ import annotations

import sys
import time

import anyio

from threadlock.backends.redis import RedisThreadLock


async def sections(url: str, prefix: str, key: str, count: int, out: str) -> None:
    rows = []
    async with RedisThreadLock.from_url(url, prefix=prefix) as lock:
        for _ in range(count):
            async with lock.hold(key, ttl=30.0, timeout=120.0) as lease:
                start = time.monotonic_ns()
                await anyio.sleep(0)
                end = time.monotonic_ns()
            rows.append(f"{lease.fence} {start} {end}\n")
    with open(out, "w") as handle:
        handle.writelines(rows)


async def wait(url: str, prefix: str, key: str, grace: float) -> None:
    async with RedisThreadLock.from_url(url, prefix=prefix, grace=grace) as lock:
        print("WAITING", flush=True)
        await lock.acquire(key, ttl=60.0, timeout=None)
        print("GOT", flush=True)
        await anyio.sleep(3600)


def main(argv: list[str]) -> None:
    mode, url, prefix, key, *rest = argv
    if mode == "sections":
        anyio.run(sections, url, prefix, key, int(rest[0]), rest[1])
    elif mode == "wait":
        anyio.run(wait, url, prefix, key, float(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
