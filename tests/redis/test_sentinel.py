"""The Redis backend through a real Sentinel set: ``redis+sentinel://`` URLs (issue 15).

A master, a replica and three sentinels on loopback (``tests/_servers/sentinel.py``). The
lock finds the master through the sentinels, and after the master is SIGKILLed and the
replica promoted, it finds the new one; the fence of the next grant is still higher.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from tests._servers.redis_server import require_redis_server
from tests._servers.sentinel import SentinelSet

from threadlock import BackendError, from_url
from threadlock.backends.redis import RedisThreadLock

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("sentinel")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    require_redis_server()
    with SentinelSet() as started:
        yield started


async def test_a_sentinel_url_reaches_the_master_and_follows_a_failover(
    sentinels: SentinelSet, prefix: str
) -> None:
    lock = from_url(sentinels.url, prefix=prefix, socket_timeout=2.0)
    assert isinstance(lock, RedisThreadLock)
    async with lock:
        first = await lock.acquire("k", ttl=5, timeout=1)
        assert (await lock.inspect("k")) is not None
        assert await lock.release(first)
        old = sentinels.master_port()
        await anyio.to_thread.run_sync(sentinels.failover)
        assert sentinels.master_port() != old
        with anyio.fail_after(30):  # a hang guard, not a timing claim
            while True:
                try:
                    second = await lock.acquire("k", ttl=5, timeout=1)
                    break
                except BackendError:  # connections to the dead master, until redis-py asks
                    await anyio.sleep(0.1)
        assert second.fence > first.fence
        assert await lock.release(second)
        assert await lock.held() == []
