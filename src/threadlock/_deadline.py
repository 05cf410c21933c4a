"""The one rule for how long a backend call may take: never past its caller's deadline.

A backend shields a round trip from cancellation so that its outcome is known (a statement
or script cancelled in flight may still take effect after the caller moved on). A shield
also hides the caller's own deadline, so a shielded call on a frozen network would outlive
it: the lease's expiry for ``extend``, ``release_timeout`` for the release at the end of
``hold()``, ``timeout`` for ``acquire``. :func:`bounded_call` is the shield every backend
uses instead: it ends at the caller's effective deadline (read before the shield hides it),
and never later than the backend's own bound (Postgres ``statement_timeout``, Redis
``command_timeout``), so a client without a socket timeout cannot make it unbounded either.

The renewal in ``hold()`` also registers the shields of its round trip (:func:`collecting`),
so leaving the block stops an extend in flight at once rather than waiting for it: the
release that follows settles the lease whatever became of the extend.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import anyio.lowlevel

from threadlock.errors import BackendError

__all__ = ["bounded_call", "call_deadline", "collecting"]

# The shields opened by bounded_call in the current task, while a caller collects them.
_COLLECTED: contextvars.ContextVar[set[anyio.CancelScope] | None] = contextvars.ContextVar(
    "threadlock_collected_shields", default=None
)


# Checkpoints given to a caller whose deadline has passed, for its cancel scope to fire (its
# timer and ours are due at the same instant, not necessarily in the same loop iteration).
_CHECKPOINTS = 3


def call_deadline(bound: float) -> float:
    """When a call starting now must end (anyio clock): the caller's effective deadline,
    and at most ``bound`` seconds from now.

    A caller that is already cancelled (its effective deadline is ``-inf``) gets ``bound``:
    the call that settles its outcome (a withdraw, a retried release) may still run.
    """
    deadline = anyio.current_effective_deadline()
    if deadline == -math.inf:
        deadline = math.inf
    return min(deadline, anyio.current_time() + bound)


@asynccontextmanager
async def bounded_call(
    bound: float, what: str, *, deadline: float | None = None
) -> AsyncIterator[None]:
    """A shielded scope that ends at :func:`call_deadline` (or ``deadline``, if given).

    Cut off at the caller's own deadline, the caller's cancellation is delivered (as an
    unshielded call would have been cancelled); cut off at ``bound`` (or cut short by
    :func:`collecting`'s owner), it raises :class:`BackendError` naming ``what``. A
    cancellation of the caller meanwhile is delivered at its next checkpoint, after the shield.
    """
    own = anyio.current_time() + bound
    end = call_deadline(bound) if deadline is None else deadline
    collected = _COLLECTED.get()
    with anyio.CancelScope(deadline=end, shield=True) as scope:
        if collected is not None:
            collected.add(scope)
        try:
            yield
        finally:
            if collected is not None:
                collected.discard(scope)
    if scope.cancelled_caught:
        if end < own:  # the caller's deadline: let its cancel scope take over
            for _ in range(_CHECKPOINTS):
                await anyio.lowlevel.checkpoint()
        raise BackendError(f"{what} did not answer before the caller's deadline")


@contextmanager
def collecting(shields: set[anyio.CancelScope]) -> Iterator[None]:
    """Within this block, every :func:`bounded_call` of this task is added to ``shields``
    (and removed when it ends), so the owner may cut them short (``scope.cancel()``)."""
    token = _COLLECTED.set(shields)
    try:
        yield
    finally:
        _COLLECTED.reset(token)
