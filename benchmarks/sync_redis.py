"""The synchronous face on Redis against redis-py's sync ``Lock``, in one run, on one server.

    python -m benchmarks.sync_redis                       # a private redis-server
    python -m benchmarks.sync_redis --redis-url URL --pairs 2000 --rounds 7

Uncontended acquire+release pairs, one thread, one key each pair round (S1's shape, for
blocking code; the async harness of ``benchmarks/runner.py`` drives async adapters on its
own loop, so these two run here instead):

* ``sync``: ``threadlock.sync`` ``lock.acquire`` + ``lock.release`` (the async backend's
  ``EVALSHA`` each, run on the process's loop through the blocking portal);
* ``sync-hold``: ``with lock.hold(key):`` (also starts and stops the renewal task);
* ``redis-py``: ``redis.Redis().lock(key).acquire()`` + ``release()`` (sync client, a
  ``SET NX PX`` and a compare-and-delete script).
* ``async``: ``RedisThreadLock.acquire`` + ``release`` awaited on a loop of its own, the cost
  the portal adds to.

Rounds interleave the locks and rotate their order. Pairs/s is the median over rounds; the
ratio ``sync / redis-py`` is the figure of issue 13 (goal >= 0.8). It writes
``benchmarks/results/sync-redis.json`` unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import redis
import threadlock.sync
from benchmarks.adapter import AdapterConfig
from benchmarks.adapters_redis import redis_url
from threadlock.backends.redis import RedisThreadLock

RESULTS = Path(__file__).resolve().parent / "results"


def _time(pairs: int, pair: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for i in range(pairs):
        pair(i)
    return pairs / (time.perf_counter() - started)


def run(url: str, pairs: int, rounds: int) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    lock = threadlock.sync.from_url(url, prefix=f"bench-sync-{tag}")
    client = redis.Redis.from_url(url)

    def sync_pair(i: int) -> None:
        lock.release(lock.acquire("k", ttl=30))

    def hold_pair(i: int) -> None:
        with lock.hold("k", ttl=30):
            pass

    def redis_py_pair(i: int) -> None:
        peer = client.lock(f"bench-redis-py-{tag}", timeout=30)
        peer.acquire()
        peer.release()

    async def async_rate() -> float:
        async with RedisThreadLock.from_url(url, prefix=f"bench-async-{tag}") as backend:
            started = time.perf_counter()
            for _ in range(pairs):
                await backend.release(await backend.acquire("k", ttl=30))
            return pairs / (time.perf_counter() - started)

    runs: dict[str, Callable[[], float]] = {
        "sync": lambda: _time(pairs, sync_pair),
        "sync-hold": lambda: _time(pairs, hold_pair),
        "redis-py": lambda: _time(pairs, redis_py_pair),
        "async": lambda: anyio.run(async_rate),
    }
    for measure in runs.values():  # warm-up: scripts loaded, connections open
        measure()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(runs[name]())
    lock.close()
    client.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "pairs": pairs,
        "rounds": rounds,
        "pairs_per_s": medians,
        "rounds_pairs_per_s": rates,
        "ratio_sync_vs_redis_py": medians["sync"] / medians["redis-py"],
        "ratio_hold_vs_redis_py": medians["sync-hold"] / medians["redis-py"],
        "ratio_sync_vs_async": medians["sync"] / medians["async"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    options = {"redis_url": args.redis_url} if args.redis_url else {}
    url = redis_url(AdapterConfig(options=options, loop="asyncio", run_id=secrets.token_hex(3)))
    doc = run(url, args.pairs, args.rounds)
    for name, rate in doc["pairs_per_s"].items():
        print(f"{name:10s} {rate:10.0f} pairs/s")
    ratio = doc["ratio_sync_vs_redis_py"]
    verdict = "PASS" if ratio >= 0.8 else "MISS"
    print(f"{verdict} sync / redis-py = {ratio:.2f} (goal >= 0.8)")
    if not args.no_save:
        (RESULTS / "sync-redis.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
