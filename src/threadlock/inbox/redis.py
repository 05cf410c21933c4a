"""The inbox store of :class:`~threadlock.backends.redis.RedisThreadLock`.

A key's inbox is six Redis keys beside its lease, under the same hash tag (one Cluster
slot): ``<prefix>:{<digest>}:inbox:pend``, ``:msg``, ``:seen``, ``:seq``, ``:dead`` and
``:stamp`` (their layout is in ``backends/redis/lua/_inbox.lua``). Every step is one Lua
script (``inbox_*.lua``, loaded and called as the lock's scripts are), with keys and values
passed as KEYS and ARGV, never spliced into the script. ``inbox_finish.lua`` releases the
lease with the same code as ``release.lua`` when nothing is pending, so the release boundary
is atomic.

Crash recovery (:meth:`RedisInboxStore.stranded_keys`) reads one more key per prefix,
``<prefix>:inbox-keys:{<prefix>}`` (the *index*): a sorted set of the user keys that may have
pending messages, each with a *stamp* (server µs, rising per key); beside it, in its slot,
``<prefix>:inbox-until:{<prefix>}`` holds each entry's keep time. That slot is not a key's,
so no script of a key's slot touches them (a script may only touch one slot on a Cluster);
instead:

* a post first stamps its key in the index (``inbox_index.lua``), then posts with that stamp
  (``inbox_post.lua``), which records the newest stamp resolved in the key's slot and refuses
  (to be stamped again) a post whose stamp is older than the recorded one. A crash between
  the two steps leaves an entry with nothing pending, never a message unindexed;
* the release at the end of the last batch returns the recorded stamp, and the entry is then
  removed only if its stamp is still that one (``inbox_unindex.lua``): a post in flight has a
  later stamp, so its entry stays. A sweep that finds an entry whose key has nothing pending
  and no live lease (a crash between release and removal, or a poster that died between its
  two steps) raises the key's recorded stamp to the entry's first (``inbox_settle.lua``), so
  a post stamped up to then that lands later is refused and stamped again, then removes the
  entry as the release does;
* an entry is kept two ``entry_ttl`` after its last stamp, the longest any of its key's posts
  asked (each post's own ``entry_ttl``; a post with a short one drops no other key's entry),
  and the index expires as a whole after the longest keep time asked; a sweep reads at most
  :attr:`RedisInboxStore.sweep_page` entries, oldest stamp first (then by key), and goes on
  after the last one it read (stamp and key: two keys may share a stamp) at its next call,
  so each call is bounded and every entry is read within ``len(index) / sweep_page + 1``
  calls.

It is built from the lock's public surface (its client, prefix and pub/sub mode); the lock
itself is not changed by it.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Sequence
from typing import Any, cast

from threadlock._lease import Lease
from threadlock.backends.redis.keys import NameCache, scan_pattern, text, ttl_ms
from threadlock.backends.redis.lock import RedisThreadLock
from threadlock.backends.redis.scripts import RedisCommands, for_each_bounded
from threadlock.errors import BackendError, LeaseLost
from threadlock.inbox.store import StoredDead, StoredMessage, Taken
from threadlock.inbox.types import InboxFull

__all__ = ["DEAD_LETTERS_KEPT", "RedisInboxStore"]

#: How many dead letters a key keeps (the oldest go first).
DEAD_LETTERS_KEPT = 1000

#: How many times a post is stamped again when later stamps keep overtaking it.
_POST_TRIES = 50

_PARTS = ("pend", "msg", "seen", "seq", "dead", "stamp")
_STAMP_SUFFIX = ":inbox:stamp"

_log = logging.getLogger("threadlock.inbox")

_STORES: weakref.WeakKeyDictionary[RedisThreadLock, RedisInboxStore] = weakref.WeakKeyDictionary()


class _Names:
    __slots__ = ("all", "finish", "lease", "lock", "pend_msg", "probe", "settle")

    def __init__(self, base: str, lock: list[bytes]) -> None:
        inbox = [f"{base}:inbox:{part}".encode() for part in _PARTS]
        self.lock = lock  # KEYS 1-7 of a full lock script (the tombstone is never written)
        self.lease = lock[0]
        self.all = inbox  # pend, msg, seen, seq, dead, stamp
        self.pend_msg = inbox[:2]
        self.finish = [*lock, *inbox[:2], inbox[5]]
        self.probe = [lock[0], inbox[0], inbox[4]]  # lease, pend, dead
        self.settle = [lock[0], inbox[0], inbox[5]]  # lease, pend, stamp


def _raw(value: object) -> bytes:
    """A member of a Redis reply as bytes (Redis orders members by their bytes)."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _us(value: object) -> float:
    return int(text(value)) / 1_000_000


class RedisInboxStore:
    """See the module docstring. Build it with :meth:`of`, so a lock has one."""

    #: How many index entries one :meth:`stranded_keys` call reads at most.
    sweep_page: int = 1000

    def __init__(self, lock: RedisThreadLock) -> None:
        if not isinstance(lock, RedisThreadLock):
            raise TypeError(f"lock must be a RedisThreadLock, not {type(lock).__name__}")
        self._commands = RedisCommands(lock.client, lock.command_timeout)
        self._prefix = lock.prefix
        self._key_names = NameCache(lock.prefix)
        self._pub = b"s" if lock.sharded_pubsub else b"p"
        self._cache: dict[str, _Names] = {}
        tag = "{" + lock.prefix + "}"  # the prefix has no braces: one slot for both keys
        self._index = f"{lock.prefix}:inbox-keys:{tag}".encode()
        self._index_keys = [self._index, f"{lock.prefix}:inbox-until:{tag}".encode()]
        #: the (stamp, key) the next sweep reads after (None: from the start)
        self._cursor: tuple[int, bytes] | None = None
        self._keep_ms = ttl_ms(2 * 3600.0)  # how long a settled stamp is kept (2 entry_ttl)

    @classmethod
    def of(cls, lock: RedisThreadLock) -> RedisInboxStore:
        """The store of ``lock`` (made on first use)."""
        store = _STORES.get(lock)
        if store is None:
            store = _STORES[lock] = cls(lock)
        return store

    def _names(self, key: str) -> _Names:
        names = self._cache.get(key)
        if names is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            lock_names = self._key_names(key)
            names = self._cache[key] = _Names(lock_names.base, lock_names.acquire_keys("inbox")[:7])
        return names

    @staticmethod
    def _record(message_id: object, record: object, seq: object) -> StoredMessage:
        posted, attempts, payload = text(record).split(" ", 2)
        return StoredMessage(text(message_id), payload, _us(posted), int(attempts), int(text(seq)))

    def _taken(self, reply: Sequence[Any]) -> Taken:
        messages = [
            self._record(reply[i], reply[i + 1], reply[i + 2]) for i in range(4, len(reply), 3)
        ]
        return Taken(messages, int(reply[0]), _us(reply[1]), int(reply[2]), _us(reply[3]))

    async def append(
        self, key: str, message_id: str, payload: str, *, max_pending: int, entry_ttl: float
    ) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.append`."""
        names, script = self._names(key), self._commands.script_shielded
        floor: int | str = 0
        self._keep_ms = keep_ms = ttl_ms(2 * entry_ttl)
        for _ in range(_POST_TRIES):
            stamp = await script("inbox_index", self._index_keys, key, floor, keep_ms)
            reply = await script(
                "inbox_post",
                names.all,
                message_id,
                payload,
                max_pending,
                ttl_ms(entry_ttl),
                text(stamp),
                key,
            )
            if isinstance(reply, list):  # a later stamp landed first: stamp above it, again
                floor = text(reply[1])
                continue
            if int(reply) == -1:
                raise InboxFull(key, max_pending)
            return int(reply) == 1
        raise BackendError(f"redis: the inbox post to {key!r} was overtaken {_POST_TRIES} times")

    async def take(self, lease: Lease, limit: int) -> Taken:
        """See :meth:`threadlock.inbox.store.InboxStore.take`."""
        names = self._names(lease.key)
        reply = await self._commands.script_shielded(
            "inbox_take", [names.lease, *names.pend_msg], lease.token, limit
        )
        if not isinstance(reply, list):
            raise LeaseLost(lease.key, lease.fence, "not held when the inbox was read")
        return self._taken(reply)

    async def finish(self, lease: Lease, limit: int) -> Taken | None:
        """See :meth:`threadlock.inbox.store.InboxStore.finish`."""
        names = self._names(lease.key)
        reply = await self._commands.script_shielded(
            "inbox_finish", names.finish, self._pub, lease.token, limit
        )
        if isinstance(reply, list):
            return self._taken(reply)
        if isinstance(reply, int):
            raise LeaseLost(lease.key, lease.fence, "not held at the end of the batch")
        await self._unindex(lease.key, text(reply))  # released: the recorded stamp
        return None

    async def _unindex(self, key: str, stamp: str) -> None:
        """Remove ``key`` from the index if its stamp is still ``stamp``. A failure is only
        logged: the entry stays, and a sweep removes it later."""
        if stamp == "0":
            return  # nothing recorded (expired): the entry ages out
        try:
            await self._commands.script_shielded("inbox_unindex", self._index_keys, key, stamp)
        except BackendError as error:
            _log.debug("inbox index: %r stays until a sweep: %s", key, error)

    async def ack(self, lease: Lease, ids: Sequence[str], *, entry_ttl: float) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.ack`."""
        names = self._names(lease.key)
        reply = await self._commands.script_shielded(
            "inbox_ack", [names.lease, *names.all], lease.token, ttl_ms(entry_ttl), *ids
        )
        return int(reply) == 1

    async def nack(
        self, lease: Lease, ids: Sequence[str], *, max_attempts: int, entry_ttl: float
    ) -> list[str] | None:
        """See :meth:`threadlock.inbox.store.InboxStore.nack`."""
        names = self._names(lease.key)
        reply = await self._commands.script_shielded(
            "inbox_nack",
            [names.lease, *names.all],
            lease.token,
            ttl_ms(entry_ttl),
            max_attempts,
            DEAD_LETTERS_KEPT,
            *ids,
        )
        if not isinstance(reply, list):
            return None
        return [text(i) for i in reply]

    async def newest_seq(self, key: str) -> int:
        """See :meth:`threadlock.inbox.store.InboxStore.newest_seq`."""
        pend = self._names(key).all[0]
        client = self._commands.client
        newest = await self._commands.command(
            lambda: client.zrange(pend, -1, -1, withscores=True), shield=True
        )
        return int(newest[0][1]) if newest else 0

    async def pending(self, key: str) -> list[StoredMessage]:
        """See :meth:`threadlock.inbox.store.InboxStore.pending`."""
        reply = await self._commands.script_shielded("inbox_read", self._names(key).pend_msg)
        return self._taken(reply).messages

    async def dead_letters(self, key: str) -> list[StoredDead]:
        """See :meth:`threadlock.inbox.store.InboxStore.dead_letters`."""
        dead = self._names(key).all[4]
        client = self._commands.client
        entries = await self._commands.command(lambda: client.lrange(dead, 0, -1), shield=True)
        letters = []
        for entry in entries:
            died, attempts, posted, size, rest = text(entry).split(" ", 4)
            n = int(size)
            message = StoredMessage(rest[:n], rest[n:], _us(posted), int(attempts), 0)
            letters.append(StoredDead(message, _us(died)))
        return letters

    async def _probe(self, keys: Sequence[str]) -> dict[str, tuple[int, bool, int]]:
        """Per key: (pending, whether a live lease holds it, dead letters)."""
        found: dict[str, tuple[int, bool, int]] = {}

        async def probe(key: str) -> None:
            reply = await self._commands.script_shielded("inbox_probe", self._names(key).probe)
            found[key] = (int(reply[0]), int(reply[1]) == 1, int(reply[2]))

        await for_each_bounded(keys, probe)
        return found

    async def stranded_keys(self, limit: int = 100) -> list[str]:
        """See :meth:`threadlock.inbox.store.SweepableStore.stranded_keys`: at most
        :attr:`sweep_page` entries of the index, from where the last call stopped (see the
        module docstring). An entry whose key has nothing pending and no live lease is
        removed on the way (if no post stamped it since)."""
        entries = await self._page()
        keys = [text(member) for _, member in entries]
        state = await self._probe(keys)
        stranded: list[str] = []
        idle: dict[str, int] = {}
        for i, key in enumerate(keys):
            pending, live, _ = state[key]
            if pending and not live:
                if len(stranded) == limit:
                    self._cursor = entries[i - 1]  # the next call starts with this one (i > 0)
                    break
                stranded.append(key)
            elif not pending and not live:
                idle[key] = entries[i][0]
        await for_each_bounded(list(idle), lambda key: self._settle(key, idle[key]))
        return stranded

    async def _page(self) -> list[tuple[int, bytes]]:
        """The next :attr:`sweep_page` index entries (stamp, key) after the cursor, in the
        index's order (stamp, then key bytes), and the cursor moved past them (None at the
        index's end). Stamps rise per key but two keys may share one, so the cursor is an
        entry, not a stamp: a page that ends inside a run of equal stamps goes on inside it."""
        client, index = self._commands.client, self._index
        page, after = self.sweep_page, self._cursor
        low = "-inf" if after is None else str(after[0])  # inclusive: equal stamps come again
        fresh: list[tuple[int, bytes]] = []
        offset, ended = 0, False
        while len(fresh) < page and not ended:
            reply = await self._commands.command(
                functools.partial(
                    client.zrangebyscore,
                    index,
                    low,
                    "+inf",
                    start=offset,
                    num=page,
                    withscores=True,
                ),
                shield=True,
            )
            got = [(int(score), _raw(member)) for member, score in cast(list[Any], reply)]
            # those at or before the cursor come first (the index is ordered as the cursor)
            fresh.extend(got if after is None else [entry for entry in got if entry > after])
            ended, offset = len(got) < page, offset + page
        if len(fresh) > page:
            fresh, ended = fresh[:page], False
        self._cursor = None if ended or not fresh else fresh[-1]
        return fresh

    async def _settle(self, key: str, score: int) -> None:
        """Remove the entry of ``key`` (nothing pending, no live lease), stamped ``score`` in
        the index: raise its recorded stamp to ``score`` first, so that a post stamped up
        to then that lands later is refused and indexed again (``inbox_settle.lua``)."""
        names = self._names(key)
        settled = await self._commands.script_shielded(
            "inbox_settle", names.settle, score, key, self._keep_ms
        )
        if int(settled) == 1:
            await self._unindex(key, str(score))

    async def summary(self, limit: int = 1000) -> list[tuple[str, int, int]]:
        """See :meth:`threadlock.inbox.store.SummaryStore.summary`. It scans the prefix's
        keys (``SCAN``, as ``held()`` does), so it finds every key whose inbox is still kept,
        whether or not the index has it."""
        stamps = await self._commands.scan(scan_pattern(self._prefix, "inbox:stamp"))
        values = await self._commands.get_many(stamps)
        keys = sorted({text(v).split(" ", 1)[1] for v in values if v is not None})
        state = await self._probe(keys)
        rows = [(key, state[key][0], state[key][2]) for key in keys]
        return [row for row in rows if row[1] or row[2]][:limit]
