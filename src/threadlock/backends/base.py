"""The base class for backends: argument checks, ``hold()`` and lifecycle, written once.

A backend derives from :class:`BaseThreadLock` and writes five primitives
(``_acquire``, ``_release``, ``_extend``, ``_inspect``, ``_held``) plus ``_aclose``. Every
public method checks its arguments here first, so a rejected call never reaches a backend and
never changes its state. The public methods also report to the lock's
:class:`~threadlock.observe.Observer` (acquired, busy, waiting, released, renewed, lost), so
every backend gets the log events and metrics without code of its own.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import logging
import os
import socket
import sys
import time
import types
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio

from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_key, check_positive, check_timeout, check_ttl
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.hold import DEFAULT_RELEASE_TIMEOUT, Hold
from threadlock.observe import Observer
from threadlock.observe import lookup as _lookup

__all__ = [
    "DEFAULT_CHAIN_TTL",
    "DEFAULT_GRACE",
    "DEFAULT_REGISTRY_TTL",
    "MIN_REGISTRY_TTL",
    "BaseThreadLock",
    "check_registry_ttls",
    "current_task_name",
    "default_owner",
]

_log = logging.getLogger("threadlock")

#: Seconds after which a waiter whose process died is skipped.
DEFAULT_GRACE = 5.0

#: The longest an OpenAI run lives (it expires 10 minutes after creation): a run registry
#: must keep entries at least that long.
MIN_REGISTRY_TTL = 600.0
#: How long a run registry and a chain head are kept (every backend bounds its state so).
DEFAULT_REGISTRY_TTL = 24 * 3600.0
DEFAULT_CHAIN_TTL = 30 * 24 * 3600.0


def check_registry_ttls(registry_ttl: object, chain_ttl: object) -> tuple[float, float]:
    """``(registry_ttl, chain_ttl)`` checked: positive numbers, the first at least 600 s."""
    registry_s = check_positive(registry_ttl, "registry_ttl")
    if registry_s < MIN_REGISTRY_TTL:
        raise ValueError(
            f"registry_ttl must be at least {MIN_REGISTRY_TTL:g} s (an OpenAI run lives "
            f"up to 10 minutes), got {registry_ttl!r}"
        )
    return registry_s, check_positive(chain_ttl, "chain_ttl")


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
        return anyio.get_current_task().name or "?"
    except RuntimeError:  # pragma: no cover - outside any event loop
        return "?"


def _check_lease(lease: object) -> Lease:
    if not isinstance(lease, Lease):
        raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
    if not isinstance(lease.key, str):
        raise TypeError(f"lease.key must be a str, not {type(lease.key).__name__}")
    if not isinstance(lease.token, str):
        raise TypeError(f"lease.token must be a str, not {type(lease.token).__name__}")
    return lease


# -- timing a wait without costing the fast path ---------------------------------------------
#
# ``lock.waiting`` must be reported while an acquire is still queued, for every backend, and
# the backends' wait loops are their own. So the front drives the backend's ``_acquire``
# coroutine itself (as ``await`` would): an acquire that completes without suspending (a
# free key on the memory backend) costs no timer at all; at its first suspension a timer is
# armed on the running event loop (``call_later`` on asyncio, a system task on trio) and
# calls the observer every ``waiting_interval`` seconds until the acquire ends. No task is
# spawned per acquire, and the backends need no hook.


class _WaitReport:
    """Calls ``observer.waiting`` every ``every`` seconds from the event loop."""

    __slots__ = ("_cancel", "_every", "_handle", "_key", "_kind", "_observer", "_started")

    def __init__(
        self, observer: Observer, kind: str, key: str, started: float, every: float
    ) -> None:
        self._observer = observer
        self._kind = kind
        self._key = key
        self._started = started
        self._every = every
        self._handle: asyncio.TimerHandle | None = None
        self._cancel: Callable[[], None] | None = None

    def tick(self) -> None:
        try:
            self._observer.waiting(self._kind, self._key, time.monotonic() - self._started)
        except Exception:  # a shielded observer never raises; a trusted one should not
            _log.debug("waiting report failed", exc_info=True)

    def _asyncio_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tick()
        self._handle = loop.call_later(self._every, self._asyncio_tick, loop)

    def arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            delay = max(0.0, self._started + self._every - time.monotonic())
            self._handle = loop.call_later(delay, self._asyncio_tick, loop)
            return
        trio = sys.modules.get("trio")  # running trio means it is imported
        if trio is None:  # pragma: no cover - an event loop we do not know: no reports
            return
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # pragma: no cover - not in trio either
            return
        scope = trio.CancelScope()

        first = max(0.0, self._started + self._every - time.monotonic())

        async def report() -> None:
            with scope:
                await trio.sleep(first)
                while True:
                    self.tick()
                    await trio.sleep(self._every)

        # As asyncio's call_later does, run in a copy of the waiting task's context (so an
        # observer sees the same current span).
        trio.lowlevel.spawn_system_task(
            report, name="threadlock waiting report", context=contextvars.copy_context()
        )
        self._cancel = scope.cancel

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._cancel is not None:
            self._cancel()
            self._cancel = None


@types.coroutine
def _reporting_waits(
    coro: Coroutine[Any, Any, Lease],
    observer: Observer,
    kind: str,
    key: str,
    started: float,
    every: float,
) -> Generator[Any, Any, Lease]:
    """Run ``coro`` as ``await coro`` would; at its first suspension, arm a
    :class:`_WaitReport` (built only then: an acquire that does not wait allocates none)."""
    try:
        yielded = coro.send(None)
    except StopIteration as done:  # completed without waiting: no timer
        return done.value  # type: ignore[no-any-return]
    report = _WaitReport(observer, kind, key, started, every)
    report.arm()
    try:
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go to the backend
                yielded = coro.throw(exc)
            else:
                yielded = coro.send(sent)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        report.disarm()


class BaseThreadLock(abc.ABC):
    """Shared front of every backend; satisfies :class:`threadlock.ThreadLock`.

    Args:
        owner: the readable holder description stored with each lease; the current task's
            name is appended (``host:pid:task`` by default).
        grace: seconds after which a waiter whose process died is skipped.
        release_timeout: the bound on the shielded release at the end of ``hold()``.
        observer: where this lock reports what it does (see :mod:`threadlock.observe`);
            ``None`` uses the process-wide default. Also settable later as
            :attr:`observer`, for backends whose constructor does not take it.
    """

    #: The backend label in log events and metrics: by default the class name without its
    #: ``ThreadLock`` suffix, lowercased (``"memory"``, ``"redis"``, ``"postgres"``); a
    #: subclass of a backend keeps its parent's. A backend may set it explicitly.
    backend_kind: ClassVar[str] = ""

    # The shielded observer of this lock, or None for the process-wide default. A class
    # attribute too, so a subclass that does not call __init__ still reports.
    _tl_observer: Observer | None = None
    _tl_observer_set: Observer | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("backend_kind"):
            inherited = next(
                (
                    c.__dict__["backend_kind"]
                    for c in cls.__mro__[1:]
                    if c.__dict__.get("backend_kind")
                ),
                "",
            )
            cls.backend_kind = inherited or _lookup.kind_from_name(cls.__name__)

    def __init__(
        self,
        *,
        owner: str | None = None,
        grace: float = DEFAULT_GRACE,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
        observer: Observer | None = None,
    ) -> None:
        if owner is not None:
            if not isinstance(owner, str):
                raise TypeError(f"owner must be a str or None, not {type(owner).__name__}")
            check_key(owner, "owner")  # non-empty, no NUL, UTF-8, at most 1024 bytes
        self._owner = owner or default_owner()
        self._grace = check_positive(grace, "grace")
        self._release_timeout = check_positive(release_timeout, "release_timeout")
        self._closed = False
        if observer is not None:
            self.observer = observer

    @property
    def observer(self) -> Observer:
        """The observer this lock reports to (the process-wide default unless one was set).

        Set it to an :class:`~threadlock.observe.Observer` (for several, one made by
        :func:`~threadlock.observe.combine`), or to ``None`` to go back to the default. It
        takes effect at the next operation, ``hold()`` blocks already entered included.
        """
        if self._tl_observer_set is None:
            return _lookup.get_default_observer()
        return self._tl_observer_set

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        if observer is None:
            self._tl_observer = self._tl_observer_set = None
            return
        self._tl_observer = _lookup._shielded(observer, "observer")
        self._tl_observer_set = observer

    @property
    def owner(self) -> str:
        """The owner prefix stored with each lease this instance takes."""
        return self._owner

    @property
    def grace(self) -> float:
        """Seconds after which a dead waiter is skipped."""
        return self._grace

    @property
    def release_timeout(self) -> float:
        """The bound on the shielded release at the end of ``hold()``."""
        return self._release_timeout

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
        observer = self._tl_observer
        if observer is None:
            observer = _lookup._default_effective
        started = time.monotonic()
        try:
            every = None if timeout_s == 0 else observer.waiting_interval
            if every is None:
                lease = await self._acquire(key, ttl_s, timeout_s)
            else:
                lease = await _reporting_waits(
                    self._acquire(key, ttl_s, timeout_s),
                    observer,
                    self.backend_kind,
                    key,
                    started,
                    every,
                )
        except ThreadBusy:
            observer.busy(self.backend_kind, key, time.monotonic() - started, "lock")
            raise
        observer.acquired(self.backend_kind, key, lease.fence, time.monotonic() - started)
        return lease

    async def release(self, lease: Lease) -> bool:
        """See :meth:`threadlock.ThreadLock.release`."""
        lease = _check_lease(lease)
        self._check_open()
        released = await self._release(lease)
        observer = self._tl_observer
        if observer is None:
            observer = _lookup._default_effective
        held_for = time.time() - lease.acquired_at
        observer.released(
            self.backend_kind, lease.key, lease.fence, held_for if held_for > 0 else 0.0, released
        )
        return released

    async def extend(self, lease: Lease, *, ttl: float | None = None) -> Lease:
        """See :meth:`threadlock.ThreadLock.extend`."""
        lease = _check_lease(lease)
        ttl_s = lease.ttl if ttl is None else check_ttl(ttl)
        self._check_open()
        observer = self._tl_observer
        if observer is None:
            observer = _lookup._default_effective
        try:
            new = await self._extend(lease, ttl_s)
        except LeaseLost as error:
            observer.lost(
                self.backend_kind, lease.key, lease.fence, error.detail or "expired or taken"
            )
            raise
        observer.renewed(self.backend_kind, lease.key, lease.fence)
        return new

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
