"""Reference latencies for the Redis hand-off targets: what the machine allows at all.

``python -m benchmarks.redis_latency_floor [--redis-url URL] [--samples N]``

Prints, against a private ``redis-server`` (or ``--redis-url``):

* ``PING`` in a hot loop (what S1's ``redis-ping`` floor measures);
* ``PING`` right after a 2 ms sleep (S2's holders sleep 2 ms before they release);
* a bare ``PUBLISH`` delivered to a subscriber, sent right after a 2 ms sleep: the least a
  notified hand-off can cost (one trip to the server, one notification back), with no lock
  at all.

No lock is involved; it tells how far S2/S3 can go on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
from time import perf_counter_ns

import redis.asyncio as aioredis


def _q(samples: list[int], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] / 1000


async def measure(url: str, samples: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    listener = aioredis.Redis.from_url(url)
    pubsub = listener.pubsub()
    channel = "threadlock-latency-floor"
    try:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1)
        for _ in range(200):
            await client.ping()
        hot: list[int] = []
        for _ in range(samples):
            start = perf_counter_ns()
            await client.ping()
            hot.append(perf_counter_ns() - start)
        cold: list[int] = []
        for _ in range(samples):
            await asyncio.sleep(0.002)
            start = perf_counter_ns()
            await client.ping()
            cold.append(perf_counter_ns() - start)
        arrived = asyncio.Event()
        stamps: list[int] = []

        async def read() -> None:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message and message["type"] == "message":
                    stamps.append(perf_counter_ns())
                    arrived.set()

        reader = asyncio.get_running_loop().create_task(read())
        delivered: list[int] = []
        try:
            for _ in range(samples):
                await asyncio.sleep(0.002)
                arrived.clear()
                start = perf_counter_ns()
                await client.publish(channel, "x")
                await arrived.wait()
                delivered.append(stamps[-1] - start)
        finally:
            reader.cancel()
        return {
            "hot_ping_p50_us": _q(hot, 0.5),
            "hot_ping_p99_us": _q(hot, 0.99),
            "ping_after_sleep_p50_us": _q(cold, 0.5),
            "ping_after_sleep_p99_us": _q(cold, 0.99),
            "publish_delivery_after_sleep_p50_us": _q(delivered, 0.5),
            "publish_delivery_after_sleep_p99_us": _q(delivered, 0.99),
        }
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_latency_floor")
    parser.add_argument("--redis-url", help="default: a private redis-server")
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        from tests._servers.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        result = asyncio.run(measure(url, args.samples))
    finally:
        if server is not None:
            server.stop()
    for name, value in result.items():
        print(f"{name}: {value:.0f}")


if __name__ == "__main__":
    main()
