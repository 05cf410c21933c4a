"""The waiting machinery every networked backend shares: tokens, waiters and a wake hub.

* :class:`TokenFactory`: lease tokens (128 random bits each) and waiter ids (the instance's
  random prefix and 64 random bits), from ``os.urandom``. Nothing about one token can be
  derived from another, or from a waiter id that a backend publishes. In a process forked
  after the factory was built, the first use draws a new instance prefix and new randomness,
  so parent and child never share a token, a waiter id or a prefix.
* :class:`Waiter`: one local task waiting on a key, woken to re-check or, with its grant, to
  take the lease a release of this process handed it.
* :class:`WakeHub`: the local waiters of one backend instance, by key (or channel) and waiter
  id. :meth:`WakeHub.deliver` hands a grant only to the waiter registered under that key AND
  that id; a wake-up by id alone (:meth:`WakeHub.wake_id`) only makes a waiter re-check.
* :func:`on_fork`: backends register here to drop, in a forked child, what belongs to the
  parent (its listener or pub/sub connection, its waiters). What they drop goes to
  :func:`inherit`: kept for the child's life, never closed nor finalised there. Its sockets
  are the parent's, and an asyncio transport finalised in the child would take its socket
  out of the epoll set that both processes share, so the parent would wait for replies it
  is no longer told about.

Each backend supplies only its attempt, its abandon and its notifier (pub/sub on Redis,
LISTEN/NOTIFY on Postgres). The waiters run on asyncio (redis-py's and psycopg's async
clients do), so a sleep is a plain future and one timer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import weakref
from typing import Protocol

__all__ = ["Grant", "TokenFactory", "Waiter", "WakeHub", "forks", "inherit", "on_fork"]

#: What a hand-off gives a waiter: fence, acquired at, expires at (the unit is the backend's).
Grant = tuple[int, float, float]

#: Random bytes fetched per ``os.urandom`` call: one system call per 256 tokens.
_BUFFER = 4096

#: How many forks this process descends from (one mutable cell, read on every token).
_forked = [0]


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_FORK_AWARE: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _forked[0] += 1
    for instance in list(_FORK_AWARE):
        instance._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forks() -> int:
    """How many forks this process descends from since this module was imported."""
    return _forked[0]


#: What a forked child inherited from its parent and dropped (see :func:`inherit`).
_INHERITED: list[object] = []


def inherit(*objects: object) -> None:
    """In a forked child: keep ``objects`` (the parent's connections, pools, tasks, loop)
    alive for the life of the process, so that nothing of them is ever closed or finalised
    here. A dropped asyncio stream's finaliser closes its transport, which unregisters the
    socket from the parent's epoll instance, shared by the fork."""
    _INHERITED.extend(obj for obj in objects if obj is not None)


def on_fork(instance: _ForkAware) -> None:
    """Call ``instance._after_fork()`` in every child forked from now on (held weakly)."""
    _FORK_AWARE.add(instance)


class TokenFactory:
    """Unguessable, fork-safe lease tokens and waiter ids for one backend instance."""

    __slots__ = ("_at", "_buffer", "_forks", "_instance")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._forks = _forked[0]
        self._buffer = b""
        self._at = 0
        self._instance = secrets.token_hex(6)

    def _random(self, size: int) -> bytes:
        if self._forks != _forked[0]:
            self._reset()
        at = self._at
        if at + size > len(self._buffer):
            self._buffer = os.urandom(_BUFFER)
            at = 0
        self._at = at + size
        return self._buffer[at : at + size]

    @property
    def instance(self) -> str:
        """This instance's random prefix (12 hex digits), new in a forked child."""
        if self._forks != _forked[0]:
            self._reset()
        return self._instance

    def token(self) -> str:
        """A lease token: 128 random bits as 32 hex digits."""
        return self._random(16).hex()

    def waiter_id(self) -> str:
        """A waiter id: the instance's prefix and 64 random bits (independent of any token)."""
        return self.instance + self._random(8).hex()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Waiter:
    """A local task waiting on a key, woken to re-check or, with the grant, to claim it."""

    __slots__ = ("_future", "grant", "id", "key", "woken")

    def __init__(self, key: str, waiter_id: str) -> None:
        self.key = key
        self.id = waiter_id
        self.woken = False
        #: What a hand-off of this process (or a notification, as a hint) said.
        self.grant: Grant | None = None
        self._future: asyncio.Future[None] | None = None

    def wake(self, grant: Grant | None = None) -> None:
        if grant is not None:
            self.grant = grant
        self.woken = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        """A wake-up from now on means "re-check" (a grant already delivered is kept)."""
        self.woken = False

    async def sleep(self, delay: float) -> None:
        """Until woken or ``delay`` seconds passed (a plain future and one timer)."""
        if self.woken or delay <= 0:
            return
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        handle = loop.call_later(delay, _resolve, future)
        try:
            await future
        finally:
            handle.cancel()
            self._future = None


class WakeHub:
    """The local waiters of one backend instance, by key (or channel) and waiter id."""

    def __init__(self) -> None:
        self._waiting: dict[str, dict[str, Waiter]] = {}
        self._keys: dict[str, str] = {}  # waiter id -> key, for wake-ups that carry only an id

    def add_waiter(self, key: str, waiter_id: str) -> Waiter:
        """Register a waiter; a release of this instance can hand it the key from now on."""
        waiter = Waiter(key, waiter_id)
        waiters = self._waiting.get(key)
        if waiters is None:
            waiters = self._waiting[key] = {}
        waiters[waiter_id] = waiter
        self._keys[waiter_id] = key
        return waiter

    def remove_waiter(self, key: str, waiter: Waiter) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and waiters.get(waiter.id) is waiter:
            del waiters[waiter.id]
            if self._keys.get(waiter.id) == key:
                del self._keys[waiter.id]
            if not waiters:
                del self._waiting[key]

    def waiter(self, key: str, waiter_id: str) -> Waiter | None:
        """The waiter registered under ``key`` AND ``waiter_id``, if any."""
        waiters = self._waiting.get(key)
        return None if waiters is None else waiters.get(waiter_id)

    def has_waiters(self, key: str | None = None) -> bool:
        return bool(self._waiting) if key is None else bool(self._waiting.get(key))

    def deliver(self, key: str, waiter_id: str, grant: Grant) -> bool:
        """Hand ``grant`` to the waiter of ``key`` with ``waiter_id``; False if none is."""
        waiter = self.waiter(key, waiter_id)
        if waiter is None:
            return False
        waiter.wake(grant)
        return True

    def wake_id(self, waiter_id: str) -> None:
        """Make the waiter with ``waiter_id`` re-check (a notification that names no key)."""
        key = self._keys.get(waiter_id)
        if key is not None:
            waiter = self.waiter(key, waiter_id)
            if waiter is not None:
                waiter.wake()

    def wake_all(self, key: str | None = None) -> None:
        """Make every local waiter of ``key`` (of every key, if None) re-check."""
        if key is None:
            for waiters in list(self._waiting.values()):
                for waiter in list(waiters.values()):
                    waiter.wake()
        else:
            for waiter in list(self._waiting.get(key, {}).values()):
                waiter.wake()

    def forget_all(self) -> None:
        """Drop every waiter without waking it (a forked child: they are the parent's)."""
        self._waiting.clear()
        self._keys.clear()
