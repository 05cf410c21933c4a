"""100,000 distinct keys through the scripts: what is left has a TTL, and is bounded."""

from __future__ import annotations

import secrets

import anyio
import pytest

from threadlock.backends.redis import RedisThreadLock
from threadlock.backends.redis.keys import digest
from threadlock.backends.redis.scripts import SCRIPT_TEXT

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOTAL = 100_000
BATCH = 2_000


async def test_hundred_thousand_keys_leave_only_bounded_ttl_fence_markers(
    redis_lock: RedisThreadLock,
) -> None:
    lock = redis_lock
    client = lock.client
    # redis-py script objects of the backend's own script texts, for pipelines
    scripts = {name: client.register_script(body) for name, body in SCRIPT_TEXT.items()}
    owner = "scale"
    # Most keys go through the very scripts the backend runs, pipelined for speed ...
    for start in range(0, TOTAL - 1_000, BATCH):
        names = [f"user-{n}" for n in range(start, min(start + BATCH, TOTAL - 1_000))]
        tokens = [secrets.token_hex(16) for _ in names]
        pipe = client.pipeline(transaction=False)
        for n, (name, token) in enumerate(zip(names, tokens, strict=True)):
            keys = lock._names(name).acquire_keys(f"scale{start + n:x}")
            args = ["pt", token, 30_000, owner, name, 5_000]
            await scripts["acquire"](keys, args, client=pipe)
        replies = await pipe.execute()
        assert all(reply[0] == 1 for reply in replies)
        pipe = client.pipeline(transaction=False)
        for name, token in zip(names, tokens, strict=True):
            await scripts["release"](lock._keys(name), ["p", token], client=pipe)
        assert all(reply == 1 for reply in await pipe.execute())

    # ... and the last thousand through the public API, with waiters and hand-offs.
    async def contend(base: int) -> None:
        for n in range(base, TOTAL, 10):
            async with lock.hold(f"user-{n}", ttl=30.0):
                await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for base in range(TOTAL - 1_000, TOTAL - 990):
            tg.start_soon(contend, base)
            tg.start_soon(contend, base)  # two tasks per key: one waits, one holds

    assert await lock.held() == []
    count = 0
    pipe = client.pipeline(transaction=False)
    names = []
    async for name in client.scan_iter(match=f"{lock.prefix}:*", count=5_000):
        names.append(name)
        pipe.pttl(name)
    ttls = await pipe.execute()
    for name, ttl in zip(names, ttls, strict=True):
        count += 1
        assert name.endswith(b":lease"), name
        assert 0 < ttl <= 3_600_000, (name, ttl)  # the free-key marker "F <fence>"
    assert count == TOTAL  # one marker per key used within the last hour, nothing else
    user_0 = f"{lock.prefix}:{{{digest('user-0')}}}:lease".encode()
    assert user_0 in names
    assert (await client.get(user_0)).startswith(b"F ")
    for start in range(0, len(names), 10_000):
        await client.unlink(*names[start : start + 10_000])
