"""Redis server time per uncontended acquire+release pair: threadlock beside redis-py's Lock.

``python -m benchmarks.redis_server_time [--redis-url URL] [--pairs N] [--rounds R]``

Against a private ``redis-server`` (or ``--redis-url``, which should be otherwise idle), each
round runs ``N`` pairs of each lock, one after the other, each on fresh keys and then ``N``
on one key, and reads ``INFO commandstats`` around each batch (after ``CONFIG RESETSTAT``):
the server µs per pair are the ``usec`` of the commands the client sent (``EVALSHA`` holds
the calls its script makes) and the server calls per pair count every call, script-internal
ones included. It is the issue-14 count: a figure of the server alone, so the client's CPU
and the machine's load move it far less than S1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from threadlock.backends.redis import RedisThreadLock

_SENT = {"evalsha", "set", "eval"}  # what the clients send: the time counted


async def _stats(client: aioredis.Redis) -> tuple[int, int]:
    info: dict[str, dict[str, Any]] = await client.info("commandstats")
    usec = calls = 0
    for name, value in info.items():
        command = name.removeprefix("cmdstat_").split("|", 1)[0]
        if command in ("info", "config"):
            continue
        calls += int(value["calls"])
        if command in _SENT:
            usec += int(value["usec"])
    return usec, calls


async def _batch(
    admin: aioredis.Redis, pairs: int, pair: Callable[[int], Awaitable[None]]
) -> tuple[float, float]:
    await admin.config_resetstat()
    for n in range(pairs):
        await pair(n)
    usec, calls = await _stats(admin)
    return usec / pairs, calls / pairs


async def measure(url: str, pairs: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    admin = aioredis.Redis.from_url(url)
    client = aioredis.Redis.from_url(url)
    lock = RedisThreadLock(aioredis.Redis.from_url(url), prefix="st", _owns_client=True)
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        await lock.release(await lock.acquire("warm", ttl=30))  # scripts loaded
        warm = client.lock("st-warm", timeout=30)
        await warm.acquire()
        await warm.release()
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

            for name, pair in (
                ("threadlock, fresh keys", ours_fresh),
                ("redis-py Lock, fresh keys", peer_fresh),
                ("threadlock, one key", ours_same),
                ("redis-py Lock, one key", peer_same),
            ):
                results.setdefault(name, []).append(await _batch(admin, pairs, pair))
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
    for name, values in results.items():
        usec = [v[0] for v in values]
        calls = values[0][1]
        spread = " ".join(f"{u:.2f}" for u in usec)
        print(
            f"{name}: server µs/pair {statistics.median(usec):.2f} ({spread}), "
            f"server calls/pair {calls:g}"
        )


if __name__ == "__main__":
    main()
