"""The :class:`InboxStore` protocol (what a backend implements for the inbox) and how the
inbox finds the store of a lock.

A store keeps the messages of every key *in the backend*, and makes each step atomic there:

* ``append`` stores a message, refusing a duplicate id and a full inbox in the same step;
* ``take`` reads the oldest pending messages, without removing them (at least once);
* ``ack`` removes a batch only while the caller's lease is held (fence check);
* ``nack`` counts a failed attempt, moving a message that used up its attempts to the
  dead letters;
* ``finish`` is the release boundary: it releases the lease when nothing is pending, or
  else reads the next batch, in one step, so a message posted meanwhile is either in that
  batch or finds the key free.

A strategy (queue, coalesce, ...) never lives in a store: it only chooses among what
``take`` returns (see :mod:`threadlock.inbox.api`).

Lookup (:func:`store_for`): a lock whose class has a public ``inbox_store()`` method gets its
store from it (a third-party backend's way in); otherwise a store registered for the lock's
type with :func:`register_store` (the memory, Redis and Postgres stores are found here).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from threadlock._lease import Lease

__all__ = [
    "InboxStore",
    "StoredDead",
    "StoredMessage",
    "SummaryStore",
    "SweepableStore",
    "Taken",
    "register_store",
    "store_for",
]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as a store keeps it: the payload in its stored form (see
    :func:`threadlock.inbox.types.encode_payload`), ``attempts`` failed so far, and ``seq``,
    its arrival number (increasing per key)."""

    id: str
    payload: str
    posted_at: float
    attempts: int
    seq: int


@dataclass(frozen=True, slots=True)
class StoredDead:
    """A dead letter as a store keeps it."""

    message: StoredMessage
    died_at: float


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` and ``finish`` read under the lease.

    Attributes:
        messages: the oldest pending messages, at most the limit asked, in arrival order.
        pending: how many messages are pending in all.
        newest_posted: ``posted_at`` of the newest pending message (0 if none).
        newest_seq: ``seq`` of the newest pending message (0 if none).
        now: the backend's clock, epoch seconds, when it read them (debounce deadlines are
            computed on this clock, never by comparing with the worker's).
    """

    messages: list[StoredMessage]
    pending: int
    newest_posted: float
    newest_seq: int
    now: float


@runtime_checkable
class InboxStore(Protocol):
    """Where a backend keeps inbox messages; every method is one atomic step in the backend."""

    async def append(
        self, key: str, message_id: str, payload: str, *, max_pending: int, entry_ttl: float
    ) -> bool:
        """Store a message; ``False`` (and nothing changed) if ``message_id`` was already
        posted to ``key`` within ``entry_ttl``. Raises
        :class:`~threadlock.inbox.types.InboxFull` when ``max_pending`` are pending."""
        ...

    async def take(self, lease: Lease, limit: int) -> Taken:
        """The oldest ``limit`` pending messages of ``lease.key``; raises
        :class:`~threadlock.LeaseLost` if the lease is not held."""
        ...

    async def finish(self, lease: Lease, limit: int) -> Taken | None:
        """Release ``lease`` if nothing is pending (``None``), else :meth:`take`, atomically."""
        ...

    async def ack(self, lease: Lease, ids: Sequence[str], *, entry_ttl: float) -> bool:
        """Remove ``ids`` from the pending messages if ``lease`` is held; ``False`` if not."""
        ...

    async def nack(
        self, lease: Lease, ids: Sequence[str], *, max_attempts: int, entry_ttl: float
    ) -> list[str] | None:
        """Count a failed attempt of ``ids``; those that reach ``max_attempts`` become dead
        letters (their ids are returned). ``None`` if ``lease`` is not held."""
        ...

    async def newest_seq(self, key: str) -> int:
        """The arrival number of the newest pending message of ``key`` (0 if none)."""
        ...

    async def pending(self, key: str) -> list[StoredMessage]:
        """Every pending message of ``key``, in arrival order."""
        ...

    async def dead_letters(self, key: str) -> list[StoredDead]:
        """The dead letters of ``key``, oldest first."""
        ...


@runtime_checkable
class SweepableStore(Protocol):
    """A store that crash recovery (:meth:`threadlock.Inbox.sweep`) can scan."""

    async def stranded_keys(self, limit: int = 100) -> list[str]:
        """Keys with a pending message and no live lease (at most ``limit``): their owner
        died, or let its lease run out, before it finished."""
        ...


@runtime_checkable
class SummaryStore(Protocol):
    """A store that can list its keys, for ``threadlock status --inbox`` and ``recover``."""

    async def summary(self, limit: int = 1000) -> list[tuple[str, int, int]]:
        """``(key, pending, dead letters)`` of every key with either (at most ``limit``,
        sorted by key)."""
        ...


_Factory = Callable[[Any], InboxStore]
_REGISTRY: dict[type, _Factory] = {}


def register_store(lock_type: type, factory: _Factory) -> None:
    """Use ``factory(lock)`` as the inbox store of every lock of ``lock_type`` (or a subclass).

    ``factory`` should return the same store for the same lock, so that every
    :class:`~threadlock.Inbox` on one lock sees one state.
    """
    if not isinstance(lock_type, type):
        raise TypeError(f"lock_type must be a class, not {type(lock_type).__name__}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {type(factory).__name__}")
    _REGISTRY[lock_type] = factory


def _builtin(lock: object) -> _Factory | None:
    from threadlock.backends.memory import MemoryThreadLock

    if isinstance(lock, MemoryThreadLock):
        from threadlock.inbox.memory import MemoryInboxStore

        return MemoryInboxStore.of
    redis_module = sys.modules.get("threadlock.backends.redis.lock")
    if redis_module is not None and isinstance(lock, redis_module.RedisThreadLock):
        from threadlock.inbox.redis import RedisInboxStore

        return RedisInboxStore.of
    postgres_module = sys.modules.get("threadlock.backends.postgres.lock")
    if postgres_module is not None and isinstance(lock, postgres_module.PostgresThreadLock):
        from threadlock.inbox.postgres import PostgresInboxStore

        return PostgresInboxStore.of
    return None


def store_for(lock: object) -> InboxStore:
    """The inbox store of ``lock``; :class:`TypeError` naming ``lock`` if it has none."""
    provider = getattr(type(lock), "inbox_store", None)
    factory: _Factory | None = None
    if callable(provider):
        store = provider(lock)
    else:
        for klass in type(lock).__mro__:
            factory = _REGISTRY.get(klass)
            if factory is not None:
                break
        else:
            factory = _builtin(lock)
        if factory is None:
            raise TypeError(
                f"lock must be a backend with an inbox store (memory, Redis, or one with "
                f"inbox_store() or register_store()), not {type(lock).__name__}"
            )
        store = factory(lock)
    if not isinstance(store, InboxStore):
        raise TypeError(
            f"the inbox store of lock ({type(store).__name__}) does not implement InboxStore"
        )
    return store
