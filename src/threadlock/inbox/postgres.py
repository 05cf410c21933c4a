"""The inbox store of :class:`~threadlock.backends.postgres.PostgresThreadLock`.

The messages are rows of ``<table>_inbox`` (pending ones, and acknowledged or dead ones kept
until their deduplication window ends), the dead letters rows of ``<table>_inbox_dead``;
``create_schema()`` creates both (migration 6, ``backends/postgres/sql/006_inbox.sql``), and
the functions are in ``sql/functions.sql``. Every step is ONE statement (one transaction)
that takes the key's advisory lock first, the one acquire and release take, with every key,
id and payload a bound parameter.

``finish`` (the release boundary) is ``<table>_inbox_finish``: under that lock it finds the
inbox empty and then calls the backend's own ``<table>_release`` function in the same
transaction, so a post, which needs the same lock, lands either before it (and is in the
batch) or after the release (and its ``turns()`` finds the key free). A lease that release
hands to a waiter of this instance is passed on as the lock's own release does.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from threadlock._lease import Lease
from threadlock.backends.postgres.lock import PostgresThreadLock
from threadlock.errors import LeaseLost
from threadlock.inbox.store import StoredDead, StoredMessage, Taken
from threadlock.inbox.types import InboxFull

__all__ = ["DEAD_LETTERS_KEPT", "PostgresInboxStore"]

#: How many dead letters a key keeps (the oldest go first).
DEAD_LETTERS_KEPT = 1000

_STORES: weakref.WeakKeyDictionary[PostgresThreadLock, PostgresInboxStore] = (
    weakref.WeakKeyDictionary()
)


def _taken(rows: Sequence[tuple[Any, ...]]) -> Taken:
    """A :class:`Taken` from rows shaped as ``<table>_inbox_batch`` returns them."""
    first = rows[0]
    messages = [
        StoredMessage(str(r[0]), str(r[1]), float(r[2]), int(r[3]), int(r[4]))
        for r in rows
        if r[0] is not None
    ]
    return Taken(messages, int(first[5]), float(first[6]), int(first[7]), float(first[8]))


class PostgresInboxStore:
    """See the module docstring. Build it with :meth:`of`, so a lock has one."""

    def __init__(self, lock: PostgresThreadLock) -> None:
        if not isinstance(lock, PostgresThreadLock):
            raise TypeError(f"lock must be a PostgresThreadLock, not {type(lock).__name__}")
        self._lock = lock
        self._execute = lock._execute
        self._sql = lock._sql

    @classmethod
    def of(cls, lock: PostgresThreadLock) -> PostgresInboxStore:
        """The store of ``lock`` (made on first use)."""
        store = _STORES.get(lock)
        if store is None:
            store = _STORES[lock] = cls(lock)
        return store

    async def append(
        self, key: str, message_id: str, payload: str, *, max_pending: int, entry_ttl: float
    ) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.append`."""
        rows = await self._execute(
            self._sql.inbox_post, (key, message_id, payload, max_pending, entry_ttl)
        )
        outcome = int(rows[0][0])
        if outcome < 0:
            raise InboxFull(key, max_pending)
        return outcome == 1

    async def take(self, lease: Lease, limit: int) -> Taken:
        """See :meth:`threadlock.inbox.store.InboxStore.take`."""
        rows = await self._execute(self._sql.inbox_take, (lease.key, lease.token, limit))
        if not rows:
            raise LeaseLost(lease.key, lease.fence, "not held when the inbox was read")
        return _taken(rows)

    async def finish(self, lease: Lease, limit: int) -> Taken | None:
        """See :meth:`threadlock.inbox.store.InboxStore.finish`."""
        lock = self._lock
        rows = await self._execute(
            self._sql.inbox_finish,
            (lease.key, lease.token, limit, lock._relaxed, lock._ids.instance),
        )
        status = rows[0][0]
        if status == "batch":
            return _taken([row[1:10] for row in rows])
        if status == "lost":
            raise LeaseLost(lease.key, lease.fence, "not held at the end of the batch")
        _, *_batch, wid, fence, acquired_at, expires_at = rows[0]
        lock._hand_over(lease.key, wid, fence, acquired_at, expires_at)
        return None

    async def ack(self, lease: Lease, ids: Sequence[str], *, entry_ttl: float) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.ack`."""
        rows = await self._execute(self._sql.inbox_ack, (lease.key, lease.token, list(ids)))
        return bool(rows[0][0])

    async def nack(
        self, lease: Lease, ids: Sequence[str], *, max_attempts: int, entry_ttl: float
    ) -> list[str] | None:
        """See :meth:`threadlock.inbox.store.InboxStore.nack`."""
        rows = await self._execute(
            self._sql.inbox_nack,
            (lease.key, lease.token, list(ids), max_attempts, DEAD_LETTERS_KEPT),
        )
        dead = rows[0][0]
        return None if dead is None else [str(i) for i in dead]

    async def newest_seq(self, key: str) -> int:
        """See :meth:`threadlock.inbox.store.InboxStore.newest_seq`."""
        rows = await self._execute(self._sql.inbox_newest, (key,))
        return int(rows[0][0])

    async def pending(self, key: str) -> list[StoredMessage]:
        """See :meth:`threadlock.inbox.store.InboxStore.pending`."""
        return _taken(await self._execute(self._sql.inbox_pending, (key,))).messages

    async def dead_letters(self, key: str) -> list[StoredDead]:
        """See :meth:`threadlock.inbox.store.InboxStore.dead_letters`."""
        rows = await self._execute(self._sql.inbox_dead, (key,))
        return [
            StoredDead(StoredMessage(str(r[0]), str(r[1]), float(r[2]), int(r[3]), 0), float(r[4]))
            for r in rows
        ]

    async def stranded_keys(self, limit: int = 100) -> list[str]:
        """Keys with a pending message and no live lease, at most ``limit``."""
        rows = await self._execute(self._sql.inbox_stranded, (limit,))
        return [str(r[0]) for r in rows]

    async def summary(self, limit: int = 1000) -> list[tuple[str, int, int]]:
        """See :meth:`threadlock.inbox.store.SummaryStore.summary`."""
        rows = await self._execute(self._sql.inbox_summary, (limit,))
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]
