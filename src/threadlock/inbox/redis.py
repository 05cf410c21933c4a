"""The inbox store of :class:`~threadlock.backends.redis.RedisThreadLock`.

A key's inbox is five Redis keys beside its lease, under the same hash tag (one Cluster
slot): ``<prefix>:{<digest>}:inbox:pend``, ``:msg``, ``:seen``, ``:seq`` and ``:dead`` (their
layout is in ``backends/redis/lua/_inbox.lua``). Every step is one Lua script
(``inbox_*.lua``, loaded and called as the lock's scripts are), with keys and values passed
as KEYS and ARGV, never spliced into the script. ``inbox_finish.lua`` releases the lease with
the same code as ``release.lua`` when nothing is pending, so the release boundary is atomic.

It is built from the lock's public surface (its client, prefix and pub/sub mode); the lock
itself is not changed by it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from threadlock._lease import Lease
from threadlock.backends.redis.keys import NameCache, text, ttl_ms
from threadlock.backends.redis.lock import RedisThreadLock
from threadlock.backends.redis.scripts import RedisCommands
from threadlock.errors import LeaseLost
from threadlock.inbox.store import StoredDead, StoredMessage, Taken
from threadlock.inbox.types import InboxFull

__all__ = ["DEAD_LETTERS_KEPT", "RedisInboxStore"]

#: How many dead letters a key keeps (the oldest go first).
DEAD_LETTERS_KEPT = 1000

_PARTS = ("pend", "msg", "seen", "seq", "dead")

_STORES: weakref.WeakKeyDictionary[RedisThreadLock, RedisInboxStore] = weakref.WeakKeyDictionary()


class _Names:
    __slots__ = ("all", "lease", "lock", "pend_msg")

    def __init__(self, base: str, lock: list[bytes]) -> None:
        inbox = [f"{base}:inbox:{part}".encode() for part in _PARTS]
        self.lock = lock  # KEYS 1-7 of a full lock script (the tombstone is never written)
        self.lease = lock[0]
        self.all = inbox  # pend, msg, seen, seq, dead
        self.pend_msg = inbox[:2]


def _us(value: object) -> float:
    return int(text(value)) / 1_000_000


class RedisInboxStore:
    """See the module docstring. Build it with :meth:`of`, so a lock has one."""

    def __init__(self, lock: RedisThreadLock) -> None:
        if not isinstance(lock, RedisThreadLock):
            raise TypeError(f"lock must be a RedisThreadLock, not {type(lock).__name__}")
        self._commands = RedisCommands(lock.client, lock.command_timeout)
        self._key_names = NameCache(lock.prefix)
        self._pub = b"s" if lock.sharded_pubsub else b"p"
        self._cache: dict[str, _Names] = {}

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
        reply = await self._commands.script_shielded(
            "inbox_post",
            self._names(key).all,
            message_id,
            payload,
            max_pending,
            ttl_ms(entry_ttl),
        )
        if int(reply) < 0:
            raise InboxFull(key, max_pending)
        return int(reply) == 1

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
            "inbox_finish", [*names.lock, *names.pend_msg], self._pub, lease.token, limit
        )
        if isinstance(reply, list):
            return self._taken(reply)
        if int(reply) < 0:
            raise LeaseLost(lease.key, lease.fence, "not held at the end of the batch")
        return None

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
