"""Run an async context manager on the process's loop, for a ``with`` block in another thread.

One task on the loop enters the async context manager (a ``hold()`` or an OpenAI guard), then
serves the calls the blocking side makes inside the block, one at a time, and exits it when
the block ends. The calls therefore run inside the context manager's body, under its cancel
scope: when the lease is lost, the ``hold()`` cancels the body as it does for async code.
What the loop can cancel (a wait, a retry's sleep, a round trip to the backend) stops at
once; an HTTP call running in a worker thread cannot be interrupted and finishes first. The
loss then comes out as :class:`~threadlock.LeaseLost` from the call in progress, from the
next call, or at the end of the block.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from threadlock.sync import _runtime

__all__ = ["Bridge"]

T = TypeVar("T")
R = TypeVar("R")

_ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class _Exit:
    __slots__ = ("exc_info",)

    def __init__(self, exc_info: _ExcInfo) -> None:
        self.exc_info = exc_info


class _Call:
    __slots__ = ("args", "func", "future", "kwargs")

    def __init__(
        self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.future: Future[Any] = Future()


class Bridge(Generic[T]):
    """Drives ``acm`` from a blocking ``with`` block; see the module doc."""

    def __init__(self, acm: AbstractAsyncContextManager[T]) -> None:
        self._acm = acm
        self._entered = False
        self._task: Future[None] | None = None
        self._wake: anyio.Event | None = None
        self._pending: _Call | _Exit | None = None
        self._running: _Call | None = None
        # Set on the loop: the body has ended, with this outcome; calls made meanwhile.
        self._done = False
        self._outcome: BaseException | None = None
        self._late: list[_Call] = []

    # -- the blocking side ----------------------------------------------------------------

    def enter(self) -> T:
        if self._entered:
            raise RuntimeError("this context manager can be entered only once")
        self._entered = True
        task, value = _runtime.portal().start_task(
            self._serve, name=threading.current_thread().name
        )
        self._task = task
        return value  # type: ignore[no-any-return]

    def call(self, func: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
        """``await func(*args, **kwargs)`` inside the block's body, from the blocking side."""
        if self._task is None:
            raise RuntimeError("the with block has not been entered")
        request = _Call(func, args, kwargs)
        _runtime.portal().call(self._submit, request)
        return request.future.result()  # type: ignore[no-any-return]

    def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        _runtime.portal().call(self._submit, _Exit((exc_type, exc, tb)))
        try:
            self._task.result()
        except BaseException as outcome:
            if outcome is exc:  # already raised by a call inside the block: no second time
                return
            raise

    # -- the loop side ----------------------------------------------------------------------

    def _submit(self, request: _Call | _Exit) -> None:
        if self._done:  # the body has ended early (lost lease, max_hold)
            if isinstance(request, _Call):
                if self._outcome is not None:
                    request.future.set_exception(self._outcome)
                else:  # the context manager is still exiting: told when it is done
                    self._late.append(request)
            return  # an _Exit reads the task's outcome from its future
        assert self._wake is not None
        self._pending = request
        self._wake.set()

    def _fail(self, outcome: BaseException) -> None:
        self._outcome = outcome
        for request in (self._running, *self._late):
            if request is not None and not request.future.done():
                request.future.set_exception(outcome)
        self._late.clear()

    async def _serve(self, *, task_status: TaskStatus[T]) -> None:
        self._wake = anyio.Event()
        value = await self._acm.__aenter__()
        task_status.started(value)
        exc_info: _ExcInfo = (None, None, None)
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                request, self._pending = self._pending, None
                if isinstance(request, _Exit):
                    exc_info = request.exc_info
                    break
                assert request is not None
                self._running = request
                try:
                    result = await request.func(*request.args, **request.kwargs)
                except Exception as error:  # the call's own error goes to its caller
                    request.future.set_exception(error)
                else:
                    request.future.set_result(result)
                self._running = None  # left set when the body is cancelled mid-call
        except BaseException as cancelled:
            # The body was cancelled (the lease was lost, or max_hold): the context manager
            # turns that into LeaseLost / TimeoutError; a call in progress gets the same.
            self._done = True
            try:
                await self._acm.__aexit__(type(cancelled), cancelled, cancelled.__traceback__)
            except BaseException as outcome:
                self._fail(outcome)
                raise
            self._fail(cancelled)  # pragma: no cover - a context manager that swallowed it
            raise
        self._done = True
        await self._acm.__aexit__(*exc_info)
