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
from threadlock.testing import InboxRecoveryConformance

ODD = "{a}b} ' \" ]] -- ]==] \\ % käse 🧀"


class TestRedisInbox(InboxRecoveryConformance):
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
            names = [text(n) for n in await redis_lock.client.keys(f"{redis_lock.prefix}:{{*")]
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


# -- the prefix's index of keys with pending messages (crash recovery) -------------------------


def _index(lock: RedisThreadLock) -> str:
    return f"{lock.prefix}:inbox-keys:{{{lock.prefix}}}"


def _index_keys(lock: RedisThreadLock) -> list[bytes]:
    return [_index(lock).encode(), f"{lock.prefix}:inbox-until:{{{lock.prefix}}}".encode()]


async def _indexed(lock: RedisThreadLock) -> dict[str, int]:
    entries = await lock.client.zrange(_index(lock), 0, -1, withscores=True)
    return {text(member): int(score) for member, score in entries}


async def _script(lock: RedisThreadLock, name: str, keys: list[bytes], *args: object) -> object:
    store = RedisInboxStore.of(lock)
    return await store._commands.script_shielded(name, keys, *args)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_post_is_indexed_and_the_release_removes_it(redis_lock: RedisThreadLock) -> None:
    inbox = Inbox(redis_lock)
    async with inbox.turns("indexed", "m") as turns:
        async for _ in turns:
            assert list(await _indexed(redis_lock)) == ["indexed"]  # pending: indexed
    assert await _indexed(redis_lock) == {}  # released with nothing pending: removed
    # everything written lives a bounded time
    for name in await redis_lock.client.keys(f"{redis_lock.prefix}:*"):
        assert await redis_lock.client.pttl(name) > 0, name


@pytest.mark.anyio
async def test_a_crash_between_index_and_post_leaves_an_entry_a_sweep_removes(
    redis_lock: RedisThreadLock,
) -> None:
    # The poster stamped the key in the index and died before its post reached the key.
    await _script(redis_lock, "inbox_index", _index_keys(redis_lock), "ghost", 0, 60_000)
    assert list(await _indexed(redis_lock)) == ["ghost"]
    assert await Inbox(redis_lock).stranded() == []  # nothing pending there
    assert await _indexed(redis_lock) == {}  # removed on the way
    # had the poster only been slow, its post now lands with that stamp: refused, and the
    # store stamps it again, so the key is indexed while the message is pending
    store = RedisInboxStore.of(redis_lock)
    assert await store.append("ghost", "m", "j:1", max_pending=10, entry_ttl=60)
    assert list(await _indexed(redis_lock)) == ["ghost"]


@pytest.mark.anyio
async def test_a_post_overtaken_by_a_later_stamp_is_stamped_again(
    redis_lock: RedisThreadLock,
) -> None:
    # P2 stamps first, P1 stamps later and posts; the owner answers P1 and releases, which
    # removes the entry (its stamp is P1's). P2's post then lands with its older stamp: it
    # is refused and stamped again, so the key is indexed while its message is pending.
    store, index = RedisInboxStore.of(redis_lock), _index_keys(redis_lock)
    names = store._names("overtaken")
    late = text(await _script(redis_lock, "inbox_index", index, "overtaken", 0, 60_000))
    inbox = Inbox(redis_lock)
    answered = [[m.id for m in b.messages] async for b in inbox.turns("overtaken", 1, id="p1")]
    assert answered == [["p1"]]
    assert await _indexed(redis_lock) == {}
    reply = await _script(
        redis_lock, "inbox_post", names.all, "p2", "j:2", 10, 60_000, late, "overtaken"
    )
    assert isinstance(reply, list)
    assert reply[0] == -2  # refused: nothing stored
    assert await inbox.pending("overtaken") == []
    assert await store.append("overtaken", "p2", "j:2", max_pending=10, entry_ttl=60)
    assert list(await _indexed(redis_lock)) == ["overtaken"]
    assert await inbox.stranded() == ["overtaken"]  # pending, no lease: found


@pytest.mark.anyio
async def test_an_entry_stamped_after_the_reading_stays(redis_lock: RedisThreadLock) -> None:
    # A release read stamp r, then a post stamped the key again before the removal: the
    # removal (conditional on r) leaves the entry.
    store, index = RedisInboxStore.of(redis_lock), _index_keys(redis_lock)
    assert await store.append("restamped", "m1", "j:1", max_pending=10, entry_ttl=60)
    lease = await redis_lock.acquire("restamped", ttl=30)
    assert await store.ack(lease, ["m1"], entry_ttl=60)
    names = store._names("restamped")
    recorded = await _script(redis_lock, "inbox_finish", names.finish, b"p", lease.token, 10)
    await _script(redis_lock, "inbox_index", index, "restamped", 0, 60_000)  # a new post
    assert await _script(redis_lock, "inbox_unindex", index, "restamped", text(recorded)) == 0
    assert list(await _indexed(redis_lock)) == ["restamped"]


@pytest.mark.anyio
async def test_a_sweep_reads_a_bounded_page_and_goes_on_from_there(
    redis_lock: RedisThreadLock,
) -> None:
    store = RedisInboxStore.of(redis_lock)
    store.sweep_page = 2
    keys = [f"paged-{i}" for i in range(5)]
    for key in keys:
        assert await store.append(key, "m", "j:1", max_pending=10, entry_ttl=60)
    seen: list[list[str]] = [await store.stranded_keys(100) for _ in range(3)]
    assert [len(page) for page in seen] == [2, 2, 1]
    assert sorted(k for page in seen for k in page) == keys
    assert await store.stranded_keys(100) == keys[:2]  # round again from the start
    # a limit below the page: the next call starts with the first one left out
    assert await store.stranded_keys(1) == [keys[2]]
    assert await store.stranded_keys(1) == [keys[3]]


@pytest.mark.anyio
async def test_the_index_is_left_empty_by_bursts_on_many_keys(
    redis_lock: RedisThreadLock, redis_url: str, prefix: str
) -> None:
    # Two workers, 20 keys, a burst of 3 posts per key at once: every message is answered,
    # and every entry the posts wrote is removed again (nothing pending anywhere).
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as other:
        inboxes = [Inbox(redis_lock, entry_ttl=30.0), Inbox(other, entry_ttl=30.0)]
        answered: list[object] = []

        async def post(key: str, n: int) -> None:
            inbox = inboxes[n % 2]
            async with inbox.turns(key, f"{key}/{n}", ttl=30.0) as turns:
                async for batch in turns:
                    answered.extend(m.payload for m in batch.messages)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for k in range(20):
                    for n in range(3):
                        tg.start_soon(post, f"burst-{k}", n)
    assert sorted(answered) == sorted(f"burst-{k}/{n}" for k in range(20) for n in range(3))
    assert await _indexed(redis_lock) == {}
    assert not await redis_lock.client.exists(*_index_keys(redis_lock))  # empty zsets are gone
    assert await Inbox(redis_lock).stranded() == []
    # while it has an entry, the index expires two entry_ttl after the last post
    store = RedisInboxStore.of(redis_lock)
    assert await store.append("left", "m", "j:1", max_pending=10, entry_ttl=30.0)
    assert 0 < await redis_lock.client.pttl(_index(redis_lock)) <= 60_000


@pytest.mark.anyio
async def test_a_short_lived_post_keeps_the_entries_of_longer_lived_inboxes(
    redis_lock: RedisThreadLock,
) -> None:
    # The index is trimmed as posts come: an entry must go only after ITS keep time (two
    # entry_ttl of the posts that stamped it), never after the keep time of the post that
    # happens to trim. A post with a short entry_ttl neither drops the entry of a key whose
    # inbox lives an hour nor shortens the index's own life below that entry's.
    store = RedisInboxStore.of(redis_lock)
    assert await store.append("long-lived", "m", "j:1", max_pending=10, entry_ttl=3600.0)
    await anyio.sleep(0.1)  # older than the short post's keep time (2 x 0.02 s)
    assert await store.append("short-lived", "m", "j:1", max_pending=10, entry_ttl=0.02)
    assert "long-lived" in await _indexed(redis_lock)
    assert await redis_lock.client.pttl(_index(redis_lock)) > 3_600_000
    await anyio.sleep(0.1)  # the short-lived key's inbox and entry have both expired
    assert await Inbox(redis_lock).stranded() == ["long-lived"]  # found, so answered


@pytest.mark.anyio
async def test_a_sweep_page_boundary_between_equal_stamps_skips_none(
    redis_lock: RedisThreadLock,
) -> None:
    # Stamps rise per key, but two keys may get the same one (the same server µs, or a
    # floor). A page that ends inside a run of equal stamps must go on inside it.
    store = RedisInboxStore.of(redis_lock)
    store.sweep_page = 2
    keys = [f"tie-{i}" for i in range(5)]
    for key in keys:
        assert await store.append(key, "m", "j:1", max_pending=10, entry_ttl=60)
    stamps = await _indexed(redis_lock)
    tie = max(stamps.values())
    await redis_lock.client.zadd(_index(redis_lock), dict.fromkeys(keys[:3], tie), xx=True)
    seen = [await store.stranded_keys(100) for _ in range(3)]
    assert sorted(k for page in seen for k in page) == keys, seen
    # and a limit that cuts inside the run of equal stamps goes on with the first left out
    store._cursor = None
    assert await store.stranded_keys(1) == [keys[3]]  # lowest stamps first
    firsts = [await store.stranded_keys(1) for _ in range(4)]
    assert sorted(k for page in firsts for k in page) == sorted([*keys[:3], keys[4]]), firsts
