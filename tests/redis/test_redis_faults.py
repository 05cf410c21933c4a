"""Faults against real servers: restarts, killed waiters, killed connections, many processes."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from _servers.redis_server import RedisServer
from threadlock import Lease
from threadlock.backends.redis import RedisThreadLock
from threadlock.errors import BackendError, LeaseLost

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("redis_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def wait_for_waiters(lock: RedisThreadLock, key: str, count: int, limit: float = 30) -> None:
    with anyio.fail_after(limit):
        while True:
            info = await lock.inspect(key)
            if info is not None and info.waiters >= count:
                return
            await anyio.sleep(0.01)


async def test_restart_without_data_mid_hold_cancels_body_with_lease_lost(
    private_redis: RedisServer, prefix: str
) -> None:
    ttl = 1.0
    reached_end = False
    async with RedisThreadLock.from_url(private_redis.url, prefix=prefix) as lock:
        started = anyio.current_time()
        with anyio.fail_after(ttl * 10), pytest.raises(LeaseLost) as lost:
            async with lock.hold("restart", ttl=ttl) as lease:
                await anyio.to_thread.run_sync(private_redis.restart)
                await anyio.sleep(60)
                reached_end = True
        assert not reached_end
        assert lost.value.fence == lease.fence
        assert anyio.current_time() - started < ttl * 10
        after = await lock.acquire("restart", ttl=5.0, timeout=0)
        assert after.fence > lease.fence
        assert await lock.release(after)


async def test_sigkilled_waiter_is_skipped_within_the_grace(redis_url: str, prefix: str) -> None:
    grace = 1.5
    key = "sigkill"
    async with RedisThreadLock.from_url(redis_url, prefix=prefix, grace=grace) as lock:
        holder = await lock.acquire(key, ttl=60.0)
        proc = spawn("wait", redis_url, prefix, key, str(grace))
        try:
            await wait_for_waiters(lock, key, 1)
            got: list[Lease] = []

            async def live_waiter() -> None:
                got.append(await lock.acquire(key, ttl=60.0, timeout=None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(live_waiter)
                await wait_for_waiters(lock, key, 2)
                proc.kill()  # SIGKILL: it leaves its queue entry (and a fresh heartbeat)
                proc.wait(10)
                # The key goes to the dead waiter first: it never claims it, so it passes on
                # by the grace, not after the 60 s ttl.
                assert await lock.release(holder)
                handed = await lock.inspect(key)
                with anyio.fail_after(30):  # a hang guard, well inside the 60 s ttl
                    while not got:
                        await anyio.sleep(0.01)
            # Order of events: holder -> the dead waiter (never claimed) -> the live waiter.
            assert handed is not None
            assert f":{proc.pid}" in handed.owner
            assert holder.fence < handed.fence < got[0].fence
            assert await lock.release(got[0])
            assert await lock.inspect(key) is None
        finally:
            proc.kill()
            out, _ = proc.communicate(timeout=10)  # reads and closes both pipes
            assert "GOT" not in out


async def hand_off(
    lock: RedisThreadLock,
    key: str,
    ttl: float,
    before_release: Callable[[], Awaitable[None]] | None = None,
    bound: float = 10.0,
) -> Lease:
    """A holder of ``key`` releases it to a waiting task of the same ``lock`` (after
    ``before_release``); the waiter's lease, released again. ``bound`` guards a hang."""
    holder = await lock.acquire(key, ttl=ttl)
    got: list[Lease] = []

    async def waiter() -> None:
        got.append(await lock.acquire(key, ttl=ttl, timeout=None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_for_waiters(lock, key, 1)
        if before_release is not None:
            await before_release()
        assert await lock.release(holder)
        with anyio.fail_after(bound):
            while not got:
                await anyio.sleep(0.005)
    assert got[0].key == key
    assert await lock.release(got[0])
    return got[0]


async def test_subscriber_reconnects_after_client_kill(redis_url: str, prefix: str) -> None:
    # grace=60: heartbeats every 20 s, holder ttl 60 s; only the notification can wake the
    # waiter within the bound below.
    key = "client-kill"
    async with RedisThreadLock.from_url(redis_url, prefix=prefix, grace=60.0) as lock:

        async def kill_the_subscriber() -> None:
            await anyio.sleep(0.1)  # let the subscription confirm
            killed = await lock.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            assert int(killed) >= 1
            # Wait for the subscriber to come back before the hand-off.
            with anyio.fail_after(10):
                while True:
                    clients = await lock.client.client_list(_type="pubsub")
                    if clients:
                        break
                    await anyio.sleep(0.02)
            await anyio.sleep(0.1)

        for _ in range(2):
            await hand_off(lock, key, 60.0, kill_the_subscriber, bound=5.0)


async def test_exclusion_across_four_processes(redis_url: str, prefix: str, tmp_path: Path) -> None:
    per_process = 500
    outs = [tmp_path / f"sections-{i}.txt" for i in range(4)]
    procs = [
        spawn("sections", redis_url, prefix, "shared", str(per_process), str(out)) for out in outs
    ]

    def join() -> None:
        for proc in procs:
            _, err = proc.communicate(timeout=100)
            assert proc.returncode == 0, err

    await anyio.to_thread.run_sync(join)
    rows = []
    for out in outs:
        for line in out.read_text().splitlines():
            fence, start, end = map(int, line.split())
            rows.append((start, end, fence))
    assert len(rows) == 4 * per_process
    rows.sort()
    for (_, e1, f1), (s2, _, f2) in itertools.pairwise(rows):
        assert e1 <= s2, "two sections overlapped"
        assert f1 < f2, "fences did not increase in time order"


#: Messages anyone who may PUBLISH can send to an inbox: not UTF-8, empty, too few or too
#: many fields, numbers that are not numbers, a stranger's waiter id.
MALFORMED = [
    b"\xff",
    b"",
    b"\xff \xff \xff \xff",
    b"only two",
    b"0" * 40 + b" x y z",
    b"a b c d e f",
    b"\x00\xfe\x01",
]


async def test_malformed_publishes_do_not_kill_the_wake_up_channel(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # grace=3600 and ttl=3600: the waiter's heartbeat and the holder's expiry are an hour
    # away, so within the bound only a notification can hand the key over.
    key = "malformed"
    async with RedisThreadLock.from_url(redis_url, prefix=prefix, grace=3600.0) as lock:
        inbox = f"{lock.prefix}:inbox:{lock._instance}"

        async def publish_malformed() -> None:
            with anyio.fail_after(10):
                while (await lock.client.pubsub_numsub(inbox))[0][1] < 1:
                    await anyio.sleep(0.01)
            # Published before the grant, so the reader meets every one of them first.
            for data in MALFORMED:
                assert await lock.client.publish(inbox, data) == 1

        for _ in range(2):
            await hand_off(lock, key, 3600.0, publish_malformed)
    # Ignored, not survived by a restart of the reader.
    assert not [
        r for r in caplog.records if getattr(r, "event", "") == "redis.subscriber_restarted"
    ]


async def test_a_failed_subscriber_reader_is_restarted_and_its_waiters_recheck(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # As above, only a notification (or the restart's re-check) can hand the key over.
    key = "reader-fails"
    async with RedisThreadLock.from_url(redis_url, prefix=prefix, grace=3600.0) as lock:
        hub = lock._wakeup
        dispatch = hub.dispatch
        failed: list[dict[str, Any]] = []

        def fail_once(message: dict[str, Any]) -> None:
            if message.get("type") == "message" and not failed:
                failed.append(message)
                raise RuntimeError("injected: the reader fails on this message")
            dispatch(message)

        hub.dispatch = fail_once  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="threadlock"):
            for _ in range(2):
                await hand_off(lock, key, 3600.0)
        # The grant of round 0 was the message the reader failed on: that waiter got the key
        # by the restart's re-check; round 1's by its notification, read by the new reader.
        assert len(failed) == 1
        restarts = [
            r for r in caplog.records if getattr(r, "event", "") == "redis.subscriber_restarted"
        ]
        assert len(restarts) == 1


# -- a first attempt that fails after the script ran (issue 15, defect 2) -----------------------


async def _late_reply_lock(
    redis_server_port: int, prefix: str, body: Callable[..., Awaitable[None]]
) -> None:
    """Run ``body(proxy, slow)``: ``slow`` reaches Redis through a :class:`FaultProxy`, with a
    0.3 s socket timeout and no redis-py retries, so a reply stalled for 0.45 s is a
    BackendError while the request itself has run on the server (and the abandon that
    follows, on a new connection, gets through once the stall is over)."""
    from benchmarks.chaos import FaultProxy
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    proxy = FaultProxy(redis_server_port)
    async with anyio.create_task_group() as tg:
        port = await tg.start(proxy.serve)
        try:
            async with RedisThreadLock.from_url(
                f"redis://127.0.0.1:{port}/0",
                prefix=prefix,
                socket_timeout=0.3,
                retry=Retry(NoBackoff(), 0),
            ) as slow:
                assert await slow.release(await slow.acquire("warm-up", ttl=5.0))  # scripts loaded
                await body(proxy, slow)
        finally:
            tg.cancel_scope.cancel()


async def test_a_free_key_granted_to_a_first_attempt_whose_reply_was_lost_is_given_back(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    async def body(proxy: Any, slow: RedisThreadLock) -> None:
        proxy.stall(None, 0.45, replies_only=True)  # the grant happens; its answer is late
        with pytest.raises(BackendError):
            await slow.acquire("k", ttl=30.0, timeout=0)
        # The abandon ran (its request reached Redis): nobody holds a 30 s lease of "k".
        assert await redis_lock.inspect("k") is None
        lease = await redis_lock.acquire("k", ttl=5.0, timeout=0)
        assert await redis_lock.release(lease)

    await _late_reply_lock(redis_server.port, redis_lock.prefix, body)


async def test_a_queued_first_attempt_whose_reply_was_lost_leaves_no_queue_entry(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    holder = await redis_lock.acquire("k", ttl=30.0)

    async def body(proxy: Any, slow: RedisThreadLock) -> None:
        proxy.stall(None, 0.45, replies_only=True)  # queued on the server; its answer is late
        with pytest.raises(BackendError):
            await slow.acquire("k", ttl=30.0, timeout=20.0)
        info = await redis_lock.inspect("k")
        assert info is not None
        assert info.waiters == 0, info
        # So the release hands the key to nobody (not to a waiter that is gone).
        assert await redis_lock.release(holder)
        assert await redis_lock.inspect("k") is None

    await _late_reply_lock(redis_server.port, redis_lock.prefix, body)
