"""``hold()``: acquire, renew in the background, always release. Written once for every backend.

A backend supplies only ``acquire``, ``extend`` and ``release``; :class:`Hold` turns them into
the context manager that SPEC §3.2 describes:

1. it acquires, waiting FIFO as ``acquire`` does;
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

An exception raised by the body comes out as itself, never wrapped in an ``ExceptionGroup``.

It reports to the lock's observer (:mod:`threadlock.observe`) what only it can see: the
``hold_scope`` around the block, a lease that expired before a renewal got through, failed
renewals and releases. The lock itself reports acquire, renew, loss on renew and release.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

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
        self._scope: Scope | None = None
        # A BaseThreadLock reports acquire/extend/release itself; any other lock does not,
        # so hold() reports a loss on extend for it.
        self._lock_reports = hasattr(type(lock), "_tl_observer")

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
        if anyio.current_time() - started <= lease.ttl * _QUICK_GRANT:
            # The grant came after ``started``, so it expires after started + ttl.
            self._deadline = started + lease.ttl
        else:
            # A long wait (or a slow answer): when it was granted is not known here, so
            # renew at once and count from when the renewal was sent. A lease that expired
            # before its grant reached us fails here, before the body runs.
            await self._confirm(lease)
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
            self._max_hold_at = anyio.current_time() + self._max_hold
        # The body never outlives the lease's local expiry estimate, even when a renewal is
        # stuck in a round trip that cannot be interrupted: the deadline cancels it.
        body.deadline = min(self._max_hold_at, self._deadline)
        body.__enter__()
        self._body = body
        self._stop = anyio.Event()
        group.start_soon(self._renew, self._stop, name="threadlock renew")
        return lease

    async def _confirm(self, lease: Lease) -> None:
        sent = anyio.current_time()
        try:
            self._lease = await self._lock.extend(lease)
        except BaseException as error:
            await self._release()
            self._end_scope(type(error), error, error.__traceback__)
            raise
        self._deadline = sent + self._lease.ttl

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._body is not None:
            self._body.deadline = min(self._max_hold_at, deadline)

    @property
    def _observer(self) -> Observer:
        return observer_of(self._lock)

    @property
    def _kind(self) -> str:
        return backend_kind(self._lock)

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
        body = self._body
        # Closing the body scope swallows the cancellation it raised itself (lost lease or
        # max_hold) and lets every other exception through untouched.
        swallowed = bool(body.__exit__(exc_type, exc, tb))
        try:
            # Stopping the renewer by an event, not by cancelling its scope, is half the
            # cost of a hold() (anyio formats a reason for every cancel).
            assert self._stop is not None
            self._stop.set()
            if self._extending:  # do not wait for a renewal round trip in flight
                self._group.cancel_scope.cancel()
            # The body's exception is not handed to the task group, so it is never wrapped.
            await self._group.__aexit__(None, None, None)
        finally:
            await self._release()
        if self._lost is not None:
            outer_cancel = not swallowed and isinstance(exc, anyio.get_cancelled_exc_class())
            if not outer_cancel:  # a cancellation from outside still wins
                raise self._lost from (None if swallowed else exc)
        elif body.cancelled_caught:
            if self._deadline < self._max_hold_at:  # the lease ran out before max_hold
                assert self._lease is not None
                lost = LeaseLost(self._key, self._lease.fence, "not renewed before it expired")
                self._lose(lost, reported=False)
                raise lost from None
            raise TimeoutError(f"hold({self._key!r}) exceeded max_hold={self._max_hold}s")

    async def _release(self) -> None:
        lease = self._lease
        if lease is None:
            return
        with anyio.move_on_after(self._release_timeout, shield=True) as scope:
            try:
                await self._lock.release(lease)
            except Exception as error:  # a failed release must not hide the body's outcome
                self._observer.release_failed(
                    self._kind, lease.key, lease.fence, error, self._release_timeout
                )
        if scope.cancelled_caught:
            self._observer.release_failed(
                self._kind, lease.key, lease.fence, None, self._release_timeout
            )

    def _lose(self, error: LeaseLost, *, reported: bool) -> None:
        """Cancel the body; report the loss unless the lock already did."""
        self._lost = error
        if not reported:
            self._observer.lost(
                self._kind, error.key, error.fence, error.detail or "expired or taken"
            )
        assert self._body is not None
        self._body.cancel()

    async def _renew(self, stop: anyio.Event) -> None:
        """Renew until ``stop`` is set; on loss, cancel the body. It never raises."""
        next_at = anyio.current_time() + self._renew_every
        while True:
            with anyio.move_on_after(next_at - anyio.current_time()):
                await stop.wait()
            if stop.is_set():
                return
            assert self._lease is not None
            sent = anyio.current_time()
            left = self._deadline - sent
            if left <= 0:
                error = LeaseLost(self._key, self._lease.fence, "not renewed before it expired")
                self._lose(error, reported=False)
                return
            self._extending = True
            try:
                with anyio.fail_after(left):
                    lease = await self._lock.extend(self._lease)
            except LeaseLost as error:
                self._lose(error, reported=self._lock_reports)
                return
            except Exception as error:  # unreachable backend: retry until the lease expires
                now = anyio.current_time()
                self._observer.renew_failed(
                    self._kind, self._key, self._lease.fence, error, max(0.0, self._deadline - now)
                )
                next_at = now + min(1.0, max(0.01, (self._deadline - now) / 4))
                continue
            finally:
                self._extending = False
            self._lease = lease
            self._set_deadline(sent + lease.ttl)
            next_at = sent + self._renew_every
