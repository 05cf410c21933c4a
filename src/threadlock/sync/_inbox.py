"""The blocking :class:`Inbox`: :class:`threadlock.Inbox` run on the process's loop.

There is no second inbox. ``turns()`` drives the async :class:`threadlock.inbox.Turns`
through a :class:`~threadlock.sync._bridge.Bridge`: one task on the loop posts, owns the key
(``hold(timeout=0)``, renewed there), takes, acknowledges and releases, exactly as for async
code, while the loop body runs in the calling thread between two of its steps. ``sweep()``
is the async sweep with the handler run in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from threadlock._validate import check_positive
from threadlock.inbox.api import Handler, Turns, _check_count
from threadlock.inbox.api import Inbox as _AsyncInbox
from threadlock.sync import _runtime
from threadlock.sync._bridge import Bridge
from threadlock.sync._lock import SyncThreadLock

if TYPE_CHECKING:
    from threadlock._lease import Lease
    from threadlock.inbox.types import Batch, DeadLetter, Message, Strategy

__all__ = ["Inbox", "SyncBatch", "SyncTurns"]

_log = logging.getLogger("threadlock.inbox")


def _in_a_thread(handler: Callable[[SyncBatch], object]) -> Handler:
    """The async handler of a sweep pass that runs the blocking ``handler`` in a worker
    thread with the batch as a :class:`SyncBatch`."""

    async def in_a_thread(batch: Batch) -> object:
        return await anyio.to_thread.run_sync(handler, SyncBatch(batch))

    return in_a_thread


class SyncBatch:
    """The blocking :class:`threadlock.inbox.Batch`: what one turn of the owner answers.

    Attributes:
        messages: the messages to answer, in arrival order.
        skipped: older messages the ``latest`` strategy acknowledges without answering.
        lease: the lease of the key, held and renewed on the loop while the loop body runs
            (pass it as ``lease=`` to a sync guard).
        attempt: 1 on the first delivery; n when some message of the batch already failed
            n - 1 times.
    """

    __slots__ = ("_batch", "attempt", "lease", "messages", "skipped")

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self.messages: list[Message] = batch.messages
        self.skipped: list[Message] = batch.skipped
        self.lease: Lease = batch.lease
        self.attempt: int = batch.attempt

    def superseded(self) -> bool:
        """``True`` if messages newer than this batch arrived since it was taken (the next
        batch of this loop holds them); see :meth:`threadlock.inbox.Batch.superseded`."""
        return _runtime.run(self._batch.superseded)

    def __repr__(self) -> str:
        return (
            f"SyncBatch(messages={self.messages!r}, skipped={self.skipped!r}, "
            f"lease={self.lease!r}, attempt={self.attempt})"
        )


class SyncTurns:
    """The batches of one :meth:`Inbox.turns` call: an iterator and a context manager.

    Use ``with inbox.turns(...) as turns: for batch in turns: ...``: an exception from the
    loop body then reaches the inbox (one more failed attempt, then dead letters) and goes on
    as itself. A bare ``for batch in inbox.turns(...)`` works too; when its loop is left
    early (``break``, an exception) the iteration is closed with the loop, so the batch stays
    pending without counting an attempt and the key is released at once.
    """

    __slots__ = ("_bridge", "_in_with", "_iterating", "_state", "_turns")

    def __init__(self, turns: Turns) -> None:
        self._turns = turns
        self._bridge: Bridge[Turns] = Bridge(turns)
        self._state = "new"  # "open" once the loop's task runs, "closed" once it ended
        self._in_with = False
        self._iterating = False

    def __enter__(self) -> Self:
        self._in_with = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, GeneratorExit):
            exc_type = exc = tb = None
        self._close(exc_type, exc, tb)

    def __iter__(self) -> Iterator[SyncBatch]:
        if self._iterating:
            raise RuntimeError("the batches of one turns() call can be iterated only once")
        self._iterating = True
        return self._iterate()

    def close(self) -> None:
        """Stop: the current batch (if any) stays pending, and the lease is released."""
        self._close(None, None, None)

    def _iterate(self) -> Iterator[SyncBatch]:
        try:
            while True:
                batch = self._next()
                if batch is None:
                    return
                yield batch
        finally:
            if not self._in_with:  # a bare ``for`` left early: close with the loop
                try:
                    self._close(None, None, None)
                except Exception as error:  # cannot leave a generator's close: say so
                    _log.warning("inbox turns closed with its loop: %r", error)

    def _next(self) -> SyncBatch | None:
        if self._state == "closed":
            return None
        if self._state == "new":
            self._bridge.enter()
            self._state = "open"
        try:
            batch = self._bridge.call(self._turns.__anext__)
        except StopAsyncIteration:
            self._close(None, None, None)
            return None
        except BaseException as error:
            # The iteration ended with it (InboxFull, LeaseLost), or this thread was
            # interrupted while the loop took a batch: stop without counting an attempt (the
            # body never saw that batch), which releases the key.
            try:
                self._close(None, None, None)
            except BaseException as outcome:
                if outcome is not error:
                    raise
            raise
        return SyncBatch(batch)

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        self._bridge.exit(exc_type, exc, tb)


class Inbox:
    """The blocking :class:`threadlock.Inbox`: one inbox per key, in the backend of ``lock``.

    The same arguments, checks and guarantees; every step runs in the async inbox on the
    process's loop (see :mod:`threadlock.sync`). One instance may be shared by every thread.

    Args:
        lock: a :class:`SyncThreadLock` whose backend has an inbox store (memory, Redis,
            Postgres).
        max_pending: how many messages a key may have waiting; one more raises
            :class:`~threadlock.InboxFull` and is not stored.
        entry_ttl: seconds a message id is remembered for deduplication.
    """

    def __init__(
        self, lock: SyncThreadLock, *, max_pending: int = 100, entry_ttl: float = 3600.0
    ) -> None:
        if not isinstance(lock, SyncThreadLock):
            raise TypeError(
                f"lock must be a threadlock.sync.SyncThreadLock, not {type(lock).__name__}"
            )
        self._lock = lock
        self._options: dict[str, Any] = {"max_pending": max_pending, "entry_ttl": entry_ttl}
        backend = lock.backend
        self._built = (backend, _AsyncInbox(backend, **self._options))  # checks the arguments

    @property
    def aio(self) -> _AsyncInbox:
        """The async :class:`threadlock.Inbox` of this process's backend (a new one in the
        child of a fork)."""
        backend = self._lock.backend
        built = self._built
        if built[0] is not backend:
            built = (backend, _AsyncInbox(backend, **self._options))
            self._built = built
        return built[1]

    def turns(
        self,
        key: str,
        message: object,
        *,
        id: str | None = None,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
    ) -> SyncTurns:
        """Post ``message`` to ``key``, then yield the batches this call owns (maybe none).

        See :meth:`threadlock.Inbox.turns`; every argument is checked here, before anything
        is stored. Nothing is posted until the iteration starts.
        """
        turns = self.aio.turns(
            key,
            message,
            id=id,
            strategy=strategy,
            debounce=debounce,
            max_wait=max_wait,
            max_batch=max_batch,
            ttl=ttl,
            max_attempts=max_attempts,
        )
        return SyncTurns(turns)

    def pending(self, key: str) -> list[Message]:
        """The messages of ``key`` not acknowledged yet, in arrival order."""
        return _runtime.run(self.aio.pending, key)

    def dead_letters(self, key: str) -> list[DeadLetter]:
        """The messages of ``key`` that failed ``max_attempts`` times, oldest first."""
        return _runtime.run(self.aio.dead_letters, key)

    def stranded(self, limit: int = 100) -> list[str]:
        """Keys with pending messages and no live lease (their owner died mid-batch)."""
        return _runtime.run(self.aio.stranded, limit)

    def sweep(
        self,
        handler: Callable[[SyncBatch], object],
        *,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
        limit: int = 100,
    ) -> int:
        """One pass of crash recovery, :meth:`threadlock.Inbox.sweep` with a blocking
        ``handler(batch)``: it runs in a worker thread while the pass owns each stranded key
        (ack on return, a failed attempt on an exception, fenced). Returns how many batches
        ``handler`` completed."""
        aio = self.aio
        settings = aio._sweep_settings(
            handler, strategy, debounce, max_wait, max_batch, ttl, max_attempts
        )
        count = _check_count(limit, "limit")
        return _runtime.run(aio._sweep_pass, _in_a_thread(handler), settings, count)

    def serve(
        self,
        handler: Callable[[SyncBatch], object],
        *,
        stop: threading.Event,
        interval: float = 1.0,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        """Run :meth:`sweep` every ``interval`` seconds in the calling thread until ``stop``
        is set (run it in a thread of its own; see :meth:`threadlock.Inbox.serve`)."""
        if not isinstance(stop, threading.Event):
            raise TypeError(f"stop must be a threading.Event, not {type(stop).__name__}")
        pause = check_positive(interval, "interval")
        settings = self.aio._sweep_settings(
            handler, strategy, debounce, max_wait, max_batch, ttl, max_attempts
        )
        in_a_thread = _in_a_thread(handler)
        while not stop.is_set():
            _runtime.run(self.aio._sweep_pass, in_a_thread, settings, 100)
            stop.wait(pause)

    def __repr__(self) -> str:
        return f"Inbox({self._lock!r})"
