"""The base class for backends: argument checks, ``hold()`` and lifecycle, written once.

A backend derives from :class:`BaseThreadLock` and writes five primitives
(``_acquire``, ``_release``, ``_extend``, ``_inspect``, ``_held``) plus ``_aclose``. Every
public method checks its arguments here first, so a rejected call never reaches a backend and
never changes its state.
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
from types import TracebackType
from typing import Self

import anyio

from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_key, check_positive, check_timeout, check_ttl
from threadlock.errors import BackendError
from threadlock.hold import DEFAULT_RELEASE_TIMEOUT, Hold

__all__ = ["DEFAULT_GRACE", "BaseThreadLock", "current_task_name", "default_owner"]

#: Seconds after which a waiter whose process died is skipped (SPEC §3.1).
DEFAULT_GRACE = 5.0


def default_owner() -> str:
    """``host:pid``, the default owner prefix of a backend."""
    return f"{socket.gethostname()}:{os.getpid()}"


def current_task_name() -> str:
    """The name of the running task: asyncio's directly (cheap), else anyio's (trio)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running: trio, or outside any loop
        task = None
    if task is not None:
        return task.get_name()
    try:
        return anyio.get_current_task().name
    except RuntimeError:  # pragma: no cover - outside any event loop
        return "?"


def _check_lease(lease: object) -> Lease:
    if not isinstance(lease, Lease):
        raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
    return lease


class BaseThreadLock(abc.ABC):
    """Shared front of every backend; satisfies :class:`threadlock.ThreadLock`.

    Args:
        owner: the readable holder description stored with each lease; the current task's
            name is appended (``host:pid:task`` by default).
        grace: seconds after which a waiter whose process died is skipped.
        release_timeout: the bound on the shielded release at the end of ``hold()``.
    """

    def __init__(
        self,
        *,
        owner: str | None = None,
        grace: float = DEFAULT_GRACE,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
    ) -> None:
        if owner is not None and not isinstance(owner, str):
            raise TypeError(f"owner must be a str or None, not {type(owner).__name__}")
        self._owner = owner or default_owner()
        self._grace = check_positive(grace, "grace")
        self._release_timeout = check_positive(release_timeout, "release_timeout")
        self._closed = False

    @property
    def owner(self) -> str:
        """The owner prefix stored with each lease this instance takes."""
        return self._owner

    @property
    def grace(self) -> float:
        """Seconds after which a dead waiter is skipped."""
        return self._grace

    def _task_owner(self) -> str:
        return f"{self._owner}:{current_task_name()}"

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{type(self).__name__} is closed")

    # -- the public surface ----------------------------------------------------------------

    async def acquire(self, key: str, *, ttl: float = 30.0, timeout: float | None = 300.0) -> Lease:
        """See :meth:`threadlock.ThreadLock.acquire`."""
        key = check_key(key)
        ttl_s = check_ttl(ttl)
        timeout_s = check_timeout(timeout)
        self._check_open()
        return await self._acquire(key, ttl_s, timeout_s)

    async def release(self, lease: Lease) -> bool:
        """See :meth:`threadlock.ThreadLock.release`."""
        lease = _check_lease(lease)
        self._check_open()
        return await self._release(lease)

    async def extend(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        """See :meth:`threadlock.ThreadLock.extend`."""
        lease = _check_lease(lease)
        ttl_s = lease.ttl if ttl is None else check_ttl(ttl)
        self._check_open()
        return await self._extend(lease, ttl_s)

    async def inspect(self, key: str) -> LockInfo | None:
        """See :meth:`threadlock.ThreadLock.inspect`."""
        key = check_key(key)
        self._check_open()
        return await self._inspect(key)

    async def held(self) -> list[LockInfo]:
        """See :meth:`threadlock.ThreadLock.held`."""
        self._check_open()
        return await self._held()

    def hold(
        self,
        key: str,
        *,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
        renew_every: float | None = None,
        max_hold: float | None = None,
    ) -> Hold:
        """Acquire ``key``, renew it in the background, always release; see :class:`Hold`.

        Arguments are checked here, before anything is acquired.
        """
        return Hold(
            self,
            key,
            ttl=ttl,
            timeout=timeout,
            renew_every=renew_every,
            max_hold=max_hold,
            release_timeout=self._release_timeout,
        )

    async def aclose(self) -> None:
        """Close the backend; idempotent. Leases still held expire by their TTL."""
        if self._closed:
            return
        self._closed = True
        await self._aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what a backend writes ---------------------------------------------------------------

    @abc.abstractmethod
    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        """Acquire with checked arguments; give the key on if cancelled at the grant."""

    @abc.abstractmethod
    async def _release(self, lease: Lease) -> bool: ...

    @abc.abstractmethod
    async def _extend(self, lease: Lease, ttl: float) -> Lease: ...

    @abc.abstractmethod
    async def _inspect(self, key: str) -> LockInfo | None: ...

    @abc.abstractmethod
    async def _held(self) -> list[LockInfo]: ...

    async def _aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources; called once by :meth:`aclose`."""
