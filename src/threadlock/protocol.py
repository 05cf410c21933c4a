"""The :class:`ThreadLock` protocol: what every backend offers, and what ``hold()`` builds on.

A user's own backend satisfies the protocol structurally; deriving from
:class:`threadlock.backends.base.BaseThreadLock` gives argument checks, ``hold()`` and the
async context manager for free, so a backend only writes its primitives.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

from threadlock._lease import Lease, LockInfo

__all__ = ["ChainStore", "RunKind", "RunRecord", "RunRegistry", "ThreadLock"]

RunKind = Literal["run", "response"]


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


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One entry of the run registry: a run or background response a guarded turn started.

    Attributes:
        key: the lease key of the turn (the conversation or thread id, or the chain key).
        kind: ``"run"`` (an Assistants run) or ``"response"`` (a background response).
        run_id: the run or response id.
        thread_id: the thread or conversation the run lives on (for a response on a
            ``previous_response_id`` chain with no conversation, the chain key).
        created_at: epoch seconds when the guard recorded it.
        fence: the fencing token of the turn that started it (the lease's secret token is
            never stored).
        owner: the owner description of that turn.
    """

    key: str
    kind: RunKind
    run_id: str
    thread_id: str
    created_at: float
    fence: int
    owner: str


@runtime_checkable
class RunRegistry(Protocol):
    """Where the guards record the runs and background responses they start.

    A backend that offers it must keep entries until they are removed, across crashes of the
    process that wrote them (the memory backend keeps them for the life of the process), and
    must show the newest entry of a held key as :attr:`LockInfo.run_id`. The guards write an
    entry before the create call returns to the caller and remove it once the run is
    terminal; :func:`threadlock.openai.recover_orphaned_runs` walks what is left. Entries hold
    ids only, never message content.
    """

    async def track_run(self, record: RunRecord) -> None:
        """Record ``record`` (idempotent for the same ``key`` and ``run_id``)."""
        ...

    async def untrack_run(self, key: str, run_id: str) -> None:
        """Forget ``run_id`` under ``key``; a missing entry is not an error."""
        ...

    async def tracked_runs(self, key: str | None = None) -> list[RunRecord]:
        """The entries of ``key``, or of every key when ``None``, oldest first."""
        ...


@runtime_checkable
class ChainStore(Protocol):
    """The last response id of each ``previous_response_id`` chain, moved under the lock."""

    async def chain_head(self, key: str) -> str | None:
        """The last response id recorded for chain ``key``, or ``None``."""
        ...

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        """Set the head of chain ``lease.key`` to ``new`` if it is still ``expected``.

        It succeeds only while ``lease`` is held (token check) and the head is unchanged
        (compare-and-set), so two turns can never branch from the same response.
        """
        ...
