"""Redis server time per uncontended acquire+release pair: threadlock, redis-py's Lock, a floor.

``python -m benchmarks.redis_server_time [--redis-url URL] [--pairs N] [--rounds R]``

Against a private ``redis-server`` (or ``--redis-url``, which should be otherwise idle), each
round runs ``N`` pairs of each lock, one after the other, each on fresh keys and then ``N``
on one key, and reads ``INFO commandstats`` around each batch (after ``CONFIG RESETSTAT``).

* ``server µs/pair``: the ``usec`` of the top-level commands only, the ones the client sent
  (counted on the client, by wrapping its ``execute_command``). ``INFO commandstats`` also
  has a row for every command a script runs (``SET``, ``GET`` ... called by ``redis.call``),
  and that time is already inside the ``EVALSHA`` row: adding those rows would count it
  twice (this tool did so before issue 14's floor run). See
  :func:`benchmarks.redis_commands.server_cost`.
* ``server calls/pair``: every call the server executed, script-internal ones included;
  ``sent/pair``: the client's commands (round trips).

The three locks: threadlock (``RedisThreadLock``), redis-py's ``Lock`` (``SET NX PX`` and a
compare-and-delete ``EVALSHA``), and ``redis-script-floor``
(:class:`benchmarks.adapters_redis.ScriptFloorAdapter`): the cheapest pair of scripts we
found that keeps a lease with a TTL and a fence. It is the floor that issue 14's "<= 1.5x
redis-py" goal is measured against. A figure of the server alone, so the client's CPU and the
machine's load move it far less than S1.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from benchmarks.adapters_redis import FLOOR_ACQUIRE, FLOOR_RELEASE
from benchmarks.redis_commands import server_cost
from threadlock.backends.redis import RedisThreadLock

__all__ = ["Batch", "measure"]

_OWN = frozenset({"info", "config"})


@dataclass(frozen=True)
class Batch:
    usec_per_pair: float
    calls_per_pair: float
    sent_per_pair: float
    mixed: tuple[str, ...]


def _count_sent(client: aioredis.Redis, sent: Counter[str]) -> None:
    """Count every command ``client`` sends, by name (an instance attribute wraps it)."""
    inner = client.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        sent[str(args[0]).split(" ", 1)[0].lower()] += 1
        return await inner(*args, **options)

    client.execute_command = execute_command  # type: ignore[method-assign]


async def _stats(client: aioredis.Redis) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = await client.info("commandstats")
    return info


async def _batch(
    admin: aioredis.Redis, sent: Counter[str], pairs: int, pair: Callable[[int], Awaitable[None]]
) -> Batch:
    await admin.config_resetstat()
    before = await _stats(admin)
    sent.clear()
    for n in range(pairs):
        await pair(n)
    after = await _stats(admin)
    cost = server_cost(before, after, sent, ignore=_OWN)
    return Batch(cost.usec / pairs, cost.calls / pairs, sum(sent.values()) / pairs, cost.mixed)


async def measure(url: str, pairs: int, rounds: int) -> dict[str, list[Batch]]:
    sent: Counter[str] = Counter()
    admin = aioredis.Redis.from_url(url)
    client = aioredis.Redis.from_url(url)
    ours = aioredis.Redis.from_url(url)
    for c in (client, ours):
        _count_sent(c, sent)
    lock = RedisThreadLock(ours, prefix="st", _owns_client=True)
    floor_acquire = client.register_script(FLOOR_ACQUIRE)
    floor_release = client.register_script(FLOOR_RELEASE)
    px = 30_000
    results: dict[str, list[Batch]] = {}
    try:
        await lock.release(await lock.acquire("warm", ttl=30))  # scripts loaded
        warm = client.lock("st-warm", timeout=30)
        await warm.acquire()
        await warm.release()
        await floor_release(keys=["fl-warm"], args=["x", px])
        await floor_acquire(keys=["fl-warm"], args=["x", px])
        for r in range(rounds):

            async def ours_fresh(n: int, r: int = r) -> None:
                await lock.release(await lock.acquire(f"f{r}-{n}", ttl=30))

            async def ours_same(n: int) -> None:
                await lock.release(await lock.acquire("same", ttl=30))

            async def peer_fresh(n: int, r: int = r) -> None:
                peer = client.lock(f"st-f{r}-{n}", timeout=30)
                await peer.acquire()
                await peer.release()

            async def peer_same(n: int) -> None:
                peer = client.lock("st-same", timeout=30)
                await peer.acquire()
                await peer.release()

            async def floor_pair(key: str) -> None:
                token = secrets.token_hex(16)
                if not await floor_acquire(keys=[key], args=[token, px]):
                    raise RuntimeError(f"floor lock {key} was busy")
                if not await floor_release(keys=[key], args=[token, px]):
                    raise RuntimeError(f"floor lock {key} was lost")

            async def floor_fresh(n: int, r: int = r) -> None:
                await floor_pair(f"fl-f{r}-{n}")

            async def floor_same(n: int) -> None:
                await floor_pair("fl-same")

            for name, pair in (
                ("threadlock, fresh keys", ours_fresh),
                ("redis-py Lock, fresh keys", peer_fresh),
                ("script floor, fresh keys", floor_fresh),
                ("threadlock, one key", ours_same),
                ("redis-py Lock, one key", peer_same),
                ("script floor, one key", floor_same),
            ):
                results.setdefault(name, []).append(await _batch(admin, sent, pairs, pair))
    finally:
        await lock.aclose()
        await client.aclose()
        await admin.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_server_time")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        from tests._servers.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        results = asyncio.run(measure(url, args.pairs, args.rounds))
    finally:
        if server is not None:
            server.stop()
    print(f"{args.pairs} pairs per batch, {args.rounds} rounds; median over rounds (all rounds)")
    print("server µs/pair: top-level commands only (a script's usec holds its calls)")
    for name, batches in results.items():
        usec = [b.usec_per_pair for b in batches]
        spread = " ".join(f"{u:.2f}" for u in usec)
        mixed = {m for b in batches for m in b.mixed}
        note = f"; mixed rows (shared by calls): {sorted(mixed)}" if mixed else ""
        print(
            f"{name}: server µs/pair {statistics.median(usec):.2f} ({spread}), "
            f"server calls/pair {batches[0].calls_per_pair:g}, "
            f"sent/pair {batches[0].sent_per_pair:g}{note}"
        )


if __name__ == "__main__":
    main()
