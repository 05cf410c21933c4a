"""The :class:`ThreadLock` protocol: what every backend offers, and what ``hold()`` builds on.

A user's own backend satisfies the protocol structurally; deriving from
:class:`threadlock.backends.base.BaseThreadLock` gives argument checks, ``hold()`` and the
async context manager for free, so a backend only writes its primitives.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from threadlock._lease import Lease, LockInfo

__all__ = ["ThreadLock"]


@runtime_checkable
class ThreadLock(Protocol):
    """A FIFO lease lock keyed by conversation or thread id.

    Guarantees every implementation gives (checked by
    :class:`threadlock.testing.BackendConformance`):

    * at most one live lease per key;
    * waiters are served first come, first served, and a released key is handed to the next
      waiter directly, which is woken by a notification rather than by polling;
    * fences strictly increase per key;
    * ``release`` and ``extend`` act only on the caller's own lease (token check);
    * expiry is decided by the backend's clock, never by comparing client clocks.
    """

    async def acquire(self, key: str, *, ttl: float = 30.0, timeout: float | None = 300.0) -> Lease:
        """Wait (FIFO) until ``key`` is free, then return a lease living ``ttl`` seconds.

        ``timeout=0`` is fail-fast: one attempt, then :class:`~threadlock.ThreadBusy` at once.
        ``timeout=None`` waits forever. A caller cancelled at the moment of the grant gives
        the key on instead of keeping it until the TTL.
        """
        ...

    async def release(self, lease: Lease) -> bool:
        """Release ``lease``; ``True`` if it was still held, ``False`` if it was not.

        It never raises for a lost lease; it raises :class:`~threadlock.BackendError` only when
        the backend cannot be reached.
        """
        ...

    async def extend(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        """Keep the fence and set the expiry to now + ``ttl`` (the lease's own when ``None``).

        Raises :class:`~threadlock.LeaseLost` when the lease has expired or was taken, even if
        nobody took the key since.
        """
        ...

    async def inspect(self, key: str) -> LockInfo | None:
        """Describe the holder of ``key``, or ``None`` when it is free."""
        ...

    async def held(self) -> list[LockInfo]:
        """Every key held in the backend, by any client."""
        ...

    def hold(
        self,
        key: str,
        *,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
        renew_every: float | None = None,
        max_hold: float | None = None,
    ) -> AbstractAsyncContextManager[Lease]:
        """Acquire, renew in the background, and always release; see :mod:`threadlock.hold`."""
        ...

    async def aclose(self) -> None:
        """Close the backend's connections. Leases still held expire by their TTL."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
