"""The Redis backend through the inbox conformance suite (two instances on one prefix, as two
workers), plus what is particular to Redis: the inbox keys share the lease's hash slot, and
keys and values with Lua-hostile characters stay plain data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from threadlock import Inbox, LeaseLost
from threadlock.backends.redis import RedisThreadLock
from threadlock.backends.redis.keys import text
from threadlock.inbox.redis import RedisInboxStore
from threadlock.testing import InboxConformance

ODD = "{a}b} ' \" ]] -- ]==] \\ % käse 🧀"


class TestRedisInbox(InboxConformance):
    @pytest.fixture
    async def lock(self, redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
            yield backend

    @pytest.fixture
    async def other_lock(self, redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
        async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
            yield backend


@pytest.mark.anyio
async def test_inbox_keys_share_the_lease_slot(redis_lock: RedisThreadLock) -> None:
    inbox = Inbox(redis_lock)
    async with inbox.turns("slot-key", "m") as turns:
        async for batch in turns:
            names = [text(n) for n in await redis_lock.client.keys(f"{redis_lock.prefix}:*")]
            tags = {n[n.index("{") : n.index("}") + 1] for n in names}
            assert any(n.endswith(":inbox:pend") for n in names)
            assert any(n.endswith(":lease") for n in names)
            assert len(tags) == 1, names
            assert batch.messages[0].payload == "m"


@pytest.mark.anyio
async def test_odd_keys_ids_and_payloads_are_data(redis_lock: RedisThreadLock) -> None:
    inbox = Inbox(redis_lock)
    answered = []
    for payload in [ODD, ODD.encode(), {"k": ODD}]:
        async with inbox.turns(ODD, payload, id=ODD + str(len(answered))) as turns:
            async for batch in turns:
                answered.append((batch.messages[0].id, batch.messages[0].payload))
    assert answered == [(ODD + "0", ODD), (ODD + "1", ODD.encode()), (ODD + "2", {"k": ODD})]
    assert await inbox.pending(ODD) == []


@pytest.mark.anyio
async def test_a_lease_past_its_end_is_not_the_owners_though_its_key_remains(
    redis_lock: RedisThreadLock,
) -> None:
    # The lease key outlives the lease (it keeps the last fence), so "the key exists" must
    # not pass for "the lease is held": an owner whose lease ended, even with nobody else
    # holding the key, can neither take, ack nor finish.
    store = RedisInboxStore.of(redis_lock)
    assert await store.append("ended", "m1", "s:one", max_pending=10, entry_ttl=60)
    lease = await redis_lock.acquire("ended", ttl=0.2)
    await anyio.sleep(0.4)  # the lease ends; nobody takes the key
    assert not await store.ack(lease, ["m1"], entry_ttl=60)
    with pytest.raises(LeaseLost):
        await store.take(lease, 10)
    with pytest.raises(LeaseLost):
        await store.finish(lease, 10)
    assert [m.id for m in await Inbox(redis_lock).pending("ended")] == ["m1"]  # nothing lost
