""":class:`SyncThreadLock`: the blocking face of any backend, run on the process's loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from threadlock._lease import Lease, LockInfo
from threadlock.protocol import ThreadLock
from threadlock.sync import _runtime
from threadlock.sync._bridge import Bridge

__all__ = ["SyncHold", "SyncThreadLock", "from_env", "from_url"]


class SyncHold:
    """The blocking context manager returned by :meth:`SyncThreadLock.hold`.

    ``with`` yields the :class:`~threadlock.Lease`; the lease is renewed on the process's
    loop while the block runs, whatever the calling thread does. A lease lost meanwhile is
    raised as :class:`~threadlock.LeaseLost` at the end of the block.
    """

    def __init__(self, hold: Any) -> None:
        self._hold = hold
        self._bridge: Bridge[Lease] = Bridge(hold)

    @property
    def lease(self) -> Lease:
        """The newest lease (renewals replace it); only valid inside the block."""
        lease: Lease = self._hold.lease
        return lease

    def __enter__(self) -> Lease:
        return self._bridge.enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bridge.exit(exc_type, exc, tb)


class SyncThreadLock:
    """A blocking :class:`threadlock.ThreadLock`: the same methods, without ``await``.

    It wraps an async backend and runs each call on the process's event loop (see
    :mod:`threadlock.sync`), so renewal, FIFO hand-off, fencing and the backend's scripts
    are the async code's. One instance is meant to be shared by every thread of a process;
    exclusion holds between threads as between processes.

    Args:
        factory: builds the async backend, without connecting. It is called once here
            (so bad arguments fail at once, with the backend's own messages) and once more
            in the child of each fork, so a child never shares its parent's connections.
    """

    def __init__(self, factory: Callable[[], ThreadLock]) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        backend = factory()
        if not isinstance(backend, ThreadLock):
            raise TypeError(
                f"factory must return a threadlock.ThreadLock, not {type(backend).__name__}"
            )
        self._factory = factory
        self._backend = backend
        self._generation = _runtime.generation()

    @property
    def backend(self) -> ThreadLock:
        """The async backend of this process (a new one in the child of a fork)."""
        if self._generation != _runtime.generation():
            with _runtime.mutex():
                if self._generation != _runtime.generation():
                    _runtime.keep(self._backend)  # the parent's: never used nor closed here
                    self._backend = self._factory()
                    self._generation = _runtime.generation()
        return self._backend

    @property
    def owner(self) -> str:
        """The owner prefix stored with each lease (``host:pid`` by default)."""
        return str(getattr(self.backend, "owner", ""))

    def acquire(self, key: str, *, ttl: float = 30.0, timeout: float | None = 300.0) -> Lease:
        """Block until ``key`` is free (FIFO); see :meth:`threadlock.ThreadLock.acquire`.

        The lease is not renewed: use :meth:`hold` for that, or :meth:`extend` it yourself.
        """
        backend = self.backend
        return _runtime.run(functools.partial(backend.acquire, key, ttl=ttl, timeout=timeout))

    def release(self, lease: Lease) -> bool:
        """See :meth:`threadlock.ThreadLock.release`."""
        return _runtime.run(self.backend.release, lease)

    def extend(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        """See :meth:`threadlock.ThreadLock.extend`."""
        return _runtime.run(functools.partial(self.backend.extend, lease, ttl=ttl))

    def inspect(self, key: str) -> LockInfo | None:
        """See :meth:`threadlock.ThreadLock.inspect`."""
        return _runtime.run(self.backend.inspect, key)

    def held(self) -> list[LockInfo]:
        """See :meth:`threadlock.ThreadLock.held`."""
        return _runtime.run(self.backend.held)

    def hold(
        self,
        key: str,
        *,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
        renew_every: float | None = None,
        max_hold: float | None = None,
    ) -> SyncHold:
        """Acquire, renew on the loop while the block runs, always release.

        The async :meth:`threadlock.ThreadLock.hold`, driven from a ``with`` block; its
        arguments are checked here, before anything is acquired. A lost lease, or
        ``max_hold`` running out, ends the block's wait on the loop at once but cannot stop
        the calling thread's own code: the block raises :class:`~threadlock.LeaseLost` (or
        :class:`TimeoutError`) when it ends.
        """
        hold = self.backend.hold(
            key, ttl=ttl, timeout=timeout, renew_every=renew_every, max_hold=max_hold
        )
        return SyncHold(hold)

    def close(self) -> None:
        """Close this process's backend (idempotent). Leases still held expire by TTL."""
        _runtime.run(self.backend.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncThreadLock({type(self._backend).__name__})"


def from_url(url: str, **options: Any) -> SyncThreadLock:
    """The blocking face of :func:`threadlock.from_url` (same schemes, options and errors).

    Nothing connects and no thread starts here, so it is safe at import time in a process
    that forks later.
    """
    from threadlock.backends import from_url as async_from_url

    return SyncThreadLock(functools.partial(async_from_url, url, **options))


def from_env(**options: Any) -> SyncThreadLock:
    """The blocking face of :func:`threadlock.from_env` (the environment is read once)."""
    from threadlock.backends import url_from_env

    url = url_from_env()
    if url is None:
        from threadlock.backends import from_env as async_from_env

        return SyncThreadLock(functools.partial(async_from_env, **options))
    return from_url(url, **options)
