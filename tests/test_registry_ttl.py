"""Issue 18, defect 6: a run registry entry and a chain head are bounded on every backend.

Each backend keeps a tracked run ``registry_ttl`` seconds and a chain head ``chain_ttl``
seconds, both at least the minimum (600 s for the registry). No test waits that long: each
case ages what its store holds instead, the way that store can be aged: memory through its
clock hook, Redis by letting the keys expire now (``PEXPIRE`` 1 ms, what the server's own
clock would do after the TTL), Postgres by moving the rows' timestamps back past the bound.
Then the entry and the head are gone from reads, and from the store itself after the
backend's own clean-up (the memory prune, Redis expiry, the Postgres background sweep).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from tests.conftest import postgres_lock

from threadlock import MemoryThreadLock, PostgresThreadLock, RedisThreadLock
from threadlock.backends.base import MIN_REGISTRY_TTL
from threadlock.testing.registry_conformance import run_record

pytestmark = pytest.mark.anyio

REGISTRY_TTL = MIN_REGISTRY_TTL
CHAIN_TTL = 60.0


@dataclass
class Case:
    lock: MemoryThreadLock | RedisThreadLock | PostgresThreadLock
    age: Callable[[str], Awaitable[None]]  # move key's registry and chain past their bound
    stored: Callable[[str], Awaitable[tuple[int, int]]]  # (run entries, chain heads) kept


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the Redis and Postgres clients run on asyncio only


@pytest.fixture(params=["memory", "redis", "postgres"])
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    options = {"registry_ttl": REGISTRY_TTL, "chain_ttl": CHAIN_TTL}
    if request.param == "memory":
        clock = _Clock()
        async with MemoryThreadLock(**options) as memory:
            memory._clock = clock

            async def age_memory(key: str) -> None:
                clock.now += REGISTRY_TTL + 1

            async def stored_memory(key: str) -> tuple[int, int]:
                await memory.tracked_runs()  # a read of every key prunes every key
                return len(memory._runs.get(key, {})), int(key in memory._chains)

            yield Case(memory, age_memory, stored_memory)
    elif request.param == "redis":
        from threadlock.backends.redis import RedisThreadLock
        from threadlock.backends.redis.keys import digest

        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
        async with RedisThreadLock.from_url(url, prefix=prefix, **options) as redis:

            def name(key: str, part: str) -> str:
                return f"{redis.prefix}:{{{digest(key)}}}:{part}"

            async def age_redis(key: str) -> None:
                for part in ("runs", "chain"):
                    assert await redis.client.pexpire(name(key, part), 1)
                while await redis.client.exists(name(key, "runs"), name(key, "chain")):
                    await redis.client.pttl(name(key, "runs"))  # expiry passes within 1 ms

            async def stored_redis(key: str) -> tuple[int, int]:
                runs = await redis.client.hlen(name(key, "runs"))
                return int(runs), int(await redis.client.exists(name(key, "chain")))

            yield Case(redis, age_redis, stored_redis)
    else:
        dsn, table = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_table")
        runs, chains = sql.Identifier(f"{table}_runs"), sql.Identifier(f"{table}_chains")
        async with postgres_lock(dsn, table, **options) as postgres:

            async def age_postgres(key: str) -> None:
                back = REGISTRY_TTL + 1
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {} SET tracked_at = tracked_at"
                            " - make_interval(secs => %s) WHERE key = %s"
                        ).format(runs),
                        (back, key),
                    )
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {} SET updated_at = updated_at"
                            " - make_interval(secs => %s) WHERE key = %s"
                        ).format(chains),
                        (back, key),
                    )

            async def stored_postgres(key: str) -> tuple[int, int]:
                await postgres._sweep()  # what every 16th uncontended grant starts
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    counts = []
                    for table_name in (runs, chains):
                        cur = await conn.execute(
                            sql.SQL("SELECT count(*) FROM {} WHERE key = %s").format(table_name),
                            (key,),
                        )
                        row = await cur.fetchone()
                        assert row is not None
                        counts.append(int(row[0]))
                return counts[0], counts[1]

            yield Case(postgres, age_postgres, stored_postgres)


async def test_an_expired_registry_entry_and_chain_head_are_gone(case: Case) -> None:
    lock = case.lock
    assert lock.registry_ttl == REGISTRY_TTL
    assert lock.chain_ttl == CHAIN_TTL
    lease = await lock.acquire("old", ttl=30.0)
    await lock.track_run(run_record("old", "run_old", 1.0))
    assert await lock.advance_chain(lease, None, "resp_old")
    assert await lock.release(lease)
    await lock.track_run(run_record("kept", "run_kept", 2.0))
    assert await case.stored("old") == (1, 1)

    await case.age("old")
    assert await lock.tracked_runs("old") == []
    assert await lock.chain_head("old") is None
    assert [r.run_id for r in await lock.tracked_runs()] == (
        ["run_kept"] if not isinstance(lock, MemoryThreadLock) else []
    )
    assert await case.stored("old") == (0, 0)  # the state itself is gone, not only hidden

    lease = await lock.acquire("old", ttl=30.0)
    assert await lock.advance_chain(lease, None, "resp_new")  # an expired chain starts anew
    assert await lock.chain_head("old") == "resp_new"
    assert await lock.release(lease)
