"""The error tree of threadlock.

Every error the library raises on purpose derives from :class:`ThreadLockError`, so one
``except ThreadLockError`` catches them all. Bad arguments are not part of this tree: they
raise the built-in :class:`ValueError` or :class:`TypeError`, with a message that names the
argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from threadlock._lease import LockInfo

__all__ = ["BackendError", "LeaseLost", "ThreadBusy", "ThreadLockError"]


class ThreadLockError(Exception):
    """Root of every error threadlock raises on purpose."""


class ThreadBusy(ThreadLockError, TimeoutError):
    """The key stayed held until ``timeout`` ran out (at once when ``timeout=0``).

    It is also a :class:`TimeoutError`, so code that already handles timeouts keeps working.

    Attributes:
        key: the key that was busy.
        retry_after: best estimate, in seconds (> 0), of when trying again may succeed: the
            holder's remaining TTL, or a short default when it is unknown. Queue workers can
            hand it straight to their broker as the retry delay.
        holder: what the backend knew of the holder, or ``None``.
    """

    def __init__(self, key: str, retry_after: float, holder: LockInfo | None = None) -> None:
        self.key = key
        self.retry_after = retry_after
        self.holder = holder
        who = f" by {holder.owner!r}" if holder is not None and holder.owner else ""
        super().__init__(f"{key!r} is held{who}; retry after {retry_after:.3f}s")

    def __reduce__(self) -> tuple[type[ThreadBusy], tuple[str, float, LockInfo | None]]:
        return (type(self), (self.key, self.retry_after, self.holder))


class LeaseLost(ThreadLockError):
    """The lease expired or was taken by another holder while it was still in use.

    Whatever the holder did after this point may overlap with the next holder. Downstream
    systems that check :attr:`fence` refuse its late writes.

    Attributes:
        key: the key of the lost lease.
        fence: the fencing token of the lost lease.
    """

    def __init__(self, key: str, fence: int, detail: str = "") -> None:
        self.key = key
        self.fence = fence
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"lease on {key!r} (fence {fence}) was lost{extra}")

    def __reduce__(self) -> tuple[type[LeaseLost], tuple[str, int, str]]:
        return (type(self), (self.key, self.fence, self.detail))


class BackendError(ThreadLockError):
    """The backend could not be reached, or is misconfigured.

    The driver's own exception is chained as ``__cause__``.
    """
