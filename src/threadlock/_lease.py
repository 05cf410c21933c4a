"""Value types shared by every backend: :class:`Lease` and :class:`LockInfo`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lease", "LockInfo"]


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of holding a key, returned by ``acquire`` and ``extend``.

    Ownership lives in this object alone (no thread- or task-local state): any task that has
    the lease can extend or release it.

    Attributes:
        key: the key held.
        token: a secret random token; only a caller that has it can release or extend.
        fence: the fencing token, strictly greater than that of every earlier holder of this
            key. Pass it downstream so late writes from a stalled holder can be refused.
        ttl: seconds the lease lives without renewal.
        acquired_at: wall-clock epoch seconds, as seen by the backend, of the grant.
        expires_at: wall-clock epoch seconds, as seen by the backend, of the expiry.
    """

    key: str
    token: str
    fence: int
    ttl: float
    acquired_at: float
    expires_at: float

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (
            f"Lease(key={self.key!r}, fence={self.fence}, ttl={self.ttl}, "
            f"acquired_at={self.acquired_at:.3f}, expires_at={self.expires_at:.3f})"
        )


@dataclass(frozen=True, slots=True)
class LockInfo:
    """A snapshot of a held key, from ``inspect`` and ``held``.

    Attributes:
        key: the key.
        fence: the holder's fencing token.
        owner: a readable description of the holder (``host:pid:task`` by default).
        acquired_at: wall-clock epoch seconds of the grant, as seen by the backend.
        expires_at: wall-clock epoch seconds of the expiry, as seen by the backend.
        waiters: how many callers are queued for the key.
        run_id: the run or response tracked in the run registry for this key, or ``None``.
    """

    key: str
    fence: int
    owner: str
    acquired_at: float
    expires_at: float
    waiters: int
    run_id: str | None = None
