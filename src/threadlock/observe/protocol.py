"""The :class:`Observer` base class: the hooks threadlock calls, each of which does nothing.

:class:`Observer` is a base class whose hooks do nothing, not a :class:`typing.Protocol`: an
observer overrides only the hooks it needs, and a hook added in a later release does not break
observers written against this one (a protocol would make every observer incomplete, and
``isinstance`` on a runtime-checkable protocol is slow). Observers must be quick and must not
block.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Final

__all__ = ["DEFAULT_WAITING_INTERVAL", "Observer", "Scope"]

#: Seconds between two ``waiting`` reports (``lock.waiting`` log lines) for one acquire.
DEFAULT_WAITING_INTERVAL: Final = 5.0

#: What ``hold_scope`` and ``turn_scope`` return: a context manager the caller enters when
#: the scope starts and exits, with the outcome, when it ends. Its ``__exit__`` return value is
#: ignored (a scope never swallows an exception).
Scope = AbstractContextManager[Any]


class Observer:
    """Receives what threadlock does. Every hook does nothing; override the ones you need.

    ``backend`` is the backend kind (``"memory"``, ``"redis"``, ``"postgres"``, or a user
    backend's :attr:`~threadlock.BaseThreadLock.backend_kind`): a label with few values, fit
    for metrics. ``key`` is the conversation or thread id, which has as many values as there
    are users: keep it out of metric labels. Durations are seconds.

    Hooks are called from the task doing the work, except ``waiting``, which is called from
    an event-loop timer while the waiting task sleeps (in a copy of that task's context, so
    context variables such as the current span are the waiting task's).
    """

    __slots__ = ()

    @property
    def waiting_interval(self) -> float | None:
        """Seconds between two ``waiting`` calls for one acquire; ``None``: do not call it.

        Read at the start of every acquire that may wait. ``None`` (the default) also skips
        the little work of timing the wait.
        """
        return None

    # -- the lock (reported by BaseThreadLock, for every backend) --------------------------

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        """``acquire`` returned a lease with ``fence`` after ``waited`` seconds."""

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        """:class:`~threadlock.ThreadBusy` is raised after ``waited`` seconds.

        ``reason`` is ``"lock"`` (``acquire`` ran out of time), ``"run"`` (a guard found a
        run or background response still active) or ``"conversation_locked"`` (a guard ran
        out of time retrying OpenAI's ``conversation_locked``).
        """

    def waiting(self, backend: str, key: str, waited: float) -> None:
        """An acquire is still queued after ``waited`` seconds (every ``waiting_interval``)."""

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        """``release`` returned ``released`` (``False``: the lease was no longer held, or the
        release at the end of ``hold()`` failed or timed out, after ``release_failed``).

        ``held_for`` is counted from the lease's ``acquired_at`` (the backend's clock) to this
        machine's clock, never below 0.
        """

    def renewed(self, backend: str, key: str, fence: int) -> None:
        """``extend`` (a renewal in ``hold()``, or a direct call) succeeded."""

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        """A lease was found lost: ``extend`` refused it, it expired before a renewal got
        through, or a guard's chain head moved under it."""

    def renew_failed(
        self, backend: str, key: str, fence: int, error: BaseException, left: float
    ) -> None:
        """A renewal failed for a reason other than loss; it is retried for ``left`` s."""

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        """The release at the end of ``hold()`` raised ``error``, or (``error is None``)
        took longer than ``timeout`` seconds; the lease expires by its TTL."""

    def hold_scope(self, backend: str, key: str) -> Scope | None:
        """A ``hold()`` block starts (before it acquires); return a scope to follow it.

        The scope is entered in the task that entered the block and exited after the release,
        with the exception the block raises (if any).
        """
        return None

    # -- the OpenAI guards and recovery ----------------------------------------------------

    def turn_scope(self, api: str, backend: str, key: str) -> Scope | None:
        """A guarded turn starts; return a scope to follow it.

        ``api`` is ``"conversation"``, ``"chain"`` or ``"thread"``. The scope is entered
        before the lease is taken and exited after it is released.
        """
        return None

    def run_waiting(self, key: str, kind: str, run_id: str, status: str, waited: float) -> None:
        """A guard is still waiting for a run or background response (``kind``) to end."""

    def run_adopted(self, key: str, run_id: str, error: str) -> None:
        """A guard found its own run after a lost create response (``error``) and kept it."""

    def conversation_locked(self, key: str, delay: float) -> None:
        """OpenAI answered ``conversation_locked``; the guard retries after ``delay`` s."""

    def recovery_retry(self, what: str, error: str, delay: float) -> None:
        """A recovery call got a 429 or 5xx and is retried after ``delay`` seconds."""

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        """Recovery cancelled an orphaned run or background response (``kind``)."""

    # -- the inbox ---------------------------------------------------------------------------

    def inbox_posted(self, backend: str, key: str, message_id: str, stored: bool) -> None:
        """A message was posted to ``key``'s inbox; ``stored`` is ``False`` for a duplicate id
        (nothing was stored)."""

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        """The owner of ``key`` (lease ``fence``) starts answering a batch of ``size``
        messages (``skipped`` more acknowledged unanswered by ``latest``)."""

    def inbox_pending(self, backend: str, key: str, pending: int) -> None:
        """The owner of ``key`` read ``pending`` messages waiting; 0 when it stops owning the
        key (released with the inbox empty, or left by an exception)."""

    def inbox_superseded(self, backend: str, key: str, fence: int) -> None:
        """``batch.superseded()`` found newer messages than the batch on ``key``."""

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        """A message failed ``attempts`` times and became a dead letter."""
