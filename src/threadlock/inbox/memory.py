"""The inbox store of :class:`~threadlock.MemoryThreadLock`: in-process state, one per lock.

Every method is one critical section: it changes the state without yielding, then yields
once (a checkpoint) so that callers behave as they would on a networked store. ``finish``
checks for pending messages and releases the lease with no yield in between
(:meth:`MemoryThreadLock.holds` and :meth:`~threadlock.MemoryThreadLock.release` do not
yield before they act), so a post cannot fall between the two.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import replace

import anyio.lowlevel

from threadlock._lease import Lease
from threadlock.backends.memory import MemoryThreadLock
from threadlock.errors import LeaseLost
from threadlock.inbox.store import StoredDead, StoredMessage, Taken
from threadlock.inbox.types import InboxFull

__all__ = ["MemoryInboxStore"]


class _Box:
    __slots__ = ("dead", "pending", "seen", "seq")

    def __init__(self) -> None:
        self.pending: dict[str, StoredMessage] = {}  # insertion order is arrival order
        self.seen: dict[str, float] = {}  # id -> monotonic end of its dedupe window
        self.dead: list[StoredDead] = []
        self.seq = 0


_STORES: weakref.WeakKeyDictionary[MemoryThreadLock, MemoryInboxStore] = weakref.WeakKeyDictionary()


class MemoryInboxStore:
    """See the module docstring. Build it with :meth:`of`, so a lock has one."""

    def __init__(self, lock: MemoryThreadLock) -> None:
        if not isinstance(lock, MemoryThreadLock):
            raise TypeError(f"lock must be a MemoryThreadLock, not {type(lock).__name__}")
        self._lock = lock
        self._boxes: dict[str, _Box] = {}

    @classmethod
    def of(cls, lock: MemoryThreadLock) -> MemoryInboxStore:
        """The store of ``lock`` (made on first use)."""
        store = _STORES.get(lock)
        if store is None:
            store = _STORES[lock] = cls(lock)
        return store

    def _box(self, key: str) -> _Box:
        box = self._boxes.get(key)
        if box is None:
            box = self._boxes[key] = _Box()
        return box

    def _tidy(self, key: str, box: _Box) -> None:
        now = time.monotonic()
        while box.seen:
            first = next(iter(box.seen))
            if box.seen[first] > now or first in box.pending:
                break
            del box.seen[first]
        if not box.pending and not box.dead and not box.seen:
            self._boxes.pop(key, None)

    def _taken(self, box: _Box | None, limit: int) -> Taken:
        if box is None or not box.pending:
            return Taken([], 0, 0.0, 0, time.time())
        records = list(box.pending.values())
        newest = records[-1]
        return Taken(records[:limit], len(records), newest.posted_at, newest.seq, time.time())

    def _check(self, lease: Lease) -> None:
        if not self._lock.holds(lease):
            raise LeaseLost(lease.key, lease.fence, "not held when the inbox was read")

    async def append(
        self, key: str, message_id: str, payload: str, *, max_pending: int, entry_ttl: float
    ) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.append`."""
        box = self._box(key)
        self._tidy(key, box)
        box = self._box(key)
        window = box.seen.get(message_id)
        if message_id in box.pending or (window is not None and window > time.monotonic()):
            await anyio.lowlevel.checkpoint()
            return False
        if len(box.pending) >= max_pending:
            self._tidy(key, box)
            await anyio.lowlevel.checkpoint()
            raise InboxFull(key, max_pending)
        box.seq += 1
        box.pending[message_id] = StoredMessage(message_id, payload, time.time(), 0, box.seq)
        box.seen.pop(message_id, None)  # re-inserted last: the window order stays sorted
        box.seen[message_id] = time.monotonic() + entry_ttl
        await anyio.lowlevel.checkpoint()
        return True

    async def take(self, lease: Lease, limit: int) -> Taken:
        """See :meth:`threadlock.inbox.store.InboxStore.take`."""
        self._check(lease)
        taken = self._taken(self._boxes.get(lease.key), limit)
        await anyio.lowlevel.checkpoint()
        return taken

    async def finish(self, lease: Lease, limit: int) -> Taken | None:
        """See :meth:`threadlock.inbox.store.InboxStore.finish`."""
        self._check(lease)
        box = self._boxes.get(lease.key)
        if box is not None and box.pending:
            taken = self._taken(box, limit)
            await anyio.lowlevel.checkpoint()
            return taken
        # Nothing pending: release in the same critical section (release() does not yield
        # before it hands the key on).
        await self._lock.release(lease)
        return None

    async def ack(self, lease: Lease, ids: Sequence[str], *, entry_ttl: float) -> bool:
        """See :meth:`threadlock.inbox.store.InboxStore.ack`."""
        if not self._lock.holds(lease):
            await anyio.lowlevel.checkpoint()
            return False
        box = self._boxes.get(lease.key)
        if box is not None:
            for message_id in ids:
                box.pending.pop(message_id, None)
            self._tidy(lease.key, box)
        await anyio.lowlevel.checkpoint()
        return True

    async def nack(
        self, lease: Lease, ids: Sequence[str], *, max_attempts: int, entry_ttl: float
    ) -> list[str] | None:
        """See :meth:`threadlock.inbox.store.InboxStore.nack`."""
        if not self._lock.holds(lease):
            await anyio.lowlevel.checkpoint()
            return None
        dead: list[str] = []
        box = self._boxes.get(lease.key)
        if box is not None:
            for message_id in ids:
                record = box.pending.get(message_id)
                if record is None:
                    continue
                record = replace(record, attempts=record.attempts + 1)
                if record.attempts >= max_attempts:
                    del box.pending[message_id]
                    box.dead.append(StoredDead(record, time.time()))
                    dead.append(message_id)
                else:
                    box.pending[message_id] = record
        await anyio.lowlevel.checkpoint()
        return dead

    async def newest_seq(self, key: str) -> int:
        """See :meth:`threadlock.inbox.store.InboxStore.newest_seq`."""
        box = self._boxes.get(key)
        await anyio.lowlevel.checkpoint()
        if box is None or not box.pending:
            return 0
        return next(reversed(box.pending.values())).seq

    async def pending(self, key: str) -> list[StoredMessage]:
        """See :meth:`threadlock.inbox.store.InboxStore.pending`."""
        box = self._boxes.get(key)
        await anyio.lowlevel.checkpoint()
        return [] if box is None else list(box.pending.values())

    async def dead_letters(self, key: str) -> list[StoredDead]:
        """See :meth:`threadlock.inbox.store.InboxStore.dead_letters`."""
        box = self._boxes.get(key)
        await anyio.lowlevel.checkpoint()
        return [] if box is None else list(box.dead)

    async def stranded_keys(self, limit: int = 100) -> list[str]:
        """See :meth:`threadlock.inbox.store.SweepableStore.stranded_keys`."""
        found: list[str] = []
        for key, box in list(self._boxes.items()):
            if len(found) >= limit:
                break
            if box.pending and await self._lock.inspect(key) is None:
                found.append(key)
        await anyio.lowlevel.checkpoint()
        return found

    async def summary(self, limit: int = 1000) -> list[tuple[str, int, int]]:
        """See :meth:`threadlock.inbox.store.SummaryStore.summary`."""
        rows = sorted(
            (key, len(box.pending), len(box.dead))
            for key, box in self._boxes.items()
            if box.pending or box.dead
        )
        await anyio.lowlevel.checkpoint()
        return rows[:limit]
