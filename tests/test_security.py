"""The claims of docs/security.md, one test each where a test can check them.

Against real servers: a private ``redis-server`` and a private Postgres started with
``log_statement = all`` (so the test can read what SQL text reached the server). TLS for
``rediss://`` is tested in ``tests/redis/test_redis_tls.py``; ``sslmode`` here.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from typing import Any

import anyio
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql
from tests._servers.postgres_server import PostgresServer, ServerUnavailable
from tests._servers.redis_server import RedisServer

from threadlock import (
    BackendError,
    Lease,
    LeaseLost,
    LockInfo,
    MemoryThreadLock,
    ThreadBusy,
)
from threadlock.backends.postgres import PostgresThreadLock
from threadlock.backends.redis import RedisThreadLock
from threadlock.openai import guard_conversation, guard_thread
from threadlock.protocol import RunRecord
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio

HOSTILE_KEYS = [
    "'; DROP TABLE threadlock_leases; --",
    "x') OR 1=1; --",
    "$1",
    "%s%s%n",
    "{a}b}",
    "}{",
    "*",
    "?",
    "[a-z]",
    "\\",
    "redis.call('FLUSHALL')",
    "]]; redis.call('FLUSHALL') --[[",
    "\n\r\t",
    "ключ 🔒",
    "é" * 512,
]
SECRET_TEXT = "TOP-SECRET-MESSAGE-CONTENT-4242"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py and psycopg run on asyncio


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Run this test's finalizers now, not while pytest renders a report (see
    ``tests/chaos/test_chaos_repros.py``: python/cpython#106905 before 3.11.8)."""
    yield
    gc.collect()


# -- servers and backends -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.create(settings={"log_statement": "all"})
    except ServerUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Postgres tests cannot run: {error}")
        pytest.skip(str(error))
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def new_redis_lock(server: RedisServer) -> RedisThreadLock:
    return RedisThreadLock.from_url(server.url, prefix=f"sec-{uuid.uuid4().hex[:10]}", grace=1.0)


async def new_pg_lock(server: PostgresServer) -> PostgresThreadLock:
    lock = PostgresThreadLock.from_url(server.dsn, table=f"sec_{uuid.uuid4().hex[:12]}", grace=1.0)
    await lock.create_schema()
    return lock


@pytest.fixture
async def redis_lock(redis_server: RedisServer) -> AsyncIterator[RedisThreadLock]:
    async with new_redis_lock(redis_server) as lock:
        yield lock


@pytest.fixture
async def pg_lock(pg_server: PostgresServer) -> AsyncIterator[PostgresThreadLock]:
    async with await new_pg_lock(pg_server) as lock:
        yield lock


@pytest.fixture(params=["memory", "redis", "postgres"])
async def any_lock(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    lock: Any
    if request.param == "memory":
        lock = MemoryThreadLock()
    elif request.param == "redis":
        lock = new_redis_lock(request.getfixturevalue("redis_server"))
    else:
        lock = await new_pg_lock(request.getfixturevalue("pg_server"))
    async with lock:
        yield lock


def shared_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 - characters are what we mean


async def dump_redis(client: aioredis.Redis, prefix: str) -> bytes:
    """Every key name and value under ``prefix``, as one blob."""
    out: list[bytes] = []
    async for name in client.scan_iter(match=f"{prefix}*", count=1000):
        out.append(name)
        kind = await client.type(name)
        if kind == b"string":
            out.append(await client.get(name) or b"")
        elif kind == b"hash":
            for field, value in (await client.hgetall(name)).items():
                out += [field, value]
        elif kind == b"zset":
            out += [member for member, _ in await client.zrange(name, 0, -1, withscores=True)]
        elif kind == b"list":
            out += await client.lrange(name, 0, -1)
        elif kind == b"set":
            out += list(await client.smembers(name))
    return b"\n".join(out)


async def dump_postgres(dsn: str, table: str) -> str:
    """Every row of every table the backend created, as text."""
    out: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"{table}%",)
            )
        ).fetchall()
        for (name,) in rows:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(name))
            out += [f"{name}: {row[0]}" for row in await (await conn.execute(query)).fetchall()]
    return "\n".join(out)


async def wait_for_waiters(lock: Any, key: str, count: int) -> None:
    with anyio.fail_after(15):
        while (info := await lock.inspect(key)) is None or info.waiters < count:
            await anyio.sleep(0.01)


async def handoff(lock: Any, key: str) -> tuple[Lease, Lease]:
    """A holder, a waiter queued behind it, the release: both leases."""
    holder = await lock.acquire(key, ttl=30.0)
    got: list[Lease] = []

    async def waiter() -> None:
        got.append(await lock.acquire(key, ttl=30.0, timeout=20.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_for_waiters(lock, key, 1)
        assert await lock.release(holder)
    return holder, got[0]


# -- 1. tokens ------------------------------------------------------------------------------------


async def test_tokens_are_unique_and_unguessable_from_one_another(any_lock: Any) -> None:
    tokens = []
    for index in range(100):
        lease = await any_lock.acquire(f"t{index}", ttl=30.0)
        tokens.append(lease.token)
        assert await any_lock.release(lease)
    assert len(set(tokens)) == len(tokens)
    assert all(isinstance(t, str) and len(t) >= 16 for t in tokens), tokens[:3]
    if isinstance(any_lock, RedisThreadLock):
        # secrets.token_hex(16) per lease: 128 random bits, no two share a long prefix.
        assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in tokens)
        assert max(shared_prefix(a, b) for a, b in itertools.pairwise(tokens)) < 12


async def test_memory_tokens_are_a_random_per_instance_prefix_and_a_counter() -> None:
    # docs/security.md: fine in one process, which can read the backend's memory anyway.
    one, two = MemoryThreadLock(), MemoryThreadLock()
    a, b = await one.acquire("k"), await one.acquire("j")
    c = await two.acquire("k")
    assert a.token[:16] == b.token[:16]
    assert a.token[:16] != c.token[:16]
    assert a.token != b.token


async def test_postgres_notifications_do_not_give_tokens_away(
    pg_server: PostgresServer, pg_lock: PostgresThreadLock
) -> None:
    payloads = await _notified_payloads(pg_server, pg_lock)
    tokens = payloads.pop("tokens")
    assert payloads["payloads"], "no notification was seen"
    for payload in payloads["payloads"]:
        for token in tokens:
            assert token not in payload
            # Nothing short of the whole token may be shared with a public id.
            assert shared_prefix(payload, token) < 8, (payload, token)


async def _notified_payloads(
    pg_server: PostgresServer, lock: PostgresThreadLock
) -> dict[str, list[str]]:
    seen: list[str] = []
    async with await psycopg.AsyncConnection.connect(pg_server.dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(lock.channel)))
        # A second instance, so that the hand-off is announced by NOTIFY, not in-process.
        async with PostgresThreadLock.from_url(pg_server.dsn, table=lock.table, grace=1.0) as other:
            holder = await other.acquire("k", ttl=30.0)
            got: list[Lease] = []

            async def waiter() -> None:
                got.append(await lock.acquire("k", ttl=30.0, timeout=20.0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await wait_for_waiters(lock, "k", 1)
                assert await other.release(holder)
            assert await lock.release(got[0])
        with anyio.move_on_after(1.0):
            async for notify in conn.notifies(timeout=1.0):
                seen.append(notify.payload)
    return {"payloads": seen, "tokens": [holder.token, got[0].token]}


async def test_redis_keeps_only_sha1_of_tokens_and_never_publishes_them(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    prefix = redis_lock.prefix
    raw = aioredis.Redis.from_url(redis_server.url)
    messages: list[bytes] = []
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f"{prefix}*")

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "pmessage":
                messages.append(message["data"])

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await anyio.sleep(0.1)
            first, second = await handoff(redis_lock, "k")
            second = await redis_lock.extend(second, ttl=30.0)
            other = await redis_lock.acquire("j", ttl=30.0)
            assert await redis_lock.advance_chain(other, None, "resp_1")
            during = await dump_redis(raw, prefix)
            assert await redis_lock.release(other)
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
        after = await dump_redis(raw, prefix)
    finally:
        await pubsub.aclose()
        await raw.aclose()
    assert messages, "no notification was published"
    for lease in (first, second, other):
        token = lease.token.encode()
        assert token not in during
        assert token not in after
        assert all(token not in message for message in messages)
    # What is stored instead: the SHA-1 of the live lease's token.
    assert hashlib.sha1(second.token.encode()).hexdigest().encode() in during


async def test_postgres_stores_tokens_in_clear_and_notifies_only_waiter_ids(
    pg_server: PostgresServer, pg_lock: PostgresThreadLock
) -> None:
    # docs/security.md: the token column holds the token itself, so SELECT on the table is
    # as good as holding every lease; grant it to nobody but the application role.
    lease = await pg_lock.acquire("k", ttl=30.0)
    dump = await dump_postgres(pg_server.dsn, pg_lock.table)
    assert lease.token in dump
    assert await pg_lock.release(lease)
    payloads = await _notified_payloads(pg_server, pg_lock)
    for payload in payloads["payloads"]:
        assert all(token not in payload for token in payloads["tokens"])


# -- 2. release and extend need the token ---------------------------------------------------------


async def test_release_and_extend_are_impossible_without_the_token(any_lock: Any) -> None:
    key = "guarded"
    old = await any_lock.acquire(key, ttl=30.0)
    assert await any_lock.release(old)
    lease = await any_lock.acquire(key, ttl=30.0)
    digest = hashlib.sha1(lease.token.encode()).hexdigest()
    forged = [
        Lease(key, "", lease.fence, 30.0, lease.acquired_at, lease.expires_at),
        Lease(key, uuid.uuid4().hex, lease.fence, 30.0, lease.acquired_at, lease.expires_at),
        Lease(key, digest, lease.fence, 30.0, lease.acquired_at, lease.expires_at),
        Lease(key, lease.token[:-1], lease.fence, 30.0, lease.acquired_at, lease.expires_at),
        Lease(key, lease.token.upper(), lease.fence, 30.0, lease.acquired_at, lease.expires_at),
        old,  # the previous holder's real token
    ]
    for fake in forged:
        assert await any_lock.release(fake) is False
        with pytest.raises(LeaseLost):
            await any_lock.extend(fake, ttl=30.0)
        if hasattr(any_lock, "advance_chain"):
            assert await any_lock.advance_chain(fake, None, "resp_evil") is False
    info = await any_lock.inspect(key)
    assert info is not None
    assert info.fence == lease.fence
    assert await any_lock.release(lease)


# -- 3. keys are data, never code -----------------------------------------------------------------


@pytest.mark.parametrize("key", HOSTILE_KEYS)
async def test_hostile_keys_round_trip_as_plain_data(any_lock: Any, key: str) -> None:
    lease = await any_lock.acquire(key, ttl=30.0)
    with pytest.raises(ThreadBusy):
        await any_lock.acquire(key, ttl=30.0, timeout=0)
    info = await any_lock.inspect(key)
    assert info is not None
    assert info.key == key
    assert [i.key for i in await any_lock.held()] == [key]
    assert await any_lock.release(lease)
    assert await any_lock.held() == []


async def test_redis_keys_never_reach_a_script_or_a_key_name(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.script_flush()
        leases = [await redis_lock.acquire(key, ttl=30.0) for key in HOSTILE_KEYS]
        for lease in leases:
            await redis_lock.extend(lease)
            await redis_lock.inspect(lease.key)
            with pytest.raises(ThreadBusy):  # a waiter that gives up leaves a tombstone
                await redis_lock.acquire(lease.key, ttl=30.0, timeout=0.05)
        await redis_lock.held()
        names = [name async for name in raw.scan_iter(match=f"{redis_lock.prefix}*")]
        info = await raw.info("memory")
        for lease in leases:
            assert await redis_lock.release(lease)
    finally:
        await raw.aclose()
    # Key names are <prefix>:{<128-bit hex digest>}:<part>[:<waiter id>]: no user text.
    pattern = re.compile(re.escape(redis_lock.prefix) + r":\{[0-9a-f]{32}\}:[a-z]+(:[0-9a-f]{40})?")
    assert names
    assert all(pattern.fullmatch(name.decode()) for name in names), names[:5]
    # The scripts are the library's own fixed texts, whatever the keys: a handful, not one per
    # key (a key spliced into script text would give a new script per key).
    assert info["number_of_cached_scripts"] <= 10 < len(HOSTILE_KEYS)


async def test_postgres_keys_reach_the_server_only_as_bound_parameters(
    pg_server: PostgresServer, pg_lock: PostgresThreadLock
) -> None:
    marker = f"m{uuid.uuid4().hex}"
    keys = [f"{key[:400]}{marker}" for key in HOSTILE_KEYS]
    log_start = pg_server.logfile.stat().st_size
    for key in keys:
        lease = await pg_lock.acquire(key, ttl=30.0)
        await pg_lock.extend(lease)
        assert (await pg_lock.inspect(key)) is not None
        assert await pg_lock.release(lease)
    await anyio.sleep(0.5)  # let the server flush its log
    with pg_server.logfile.open("rb") as handle:
        handle.seek(log_start)
        log = handle.read().decode("utf-8", "replace")
    # log_statement=all logs each statement's text ("LOG:  execute ...: SELECT ..."), and the
    # bound values in a separate "DETAIL:  parameters: $1 = ..." entry. An entry starts with
    # the log line prefix (a timestamp); a value with a newline continues on the next lines.
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d )", log)
    assert any(marker in entry for entry in entries), "no parameters logged: log_statement?"
    for entry in entries:
        if marker in entry:
            assert "DETAIL:  parameters:" in entry, f"a key reached the SQL text: {entry[:300]}"


# -- 4. TLS is passed through ---------------------------------------------------------------------


async def test_postgres_sslmode_is_passed_through_to_libpq(
    pg_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server has no TLS: sslmode=require must fail in libpq, disable must work.
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    table = f"sec_{uuid.uuid4().hex[:12]}"
    async with PostgresThreadLock.from_url(
        f"{pg_server.dsn}?sslmode=require", table=table, pool_timeout=3.0
    ) as lock:
        with pytest.raises(BackendError):
            await lock.create_schema()
    # The pool logs why it could not connect (the BackendError only says it timed out).
    reasons = " ".join(record.getMessage() for record in caplog.records)
    assert "SSL was required" in reasons, reasons[:500]
    async with PostgresThreadLock.from_url(f"{pg_server.dsn}?sslmode=disable", table=table) as lock:
        await lock.create_schema()
        assert await lock.release(await lock.acquire("k", ttl=5.0))


def test_rediss_is_tested_against_a_tls_server_elsewhere() -> None:
    # docs/security.md points here: rediss:// with a CA file is exercised end to end there.
    here = os.path.dirname(__file__)
    assert os.path.exists(os.path.join(here, "redis", "test_redis_tls.py"))


# -- 5. the registry stores ids, never content ----------------------------------------------------


@pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning")
async def test_the_run_registry_stores_ids_never_message_content(
    request: pytest.FixtureRequest, any_lock: Any
) -> None:
    fake = FakeOpenAI(run_duration=60.0, background_duration=60.0)
    client = fake.client()
    thread = fake.add_thread()
    conversation = fake.add_conversation()
    async with guard_thread(client, thread, lock=any_lock, timeout=5.0) as turn:
        await client.beta.threads.messages.create(thread, role="user", content=SECRET_TEXT)
        run = await turn.create(assistant_id="asst_1", instructions=SECRET_TEXT)
    async with guard_conversation(client, conversation, lock=any_lock, timeout=5.0) as turn:
        response = await turn.create(model="m", input=SECRET_TEXT, background=True)
    records = await any_lock.tracked_runs()
    assert {r.run_id for r in records} >= {run.id, response.id}
    for record in records:
        assert isinstance(record, RunRecord)
        assert SECRET_TEXT not in repr(record)
    storage = ""
    if isinstance(any_lock, RedisThreadLock):
        server: RedisServer = request.getfixturevalue("redis_server")
        raw = aioredis.Redis.from_url(server.url)
        try:
            storage = (await dump_redis(raw, any_lock.prefix)).decode("utf-8", "replace")
        finally:
            await raw.aclose()
    elif isinstance(any_lock, PostgresThreadLock):
        pg: PostgresServer = request.getfixturevalue("pg_server")
        storage = await dump_postgres(pg.dsn, any_lock.table)
    if storage:
        assert run.id in storage
        assert SECRET_TEXT not in storage
    assert {f.name for f in fields(RunRecord)} == {
        "key",
        "kind",
        "run_id",
        "thread_id",
        "created_at",
        "fence",
        "owner",
    }


# -- 6. tokens stay out of logs, errors and snapshots ---------------------------------------------


async def test_tokens_stay_out_of_reprs_errors_and_logs(
    any_lock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="threadlock")
    lease = await any_lock.acquire("k", ttl=30.0)
    assert lease.token not in repr(lease)
    assert lease.token not in str(lease)
    with pytest.raises(ThreadBusy) as busy:
        await any_lock.acquire("k", ttl=1.0, timeout=0)
    assert lease.token not in str(busy.value)
    assert lease.token not in repr(busy.value.holder)
    assert "token" not in {f.name for f in fields(LockInfo)}
    short = await any_lock.extend(lease, ttl=0.2)
    await anyio.sleep(0.4)
    with pytest.raises(LeaseLost) as lost:
        await any_lock.extend(short)
    assert lease.token not in str(lost.value)
    assert await any_lock.release(short) is False
    for record in caplog.records:
        text = record.getMessage() + " " + repr(record.__dict__)
        assert lease.token not in text


# -- 7. what write access to Redis allows ---------------------------------------------------------


async def test_redis_write_access_can_break_the_lock_and_fencing_shows_it(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    # docs/security.md: the lock is not an authorisation boundary. Whoever can write the
    # prefix's keys can take a key from its holder; the holder learns it at its next renewal,
    # and the rival's fence is higher, so a fencing store refuses the victim's late writes.
    raw = aioredis.Redis.from_url(redis_server.url)
    began = time.monotonic()
    try:
        with pytest.raises(LeaseLost):
            async with redis_lock.hold("victim", ttl=1.5) as lease:
                async for name in raw.scan_iter(match=f"{redis_lock.prefix}:*:lease"):
                    await raw.delete(name)  # the attacker
                rival = await redis_lock.acquire("victim", ttl=30.0, timeout=0)
                assert rival.fence > lease.fence
                began = time.monotonic()
                await anyio.sleep(10)
        assert time.monotonic() - began < 5.0  # cancelled at the next renewal (ttl / 3)
        assert await redis_lock.release(rival)
    finally:
        await raw.aclose()


async def test_a_forged_grant_notification_does_not_hand_out_the_lock(
    redis_server: RedisServer, redis_lock: RedisThreadLock
) -> None:
    holder = await redis_lock.acquire("k", ttl=30.0)
    got: list[Lease] = []

    async def waiter() -> None:
        with contextlib.suppress(ThreadBusy):
            got.append(await redis_lock.acquire("k", ttl=30.0, timeout=3.0))

    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_for_waiters(redis_lock, "k", 1)
            await anyio.sleep(0.2)  # let the waiter subscribe
            (queue,) = [n async for n in raw.scan_iter(match=f"{redis_lock.prefix}:*:queue")]
            (waiter_id,) = await raw.zrange(queue, 0, -1)
            # The channel the waiting instance listens on: its own inbox on a plain server
            # (one per instance), else the key's channel.
            channel = redis_lock._wakeup.inbox or (queue.decode().rpartition(":")[0] + ":wake")
            now = int(time.time() * 1e6)
            forged = f"{waiter_id.decode()} {2**52} {now} {now + 30_000_000}"
            assert await raw.publish(channel, forged) >= 1  # the attacker
            await anyio.sleep(0.5)
            assert not got, f"a forged notification handed out the held key: {got}"
            tg.cancel_scope.cancel()
    finally:
        await raw.aclose()
        await redis_lock.release(holder)
