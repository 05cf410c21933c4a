"""How long a fresh lease exists only on the Redis master, and what ``WAIT 1 0`` would cost.

``python -m benchmarks.failover_window [--n 2000]`` starts a master, a replica and three
sentinels on loopback (``tests/_servers/sentinel.py``) and measures, ``--n`` times each:

* the window: after ``acquire()`` returns, how long until the lease key is on the replica
  (read from the replica in a loop). A failover inside that window promotes a replica that
  never saw the lease: another holder can be granted the key while the first still runs;
* ``acquire()`` + ``release()`` alone, and each followed by ``WAIT 1 0`` (block until one
  replica acknowledged), on the backend's own client: the cost of a WAIT-based option.

Timing figures are for this benchmark only; tests never assert them.
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio
import redis.asyncio as aioredis
from tests._servers.sentinel import SentinelSet

from benchmarks.stats import percentile
from threadlock.backends.redis import RedisThreadLock


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(sorted(values), q) * 1000:.3f}"


async def _measure(sentinels: SentinelSet, n: int) -> list[str]:
    master = sentinels.master()
    replica = next(s for s in sentinels.servers if s is not master)
    reader = aioredis.Redis(host="127.0.0.1", port=replica.port)
    lines: list[str] = []
    async with RedisThreadLock.from_url(sentinels.url, prefix="fw") as lock:
        await lock.release(await lock.acquire("warm", ttl=5, timeout=1))
        windows: list[float] = []
        unseen_at_return = 0
        for i in range(n):
            lease = await lock.acquire(f"w{i}", ttl=5, timeout=1)
            returned = time.perf_counter()
            polls = 0
            name = lock._names(f"w{i}").lock[0]  # the lease key (keys.py)
            while not await reader.exists(name):
                polls += 1
            windows.append(time.perf_counter() - returned)
            if polls:
                unseen_at_return += 1
            await lock.release(lease)
        lines.append(
            f"window (acquire returned -> lease on the replica), n={n}: "
            f"p50={_ms(windows, 50)} ms p99={_ms(windows, 99)} ms "
            f"max={max(windows) * 1000:.3f} ms; "
            f"not yet on the replica at the first read: {unseen_at_return}/{n}"
        )
        for wait in (False, True):
            took: list[float] = []
            for i in range(n):
                began = time.perf_counter()
                lease = await lock.acquire(f"c{wait}{i}", ttl=5, timeout=1)
                if wait:
                    await lock.client.execute_command("WAIT", 1, 0)
                await lock.release(lease)
                if wait:
                    await lock.client.execute_command("WAIT", 1, 0)
                took.append(time.perf_counter() - began)
            label = "acquire+WAIT 1 0+release+WAIT 1 0" if wait else "acquire+release"
            lines.append(f"{label}, n={n}: p50={_ms(took, 50)} ms p99={_ms(took, 99)} ms")
    await reader.aclose()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover_window")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with SentinelSet() as sentinels:
        for line in anyio.run(_measure, sentinels, args.n):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
