"""Cancellation while a round trip is in flight: acquire and release run unshielded.

An acquire cancelled in flight runs the shielded ``abandon``, which also writes the acquire's
tombstone, so that its attempt changes nothing should its bytes reach Redis only after the
abandon. A release cancelled in flight releases again, shielded.
"""

from __future__ import annotations

import anyio
import pytest

from threadlock.backends.redis import RedisThreadLock
from threadlock.backends.redis.keys import waiter_id

pytestmark = pytest.mark.anyio


async def test_an_attempt_that_arrives_after_its_abandon_changes_nothing(
    redis_lock: RedisThreadLock,
) -> None:
    lock = redis_lock
    script = lock._commands.script_unshielded
    names = lock._names("late")
    token = "ab" * 16
    keys = names.acquire_keys(waiter_id(token))
    assert await script("abandon", keys, b"p", token) == 0
    # The cancelled attempt's bytes reach Redis only now: the free path ...
    reply = await script("acquire", keys, b"pw", token, 30_000, "o", b"late", b"5000")
    assert reply == [2]
    assert await lock.inspect("late") is None
    # ... and the queueing path.
    holder = await lock.acquire("late", ttl=30.0, timeout=0)
    reply = await script("acquire", keys, b"pw", token, 30_000, "o", b"late", b"5000")
    assert reply == [2]
    info = await lock.inspect("late")
    assert info is not None
    assert info.waiters == 0
    assert 0 < await lock.client.pttl(keys[6]) <= 60_000  # the tombstone expires
    assert await lock.release(holder)
    assert await lock.inspect("late") is None


async def test_acquire_and_release_cancelled_in_flight_leave_nothing_held(
    redis_lock: RedisThreadLock,
) -> None:
    lock = redis_lock
    client = lock.client
    await lock.release(await lock.acquire("paused", ttl=30.0))  # scripts loaded, pool warm

    # An acquire whose round trip is stuck (the server pauses writes) and is cancelled.
    await client.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    with anyio.move_on_after(0.05) as scope:
        await lock.acquire("paused", ttl=30.0, timeout=None)
    assert scope.cancelled_caught
    with anyio.fail_after(10):
        while await lock.inspect("paused") is not None:
            await anyio.sleep(0.02)

    # A release stuck the same way, then cancelled: the lease is released all the same.
    lease = await lock.acquire("paused", ttl=30.0, timeout=0)
    await client.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    with anyio.move_on_after(0.05) as scope:
        await lock.release(lease)
    assert scope.cancelled_caught
    assert await lock.inspect("paused") is None
    again = await lock.acquire("paused", ttl=30.0, timeout=0)
    assert again.fence > lease.fence
    assert await lock.release(again)
    assert await lock.held() == []
