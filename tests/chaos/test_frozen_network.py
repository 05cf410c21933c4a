"""Every backend call is bounded by its caller's deadline (issue 18 item 1, issue 15 defect 3).

A frozen loopback proxy (every byte held, both ways) stands between the backend and its
server, with the backend's own bounds set far beyond the freeze (Postgres
``statement_timeout=60``, redis-py ``socket_timeout=None``). ``hold()`` must still return:
the release is abandoned after ``release_timeout`` (reported as ``release_failed``) and the
lease is left to expire by its TTL. ``anyio.fail_after`` is only a hang guard.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from benchmarks.chaos import FaultProxy
from tests._servers.postgres_server import PostgresServer
from tests._servers.redis_server import RedisServer

from threadlock import LeaseLost
from threadlock.backends.base import BaseThreadLock
from threadlock.backends.postgres import PostgresThreadLock
from threadlock.backends.redis import RedisThreadLock
from threadlock.observe import Observer

pytestmark = pytest.mark.anyio

FREEZE = 6.0  # seconds every byte is held; longer than any bound the test expects to apply
RELEASE_TIMEOUT = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py and psycopg run on asyncio


class Recorder(Observer):
    def __init__(self) -> None:
        self.release_failed_keys: list[str] = []
        self.released_answers: list[bool] = []

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        self.release_failed_keys.append(key)

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        self.released_answers.append(released)


@asynccontextmanager
async def frozen_pair(
    kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[FaultProxy, BaseThreadLock, BaseThreadLock, Recorder]]:
    """(proxy, lock through the proxy, lock straight to the server, the first's observer)."""
    recorder = Recorder()
    name = f"frozen_{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        port = redis_server.port
    else:
        pg_server: PostgresServer = request.getfixturevalue("pg_server")
        port = pg_server.port
    proxy = FaultProxy(port)
    async with anyio.create_task_group() as tg:
        proxy_port = await tg.start(proxy.serve)
        try:
            slow: BaseThreadLock
            direct: BaseThreadLock
            if kind == "redis":
                options: dict[str, Any] = {"prefix": name, "release_timeout": RELEASE_TIMEOUT}
                slow = RedisThreadLock.from_url(
                    f"redis://127.0.0.1:{proxy_port}/0", socket_timeout=None, **options
                )
                direct = RedisThreadLock.from_url(redis_server.url, prefix=name)
            else:
                dsn = pg_server.dsn
                slow = PostgresThreadLock.from_url(
                    dsn.replace(f":{port}/", f":{proxy_port}/"),
                    table=name,
                    release_timeout=RELEASE_TIMEOUT,
                    statement_timeout=60.0,
                )
                direct = PostgresThreadLock.from_url(dsn, table=name)
                await direct.create_schema()  # type: ignore[attr-defined]
            slow.observer = recorder
            try:
                # Connect and warm up first, so only the frozen round trips are at stake.
                assert await slow.release(await slow.acquire("warm-up", ttl=5.0))
                yield proxy, slow, direct, recorder
            finally:
                await anyio.sleep(FREEZE)  # let the freeze end before closing anything
                await slow.aclose()
                await direct.aclose()
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_hold_returns_when_the_network_freezes_during_a_renewal(
    kind: str, request: pytest.FixtureRequest
) -> None:
    async with frozen_pair(kind, request) as (proxy, slow, direct, recorder):
        with anyio.fail_after(30):  # hang guard only
            async with slow.hold("k", ttl=4.0, renew_every=0.2) as lease:
                proxy.stall(None, FREEZE)
                await anyio.sleep(0.5)  # a renewal is in flight, frozen
        # The release was abandoned (not waited for until the network healed) ...
        assert recorder.release_failed_keys == ["k"]
        assert recorder.released_answers[-1] is False
        # ... so the lease is still there, to expire by its TTL.
        info = await direct.inspect("k")
        assert info is not None
        assert info.fence == lease.fence
        assert await direct.release(lease)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_freeze_past_the_ttl_cancels_the_body_and_hold_returns(
    kind: str, request: pytest.FixtureRequest
) -> None:
    async with frozen_pair(kind, request) as (proxy, slow, direct, recorder):
        body_finished = False
        with anyio.fail_after(30):  # hang guard only
            with pytest.raises(LeaseLost):
                async with slow.hold("k", ttl=1.5) as lease:
                    proxy.stall(None, FREEZE)
                    await anyio.sleep(60)
                    body_finished = True
        assert not body_finished
        # The renewal gave up at the lease's expiry and the release at release_timeout,
        # both while the network was still frozen.
        assert recorder.release_failed_keys == ["k"]
        # Nobody holds it any more: it expired by its TTL.
        again = await direct.acquire("k", ttl=5.0, timeout=10.0)
        assert again.fence > lease.fence
        assert await direct.release(again)
