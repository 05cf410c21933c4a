"""Redis adapters: threadlock's backend and its floors, against the same server in one run.

* ``redis``: ``RedisThreadLock.acquire`` / ``release`` (one ``EVALSHA`` each).
* ``redis-ping``: the floor, one ``PING`` round trip per pair (no exclusion).
* ``redis-setnx``: the raw floor of a lock: ``SET key token NX PX`` to take it, ``EVALSHA``
  compare-and-delete to release; a busy key is retried after 1 ms (no queue, no hand-off).
* ``redis-script-floor``: the floor of a *script-based lock with a TTL and a fence*: one
  ``EVALSHA`` to acquire (``GET``, then ``SET token+fence PX``) and one to release
  (``GET``, then ``SET`` of an ``F <fence>`` marker with ``PX``, so the next fence is
  higher), one key per lock, no queue and no hand-off (a busy key is retried after 1 ms).
  It is the cheapest pair of scripts we found that still hands out fences; RC measures its
  server time beside threadlock's and redis-py's (issue 14).
* ``redis-py-lock``: redis-py's ``redis.asyncio.lock.Lock`` with its default ``sleep=0.1``.

The peers that need extra packages (python-redis-lock, pottery) are in
``adapters_redis_peers.py``, so a missing peer does not hide these.

Options: ``redis_url`` (``--redis-url``, or env ``THREADLOCK_BENCH_REDIS_URL``). Without it,
one private ``redis-server`` (``tests/_servers/redis_server.py``) is started for the whole
run and stopped at exit. redis-py's asyncio client runs on asyncio only.
"""

from __future__ import annotations

import atexit
import secrets
import threading
from typing import Any

import anyio
import redis.asyncio as aioredis

from benchmarks.adapter import AdapterConfig, register_adapter
from benchmarks.redis_commands import RedisCapabilities, server_url
from benchmarks.targets import Ref, Target, register_targets
from threadlock import Lease
from threadlock.backends.redis import RedisThreadLock

__all__ = [
    "FLOOR_ACQUIRE",
    "FLOOR_RELEASE",
    "PingAdapter",
    "RedisAdapter",
    "RedisPyLockAdapter",
    "ScriptFloorAdapter",
    "SetNxAdapter",
    "redis_url",
]

ASYNCIO = frozenset({"asyncio"})
TTL = 30.0
_SERVER_LOCK = threading.Lock()
_SERVER: Any = None

_CAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: The floor's acquire: KEYS[1] lease; ARGV token (hex, never starts with "F"), PX ms.
#: Returns the fence, or 0 when the key is held.
FLOOR_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
local fence = 1
if v then
  if string.byte(v, 1) ~= 70 then return 0 end
  fence = tonumber(string.sub(v, 3)) + 1
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
"""

#: The floor's release: leaves an ``F <fence>`` marker (with PX) so fences keep rising.
FLOOR_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local sp = string.find(v, ' ', 1, true)
if not sp or string.sub(v, 1, sp - 1) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'F ' .. string.sub(v, sp + 1), 'PX', ARGV[2])
return 1
"""


def redis_url(config: AdapterConfig) -> str:
    url = config.get("redis_url", env="THREADLOCK_BENCH_REDIS_URL")
    if url:
        return server_url(url)
    global _SERVER  # noqa: PLW0603 - one server per run, shared by every adapter
    with _SERVER_LOCK:
        if _SERVER is None:
            from tests._servers.redis_server import RedisServer

            server = RedisServer().start()
            atexit.register(server.stop)
            _SERVER = server
        return server_url(str(_SERVER.url))


def prefix(config: AdapterConfig, name: str) -> str:
    return f"bench-{name}-{config.run_id}-{secrets.token_hex(3)}"


class RedisAdapter:
    name = "redis"
    capabilities = RedisCapabilities(exclusive=True, fifo=True, loops=ASYNCIO)

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._lock: RedisThreadLock | None = None

    async def setup(self) -> None:
        url = redis_url(self._config)
        self._lock = RedisThreadLock.from_url(url, prefix=prefix(self._config, self.name))
        await self._lock.client.ping()

    async def teardown(self) -> None:
        if self._lock is not None:
            await self._lock.aclose()

    async def acquire(self, key: str) -> Lease:
        assert self._lock is not None
        return await self._lock.acquire(key, ttl=TTL, timeout=None)

    async def release(self, handle: Lease) -> None:
        assert self._lock is not None
        await self._lock.release(handle)


class _ClientAdapter:
    name = ""

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._prefix = prefix(config, self.name)
        self._client: aioredis.Redis | None = None

    async def setup(self) -> None:
        self._client = aioredis.Redis.from_url(redis_url(self._config))
        await self._client.ping()

    async def teardown(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None
        return self._client


class PingAdapter(_ClientAdapter):
    name = "redis-ping"
    capabilities = RedisCapabilities(exclusive=False, loops=ASYNCIO)

    async def acquire(self, key: str) -> None:
        await self.client.ping()

    async def release(self, handle: None) -> None:
        return None


class SetNxAdapter(_ClientAdapter):
    name = "redis-setnx"
    capabilities = RedisCapabilities(exclusive=True, fifo=False, loops=ASYNCIO)

    async def setup(self) -> None:
        await super().setup()
        self._cad = self.client.register_script(_CAD)

    async def acquire(self, key: str) -> tuple[str, str]:
        name = f"{self._prefix}:{key}"
        token = secrets.token_hex(16)
        while not await self.client.set(name, token, nx=True, px=int(TTL * 1000)):
            await anyio.sleep(0.001)
        return name, token

    async def release(self, handle: tuple[str, str]) -> None:
        await self._cad(keys=[handle[0]], args=[handle[1]])


class ScriptFloorAdapter(_ClientAdapter):
    name = "redis-script-floor"
    capabilities = RedisCapabilities(exclusive=True, fifo=False, loops=ASYNCIO)

    async def setup(self) -> None:
        await super().setup()
        self._acquire = self.client.register_script(FLOOR_ACQUIRE)
        self._release = self.client.register_script(FLOOR_RELEASE)

    async def acquire(self, key: str) -> tuple[str, str, int]:
        name = f"{self._prefix}:{key}"
        token = secrets.token_hex(16)
        px = int(TTL * 1000)
        while not (fence := int(await self._acquire(keys=[name], args=[token, px]))):
            await anyio.sleep(0.001)
        return name, token, fence

    async def release(self, handle: tuple[str, str, int]) -> None:
        await self._release(keys=[handle[0]], args=[handle[1], int(TTL * 1000)])


class RedisPyLockAdapter(_ClientAdapter):
    name = "redis-py-lock"
    capabilities = RedisCapabilities(exclusive=True, fifo=False, loops=ASYNCIO)

    async def acquire(self, key: str) -> Any:
        lock = self.client.lock(f"{self._prefix}:{key}", timeout=TTL, sleep=0.1)
        await lock.acquire()
        return lock

    async def release(self, handle: Any) -> None:
        await handle.release()


register_adapter("redis", RedisAdapter, description="RedisThreadLock acquire/release")
register_adapter("redis-ping", PingAdapter, description="floor: one PING")
register_adapter("redis-setnx", SetNxAdapter, description="floor: SET NX PX + EVALSHA delete")
register_adapter(
    "redis-script-floor",
    ScriptFloorAdapter,
    description="floor: EVALSHA GET+SET PX acquire, EVALSHA GET+SET fence-marker release",
)
register_adapter("redis-py-lock", RedisPyLockAdapter, description="redis.asyncio.lock.Lock")

#: Issue 3's goals.
register_targets(
    Target("redis", "S1", "pairs_per_s", ">=", 0.9, ref=Ref("redis-setnx")),
    Target("redis", "S1", "pairs_per_s", ">", 1.0, ref=Ref("redis-py-lock")),
    Target(
        "redis",
        "S2",
        "handoff_p50_us",
        "<=",
        2.0,
        ref=Ref("redis-ping", scenario="S1", metric="pair_p50_us"),
    ),
    Target("redis", "S2", "handoff_p99_us", "<=", 1000.0),
    Target("redis", "S2", "self_reacquire_pct", "<=", 0.0),
    Target("redis", "S3", "inversions", "<=", 0.0),
    Target("redis", "S3", "drain_ms", "<=", 1.3, ref=Ref("asyncio-lock")),
    Target("redis", "S4", "ops_per_s", ">=", 1.0, ref=Ref("redis-py-lock")),
    Target("redis", "RC", "acquire_round_trips", "<=", 1.0),
    Target("redis", "RC", "release_round_trips", "<=", 1.0),
)
