"""The Redis backend's own behaviour: key hygiene, scripts, URLs, errors."""

from __future__ import annotations

import re

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

import threadlock
from _servers.redis_server import RedisServer, free_port
from threadlock import Lease
from threadlock.backends.redis import RedisThreadLock
from threadlock.errors import BackendError, LeaseLost, ThreadBusy

pytestmark = pytest.mark.anyio

KEY_SHAPE = re.compile(r"^(?P<prefix>.+):\{[0-9a-f]{32}\}:(lease|queue|beat|meta)$")
ODD_KEYS = ["'; DROP TABLE x; --", "*", "?", "[a-z]", "{a}b}", "}{", "{}", "käse 🧀", "a\\b", "%d"]


async def raw_keys(lock: RedisThreadLock) -> dict[str, int]:
    """Every Redis key under the lock's prefix, with its PTTL in ms."""
    client = lock.client
    found = {}
    async for name in client.scan_iter(match=f"{lock.prefix}:*", count=1000):
        text = name.decode() if isinstance(name, bytes) else name
        found[text] = await client.pttl(text)
    return found


async def wait_for_waiters(lock: RedisThreadLock, key: str, count: int) -> None:
    with anyio.fail_after(20):
        while True:
            info = await lock.inspect(key)
            if info is not None and info.waiters >= count:
                return
            await anyio.sleep(0.01)


async def test_every_key_has_a_ttl_and_a_free_key_leaves_only_its_fence_marker(
    redis_lock: RedisThreadLock,
) -> None:
    lease = await redis_lock.acquire("ttl-check", ttl=5.0)
    keys = await raw_keys(redis_lock)
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == ["lease"]
    assert all(5_000 < ttl <= 5_000 + 3_600_000 for ttl in keys.values())  # outlives the lease

    async def waiter() -> None:
        got = await redis_lock.acquire("ttl-check", ttl=5.0, timeout=None)
        await redis_lock.release(got)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_for_waiters(redis_lock, "ttl-check", 1)
        keys = await raw_keys(redis_lock)
        assert sorted(k.rsplit(":", 1)[1] for k in keys) == ["beat", "lease", "meta", "queue"]
        for name, ttl in keys.items():
            assert ttl > 0, name
            if not name.endswith(":lease"):
                assert ttl <= redis_lock.grace * 1000 + 1, name  # the waiter's heartbeat
        assert await redis_lock.release(lease)
    keys = await raw_keys(redis_lock)
    assert [k.rsplit(":", 1)[1] for k in keys] == ["lease"]
    assert 0 < next(iter(keys.values())) <= 3_600_000
    # Free, nobody queued: only the last fence is left ("F <fence>").
    assert (await redis_lock.client.get(next(iter(keys)))).startswith(b"F ")


async def test_the_lease_key_outlives_a_queue_whose_grace_is_longer_than_its_life(
    redis_server: RedisServer,
) -> None:
    # A waiter's grace (2 h) beyond the lease key's life (ttl + 1 h): the lease key must not
    # expire first, or the fast acquire would take a key that has a queue.
    lock = RedisThreadLock(
        aioredis.Redis.from_url(redis_server.url),
        prefix="long-grace",
        grace=7_200.0,
        _owns_client=True,
    )
    try:
        holder = await lock.acquire("g", ttl=1.0)

        async def waiter() -> None:
            await lock.release(await lock.acquire("g", ttl=1.0, timeout=None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_for_waiters(lock, "g", 1)
            names = lock._names("g").lock
            client = lock.client
            queue_at = await client.execute_command("PEXPIRETIME", names[1])
            lease_at = await client.execute_command("PEXPIRETIME", names[0])
            assert await client.pttl(names[1]) > 3_600_000
            assert lease_at >= queue_at
            assert await lock.release(holder)
    finally:
        await lock.aclose()


async def test_token_is_not_stored_and_user_key_only_as_a_value(
    redis_lock: RedisThreadLock,
) -> None:
    lease = await redis_lock.acquire("secret-key", ttl=5.0)
    keys = await raw_keys(redis_lock)
    for name in keys:
        assert "secret-key" not in name
        assert KEY_SHAPE.match(name)
    lease_key = next(k for k in keys if k.endswith(":lease"))
    value = await redis_lock.client.get(lease_key)
    assert lease.token.encode() not in value
    assert value.endswith(b"secret-key")  # the user key, last in the lease value
    assert await redis_lock.release(lease)


async def test_fail_fast_leaves_no_queue_and_reports_the_holder(
    redis_lock: RedisThreadLock,
) -> None:
    holder = await redis_lock.acquire("ff", ttl=30.0)
    with pytest.raises(ThreadBusy) as busy:
        await redis_lock.acquire("ff", ttl=30.0, timeout=0)
    assert 25.0 < busy.value.retry_after <= 30.0  # from the server: the holder's ttl left
    assert busy.value.holder is not None
    assert busy.value.holder.owner.startswith(redis_lock.owner)
    assert sorted(k.rsplit(":", 1)[1] for k in await raw_keys(redis_lock)) == ["lease"]
    assert await redis_lock.release(holder)


@pytest.mark.parametrize("left", ["released", "ended"])
async def test_the_last_fence_is_the_floor_of_the_next_one(
    redis_lock: RedisThreadLock, left: str
) -> None:
    # A last fence ahead of the server clock (as after a clock step back) must still be
    # exceeded, whether the key was released (marker) or its lease ended unreleased.
    lock = redis_lock
    first = await lock.acquire(f"floor-{left}", ttl=0.2)
    name = lock._names(f"floor-{left}").lock[0]
    ahead = first.fence + 10**12  # about 11 days ahead of the clock
    value = await lock.client.get(name)
    if left == "released":
        assert await lock.release(first)
        await lock.client.set(name, f"F {ahead}", px=60_000)
    else:
        head, _, rest = value.partition(b" 0 ")
        _fence, _, tail = rest.partition(b" ")
        await lock.client.set(name, head + b" 0 " + str(ahead).encode() + b" " + tail, px=60_000)
        with anyio.fail_after(10):
            while await lock.inspect(f"floor-{left}") is not None:  # the lease ends
                await anyio.sleep(0.05)
    second = await lock.acquire(f"floor-{left}", ttl=5.0, timeout=0)
    assert second.fence == ahead + 1
    assert await lock.release(second)
    third = await lock.acquire(f"floor-{left}", ttl=5.0, timeout=0)
    assert third.fence == ahead + 2
    assert await lock.release(third)


async def test_fences_increase_after_all_data_is_lost(redis_lock: RedisThreadLock) -> None:
    first = await redis_lock.acquire("flushed", ttl=30.0)
    for name in await raw_keys(redis_lock):
        await redis_lock.client.delete(name)  # as a restart without persistence would
    assert await redis_lock.release(first) is False
    with pytest.raises(LeaseLost):
        await redis_lock.extend(first)
    second = await redis_lock.acquire("flushed", ttl=30.0, timeout=0)
    assert second.fence > first.fence
    assert await redis_lock.release(second)


async def test_every_operation_survives_script_flush(redis_lock: RedisThreadLock) -> None:
    async def flush() -> None:
        await redis_lock.client.script_flush()

    await flush()
    lease = await redis_lock.acquire("flush", ttl=30.0)
    await flush()
    lease = await redis_lock.extend(lease, ttl=40.0)
    await flush()
    info = await redis_lock.inspect("flush")
    assert info is not None
    assert info.fence == lease.fence
    await flush()
    assert [i.key for i in await redis_lock.held()] == ["flush"]
    await flush()
    with pytest.raises(ThreadBusy):
        await redis_lock.acquire("flush", ttl=30.0, timeout=0)
    await flush()
    with pytest.raises(ThreadBusy):  # waits, then leaves the queue
        await redis_lock.acquire("flush", ttl=30.0, timeout=0.2)
    got: list[Lease] = []

    async def waiter() -> None:
        got.append(await redis_lock.acquire("flush", ttl=30.0, timeout=None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_for_waiters(redis_lock, "flush", 1)
        await flush()
        assert await redis_lock.release(lease)  # hand-off after a flush
    assert got[0].fence > lease.fence
    await flush()
    assert await redis_lock.release(got[0])
    assert await redis_lock.held() == []


async def test_odd_keys_stay_ordinary_keys_across_instances(redis_url: str, prefix: str) -> None:
    async with (
        RedisThreadLock.from_url(redis_url, prefix=prefix) as a,
        RedisThreadLock.from_url(redis_url, prefix=prefix) as b,
    ):
        leases = {key: await a.acquire(key, ttl=30.0, timeout=0) for key in ODD_KEYS}
        assert len({lease.fence for lease in leases.values()}) == len(ODD_KEYS)
        for key in ODD_KEYS:
            with pytest.raises(ThreadBusy):
                await b.acquire(key, ttl=30.0, timeout=0)
            info = await b.inspect(key)
            assert info is not None
            assert info.key == key
        assert sorted(i.key for i in await b.held()) == sorted(ODD_KEYS)
        for name in await raw_keys(a):
            match = KEY_SHAPE.match(name)
            assert match is not None
            assert match["prefix"] == prefix
        # A lease on one odd key releases nothing else.
        assert await b.release(leases["*"])
        assert await b.inspect("*") is None
        assert len(await a.held()) == len(ODD_KEYS) - 1
        for key, lease in leases.items():
            assert await a.release(lease) is (key != "*")
        assert await b.held() == []


async def test_prefixes_do_not_see_each_other(redis_url: str, prefix: str) -> None:
    async with (
        RedisThreadLock.from_url(redis_url, prefix=prefix + "-a*") as a,
        RedisThreadLock.from_url(redis_url, prefix=prefix + "-a") as b,
    ):
        lease = await a.acquire("same", ttl=30.0)
        assert await b.held() == []
        other = await b.acquire("same", ttl=30.0, timeout=0)
        assert [i.fence for i in await a.held()] == [lease.fence]
        assert await a.release(lease)
        assert await b.release(other)


async def test_backend_errors_are_wrapped(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    async with RedisThreadLock.from_url(url, prefix=prefix) as lock:
        lease = Lease("k", "0" * 32, 1, 1.0, 0.0, 1.0)
        for call in (
            lambda: lock.acquire("k", timeout=0),
            lambda: lock.acquire("k", timeout=1.0),
            lambda: lock.release(lease),
            lambda: lock.extend(lease),
            lambda: lock.inspect("k"),
            lock.held,
        ):
            with pytest.raises(BackendError) as error:
                await call()
            assert error.value.__cause__ is not None


async def test_unix_socket_url(tmp_path: object, prefix: str) -> None:
    server = RedisServer()
    socket_path = server.dir / "redis.sock"
    server.args += ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    with server:
        lock = threadlock.from_url(f"unix://{socket_path}?db=0", prefix=prefix)
        assert isinstance(lock, RedisThreadLock)
        async with lock:
            lease = await lock.acquire("unix", ttl=5.0, timeout=0)
            assert await lock.release(lease)


def test_from_url_forms_build_without_connecting() -> None:
    port = free_port()  # nothing listens there: building must not connect
    plain = threadlock.from_url(f"redis://:p%40ss@127.0.0.1:{port}/3?threadlock_prefix=bots")
    assert isinstance(plain, RedisThreadLock)
    assert plain.prefix == "bots"
    kwargs = plain.client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"]) == ("p@ss", 3)

    tls = threadlock.from_url(f"rediss://default:secret@127.0.0.1:{port}/0", owner="me")
    assert isinstance(tls, RedisThreadLock)
    assert tls.owner == "me"
    assert "SSL" in tls.client.connection_pool.connection_class.__name__

    cluster = threadlock.from_url(f"redis+cluster://127.0.0.1:{port}/0", prefix="c")
    assert isinstance(cluster, RedisThreadLock)
    assert isinstance(cluster.client, RedisCluster)

    sentinel = threadlock.from_url(
        f"redis+sentinel://:pw@127.0.0.1:{port},127.0.0.2:{port}/mymaster/2"
    )
    assert isinstance(sentinel, RedisThreadLock)
    assert isinstance(sentinel.client, aioredis.Redis)
    assert sentinel.client.connection_pool.service_name == "mymaster"

    env = threadlock.from_env({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)})
    assert isinstance(env, RedisThreadLock)
    upstash = threadlock.from_env({"UPSTASH_REDIS_URL": f"rediss://x:y@127.0.0.1:{port}"})
    assert isinstance(upstash, RedisThreadLock)

    with pytest.raises(ValueError, match="prefix"):
        RedisThreadLock.from_url(f"redis://127.0.0.1:{port}", prefix="a{b}")
    with pytest.raises(ValueError, match="prefix"):
        RedisThreadLock.from_url(f"redis://127.0.0.1:{port}", prefix="")
    with pytest.raises(TypeError, match="client"):
        RedisThreadLock("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service name"):
        RedisThreadLock.from_url(f"redis+sentinel://127.0.0.1:{port}")


async def test_waiters_of_one_instance_share_one_inbox_channel(
    redis_lock: RedisThreadLock,
) -> None:
    lock = redis_lock
    holders = [await lock.acquire(key, ttl=30.0) for key in ("inbox-a", "inbox-b")]
    got: list[Lease] = []

    async def waiter(key: str) -> None:
        got.append(await lock.acquire(key, ttl=30.0, timeout=None))

    async with anyio.create_task_group() as tg:
        for key in ("inbox-a", "inbox-b"):
            tg.start_soon(waiter, key)
            await wait_for_waiters(lock, key, 1)
        channels = await lock.client.pubsub_channels(f"{lock.prefix}:*")
        assert channels == [f"{lock.prefix}:inbox:{lock._instance}".encode()]
        for holder in holders:
            assert await lock.release(holder)
    assert sorted(lease.key for lease in got) == ["inbox-a", "inbox-b"]
    for lease in got:
        assert await lock.release(lease)
    # The inbox stays subscribed for the next waiter: no SUBSCRIBE per contended acquire.
    assert await lock.client.pubsub_channels(f"{lock.prefix}:*") == channels
