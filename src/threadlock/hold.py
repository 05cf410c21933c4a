"""``hold()``: acquire, renew in the background, always release. Written once for every backend.

A backend supplies only ``acquire``, ``extend`` and ``release``; :class:`Hold` turns them into
the context manager that every ``lock.hold()`` returns:

1. it acquires, waiting FIFO as ``acquire`` does. A grant that took longer than a tenth of
   the TTL (a queued or handed-off acquire, a slow answer) is confirmed with a renewal,
   bounded by the TTL, before the body runs; a confirmation that is refused, or that
   answers after the lease's local expiry, is :class:`~threadlock.LeaseLost` from
   ``__aenter__`` and the body never starts;
2. a background task in an anyio task group renews the lease every ``renew_every`` seconds
   (``ttl / 3`` by default). A renewal refused because the lease is gone cancels the body and
   the block raises :class:`~threadlock.LeaseLost`. A renewal that fails because the backend
   is briefly unreachable is retried until the lease would have expired (by the local
   monotonic clock, counted conservatively from when the last renewal was sent), and is then
   treated as lost;
3. it always releases, on success, on exception and on cancellation, in a shielded cancel
   scope bounded by ``release_timeout`` seconds, so a cancelled task never leaks the lock;
4. with ``max_hold`` the body is cancelled once it has held the lock that long, and the block
   raises :class:`TimeoutError`.

An exception raised by the body comes out as itself, never wrapped in an ``ExceptionGroup``,
even when the lease was lost meanwhile (a note on it says so); ``LeaseLost`` is raised when
the body ended because of the loss, or ended cleanly after it.

A renewer never outlives its holder. It holds the :class:`Hold` only weakly: a ``Hold`` that is
garbage-collected without a clean exit (an async generator dropped mid-stream, code that
called ``__aenter__`` and lost the object) stops renewing at once and releases its lease on a
best-effort basis. A block exited in another task than the one that entered it (an async
generator closed by the event loop's finaliser) releases and stops renewing too, then raises
:class:`RuntimeError` naming the cause: the cancel scopes it opened belong to the first task.

It reports to the lock's observer (:mod:`threadlock.observe`) what only it can see: the
``hold_scope`` around the block, a lease that expired before a renewal got through, failed
renewals and releases. The lock itself reports acquire, renew, loss on renew and release.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from threadlock._deadline import collecting
from threadlock._validate import check_key, check_positive, check_timeout, check_ttl
from threadlock.errors import LeaseLost
from threadlock.observe import backend_kind, observer_of

if TYPE_CHECKING:
    from threadlock._lease import Lease
    from threadlock.observe import Observer, Scope
    from threadlock.protocol import ThreadLock

__all__ = ["DEFAULT_RELEASE_TIMEOUT", "Hold"]

#: Seconds a release at the end of ``hold()`` may take before it is abandoned (the lease then
#: expires by its TTL).
DEFAULT_RELEASE_TIMEOUT = 5.0

# An acquire that returned within this share of the TTL counts its lease from when it was
# called (the grant came after that, so the estimate errs early). A slower one is renewed at
# once, before the body runs, and counted from that renewal.
_QUICK_GRANT = 0.1

_Wake = Callable[[Callable[[], object]], object]


def _task_id() -> int:
    """What ``anyio.get_current_task().id`` returns, without building a TaskInfo on asyncio."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running: trio
        task = None
    if task is not None:
        return id(task)  # anyio's TaskInfo.id on asyncio
    return anyio.get_current_task().id


def _waker() -> _Wake | None:
    """A thread-safe "run this soon on the current event loop", for use from a finaliser."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        pass
    trio: Any = sys.modules.get("trio")
    if trio is not None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return None
        wake: _Wake = token.run_sync_soon
        return wake
    return None


async def _release(lock: ThreadLock, lease: Lease, timeout: float, kind: str) -> None:
    """Release within ``timeout`` s, shielded; report a failure (to the lock's observer of
    the moment), never raise one."""
    failed: BaseException | None = None
    with anyio.move_on_after(timeout, shield=True) as scope:
        try:
            await lock.release(lease)
        except Exception as error:  # a failed release must not hide the body's outcome
            failed = error
    if failed is None and not scope.cancelled_caught:
        return
    observer = observer_of(lock)
    observer.release_failed(kind, lease.key, lease.fence, failed, timeout)
    # The lock reports only the releases that returned: report this one as not released, so
    # a gauge of held leases does not count it forever (it expires by its TTL).
    held_for = time.time() - lease.acquired_at
    observer.released(kind, lease.key, lease.fence, max(held_for, 0.0), False)


class Hold:
    """The async context manager returned by ``lock.hold(key, ...)``.

    ``async with`` yields the :class:`~threadlock.Lease`. Its ``fence`` and ``token`` stay the
    same for the whole block; renewals only move the expiry. :attr:`lease` always holds the
    newest renewal.
    """

    def __init__(
        self,
        lock: ThreadLock,
        key: str,
        *,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
        renew_every: float | None = None,
        max_hold: float | None = None,
        release_timeout: float = DEFAULT_RELEASE_TIMEOUT,
    ) -> None:
        self._key = check_key(key)
        self._ttl = check_ttl(ttl)
        self._timeout = check_timeout(timeout)
        if renew_every is None:
            self._renew_every = self._ttl / 3
        else:
            self._renew_every = check_positive(renew_every, "renew_every")
            if self._renew_every >= self._ttl:
                raise ValueError(
                    f"renew_every must be shorter than ttl ({self._ttl}), got {renew_every!r}"
                )
        self._max_hold = None if max_hold is None else check_positive(max_hold, "max_hold")
        self._release_timeout = check_positive(release_timeout, "release_timeout")
        self._lock = lock
        self._lease: Lease | None = None
        self._lost: LeaseLost | None = None
        self._deadline = 0.0  # local monotonic estimate of the lease's expiry
        self._max_hold_at = math.inf
        self._group: anyio.abc.TaskGroup | None = None
        self._body: anyio.CancelScope | None = None
        self._entered = False
        self._stop: anyio.Event | None = None
        self._extending = False
        # The backend's shielded round trips of a renewal in flight (see threadlock._deadline),
        # cut short when the block is left: the release settles the lease anyway.
        self._shields: set[anyio.CancelScope] = set()
        self._task_id = 0  # the task that entered the block
        self._wake: _Wake | None = None  # set while the block is open
        self._scope: Scope | None = None
        # A BaseThreadLock reports acquire/extend/release itself; any other lock does not,
        # so hold() reports a loss on extend for it.
        self._lock_reports = hasattr(type(lock), "_tl_observer")
        # The backend label is the lock's class's; the observer is looked up at each report,
        # so that a new one takes effect in a block already entered.
        self._kind = backend_kind(lock)

    @property
    def lease(self) -> Lease:
        """The newest lease (renewals replace it); only valid inside the block."""
        if self._lease is None:
            raise RuntimeError("the hold() block has not been entered")
        return self._lease

    async def __aenter__(self) -> Lease:
        if self._entered:
            raise RuntimeError("a hold() context manager can be entered only once")
        self._entered = True
        scope = self._observer.hold_scope(self._kind, self._key)
        if scope is not None:
            scope.__enter__()
            self._scope = scope
        started = anyio.current_time()
        try:
            lease = await self._lock.acquire(self._key, ttl=self._ttl, timeout=self._timeout)
        except BaseException as error:
            self._end_scope(type(error), error, error.__traceback__)
            raise
        self._lease = lease
        granted = anyio.current_time()
        if granted - started <= lease.ttl * _QUICK_GRANT:
            # The grant came after ``started``, so it expires after started + ttl.
            self._deadline = started + lease.ttl
        else:
            # A long wait (or a slow answer): when it was granted is not known here, so
            # renew at once and count from when the renewal was sent. A lease that expired
            # before its grant reached us fails here, before the body runs, and so does one
            # whose renewal answered only after the lease's local expiry.
            await self._confirm(lease)
            granted = anyio.current_time()
        try:
            group = anyio.create_task_group()
            await group.__aenter__()
        except BaseException as error:
            await self._release()
            self._end_scope(type(error), error, error.__traceback__)
            raise
        self._group = group
        body = anyio.CancelScope()
        if self._max_hold is not None:
            self._max_hold_at = granted + self._max_hold
        # The body never outlives the lease's local expiry estimate, even when a renewal is
        # stuck in a round trip that cannot be interrupted: the deadline cancels it.
        body.deadline = min(self._max_hold_at, self._deadline)
        body.__enter__()
        self._body = body
        self._stop = anyio.Event()
        self._task_id = _task_id()
        self._wake = _waker()
        # The renewer holds this object only weakly, so that dropping it stops the renewal.
        group.start_soon(
            _renew, weakref.ref(self), self._stop, body, self.lease, name="threadlock renew"
        )
        return lease

    def __del__(self) -> None:
        # Collected inside the block (never exited): the renewer finds its weak reference
        # dead and stops at its next step; wake it now so that it releases the lease.
        wake = getattr(self, "_wake", None)
        stop = getattr(self, "_stop", None)
        if wake is not None and stop is not None:
            # RuntimeError: the event loop is closed, so nothing renews any more.
            with contextlib.suppress(RuntimeError):
                wake(stop.set)

    async def _confirm(self, lease: Lease) -> None:
        sent = anyio.current_time()
        try:
            # Bounded as a renewal is: an answer after the lease's local expiry is of no use
            # (the backends' shielded round trips end at this deadline, threadlock._deadline).
            confirmed = lease
            with anyio.move_on_after(lease.ttl):
                confirmed = self._lease = await self._lock.extend(lease)
            if anyio.current_time() >= sent + confirmed.ttl:
                # The renewal's answer came after the lease's local expiry (a stalled
                # connection, a process paused while it was in flight): another holder may
                # have had the key meanwhile, so the body must not start, not even its first
                # lines before a checkpoint.
                lost = LeaseLost(self._key, lease.fence, "confirmed after it expired")
                self._observer.lost(self._kind, lost.key, lost.fence, lost.detail or "expired")
                raise lost
        except BaseException as error:
            await self._release()
            self._end_scope(type(error), error, error.__traceback__)
            raise
        self._deadline = sent + confirmed.ttl

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._body is not None:
            self._body.deadline = min(self._max_hold_at, deadline)

    @property
    def _observer(self) -> Observer:
        return observer_of(self._lock)

    def _end_scope(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.__exit__(exc_type, exc, tb)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Never swallows the body's exception (hence ``-> None``, so type checkers know).
        if self._scope is None:
            await self._exit(exc_type, exc, tb)
            return
        try:
            await self._exit(exc_type, exc, tb)
        except BaseException as outcome:
            self._end_scope(type(outcome), outcome, outcome.__traceback__)
            raise
        self._end_scope(exc_type, exc, tb)

    async def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._group is not None
        assert self._body is not None
        assert self._stop is not None
        # A body that ended by itself after the lease's local expiry ran on a lease it may no
        # longer have (the process was paused, SIGSTOP or a blocked event loop, and the body's
        # own wake-up ran before the deadline's cancellation): it is told, as a cancelled one.
        overran = exc is None and self._lost is None and anyio.current_time() >= self._deadline
        self._wake = None
        if _task_id() != self._task_id:
            await self._exit_elsewhere(exc)
        body = self._body
        # Closing the body scope swallows the cancellation it raised itself (lost lease or
        # max_hold) and lets every other exception through untouched; out of an exception
        # group it takes that cancellation and raises the rest.
        original, swallowed = exc, False
        try:
            swallowed = bool(body.__exit__(exc_type, exc, tb))
        except BaseException as rest:
            exc = rest
        try:
            # Stopping the renewer by an event, not by cancelling its scope, is half the
            # cost of a hold() (anyio formats a reason for every cancel).
            self._stop.set()
            if self._extending:  # do not wait for a renewal round trip in flight
                for shield in list(self._shields):
                    shield.cancel()
                self._group.cancel_scope.cancel()
            # The body's exception is not handed to the task group, so it is never wrapped.
            await self._group.__aexit__(None, None, None)
        finally:
            await self._release()
        if exc is not None and not swallowed:
            if self._lost is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # The body's own exception comes out as itself (a cancellation from outside
                # wins too); the note tells that the lease was lost meanwhile.
                exc.add_note(f"threadlock: {self._lost} (while the body ran)")
            if exc is not original:
                raise exc
            return
        if self._lost is not None:
            raise self._lost from None
        if overran and self._deadline < self._max_hold_at:
            assert self._lease is not None
            lost = LeaseLost(self._key, self._lease.fence, "expired before the body ended")
            self._lost = lost
            self._observer.lost(self._kind, lost.key, lost.fence, lost.detail or "expired")
            raise lost from None
        if body.cancelled_caught:
            if self._deadline < self._max_hold_at:  # the lease ran out before max_hold
                assert self._lease is not None
                lost = LeaseLost(self._key, self._lease.fence, "not renewed before it expired")
                self._lose(lost, reported=False)
                raise lost from None
            raise TimeoutError(f"hold({self._key!r}) exceeded max_hold={self._max_hold}s")

    async def _exit_elsewhere(self, exc: BaseException | None) -> None:
        """``__aexit__`` runs in another task than ``__aenter__``: stop, release, raise.

        The body scope and the renewer's task group were entered in the first task and can
        only be closed there, so they are left open, disarmed: the renewer stops without
        touching them, and the body scope's deadline no longer fires into the first task.
        """
        assert self._stop is not None
        assert self._body is not None
        self._stop.set()
        self._body.deadline = math.inf
        await self._release()
        raise RuntimeError(
            f"hold({self._key!r}) was exited in a different task than the one that entered it "
            "(typically an async generator holding the lock that was not closed by the code "
            "iterating it, then closed by the event loop's finaliser or shutdown). The lease "
            "was released and its renewal stopped, but the first task's cancel scopes could "
            "not be closed. Close such a generator in the task that iterates it, e.g. with "
            "contextlib.aclosing()."
        ) from exc

    async def _release(self) -> None:
        lease = self._lease
        if lease is None:
            return
        await _release(self._lock, lease, self._release_timeout, self._kind)

    def _lose(self, error: LeaseLost, *, reported: bool) -> None:
        """Cancel the body; report the loss unless the lock already did."""
        self._lost = error
        if not reported:
            self._observer.lost(
                self._kind, error.key, error.fence, error.detail or "expired or taken"
            )
        assert self._body is not None
        self._body.cancel()


async def _renew(
    ref: weakref.ref[Hold], stop: anyio.Event, body: anyio.CancelScope, lease: Lease
) -> None:
    """Renew until ``stop`` is set; on loss, cancel the body. It never raises.

    It holds the :class:`Hold` only weakly, and never across an await. Once the ``Hold`` is
    collected without a clean exit it renews no more: it disarms the body scope's deadline
    (which would fire into whatever task entered it) and releases the newest lease.
    """
    hold = ref()
    if hold is None:  # dropped before the renewer even started
        return
    if stop.is_set():  # the block was exited before the renewer started: nothing to renew
        return
    lock, renew_every, shields = hold._lock, hold._renew_every, hold._shields
    release = (hold._release_timeout, hold._kind)
    next_at = anyio.current_time() + renew_every
    del hold
    while True:
        try:
            with anyio.CancelScope(deadline=next_at):
                await stop.wait()
        except anyio.get_cancelled_exc_class():
            if ref() is None:  # the task that entered the block ended without exiting it
                await _release(lock, lease, *release)
            raise
        hold = ref()
        if hold is None:
            break
        if stop.is_set():
            return
        sent = anyio.current_time()
        left = hold._deadline - sent
        if left <= 0:
            error = LeaseLost(hold._key, lease.fence, "not renewed before it expired")
            hold._lose(error, reported=False)
            return
        hold._extending = True
        del hold
        failed: Exception | None = None
        try:
            # The extend is bounded by the lease's expiry, shields included (_deadline).
            with anyio.fail_after(left), collecting(shields):
                renewed = await lock.extend(lease)
        except Exception as error:
            failed = error
        hold = ref()
        if hold is None:  # dropped during the round trip
            if failed is None:
                lease = renewed
            break
        hold._extending = False
        if stop.is_set():  # exited meanwhile: touch nothing
            return
        if isinstance(failed, LeaseLost):
            hold._lose(failed, reported=hold._lock_reports)
            return
        if failed is not None:  # unreachable backend: retry until the lease expires
            now = anyio.current_time()
            hold._observer.renew_failed(
                hold._kind, hold._key, lease.fence, failed, max(0.0, hold._deadline - now)
            )
            next_at = now + min(1.0, max(0.01, (hold._deadline - now) / 4))
            del hold
            continue
        lease = hold._lease = renewed
        hold._set_deadline(sent + renewed.ttl)
        next_at = sent + renew_every
        del hold
    # The Hold was collected without a clean exit: the block is over.
    body.deadline = math.inf
    await _release(lock, lease, *release)
