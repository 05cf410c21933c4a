"""Several observers as one: :func:`combine` and :class:`CombinedObserver`.

Each member is shielded from the others: an exception raised by a member (in a hook, in
``waiting_interval``, or entering or exiting a scope) is caught and logged once per member and
hook (event ``observer.failed``), and the other members still run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from threadlock.observe.protocol import Observer, Scope

__all__ = ["CombinedObserver", "combine"]

logger = logging.getLogger("threadlock")


class CombinedObserver(Observer):
    """Several observers as one (see :func:`combine`), each shielded from the others.

    Every hook is passed to every member in order; an exception from a member is caught and
    logged once per member and hook (event ``observer.failed``), and the others still run.
    ``waiting_interval`` is the shortest any member asks for; ``waiting`` goes to the members
    that ask for it.
    """

    __slots__ = ("_failed", "_members")

    def __init__(self, observers: Iterable[Observer]) -> None:
        members: list[Observer] = []
        for observer in observers:
            if isinstance(observer, CombinedObserver):
                members.extend(observer._members)
            elif isinstance(observer, Observer):
                members.append(observer)
            else:
                raise TypeError(
                    f"observers must be threadlock.observe.Observer instances, "
                    f"not {type(observer).__name__}"
                )
        self._members: tuple[Observer, ...] = tuple(members)
        self._failed: set[tuple[int, str]] = set()

    @property
    def members(self) -> tuple[Observer, ...]:
        """The observers, in call order."""
        return self._members

    def _failure(self, observer: object, hook: str) -> None:
        mark = (id(observer), hook)
        if mark in self._failed:
            return
        self._failed.add(mark)
        logger.warning(
            "observer %s failed in %s(); threadlock goes on, and further failures of this hook "
            "are not logged",
            type(observer).__name__,
            hook,
            exc_info=True,
            extra={"event": "observer.failed", "observer": type(observer).__name__, "hook": hook},
        )

    def _each(self, hook: str, *args: Any) -> None:
        for observer in self._members:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                self._failure(observer, hook)

    def _scope(self, hook: str, *args: Any) -> Scope | None:
        scopes: list[tuple[Observer, Scope]] = []
        for observer in self._members:
            try:
                scope = getattr(observer, hook)(*args)
            except Exception:
                self._failure(observer, hook)
                continue
            if scope is not None:
                scopes.append((observer, scope))
        return _ShieldedScopes(self, scopes) if scopes else None

    @property
    def waiting_interval(self) -> float | None:
        best: float | None = None
        for observer in self._members:
            try:
                every = observer.waiting_interval
            except Exception:
                self._failure(observer, "waiting_interval")
                continue
            if every is not None and (best is None or every < best):
                best = every
        return best

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        self._each("acquired", backend, key, fence, waited)

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        self._each("busy", backend, key, waited, reason)

    def waiting(self, backend: str, key: str, waited: float) -> None:
        for observer in self._members:
            try:
                if observer.waiting_interval is not None:
                    observer.waiting(backend, key, waited)
            except Exception:
                self._failure(observer, "waiting")

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        self._each("released", backend, key, fence, held_for, released)

    def renewed(self, backend: str, key: str, fence: int) -> None:
        self._each("renewed", backend, key, fence)

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self._each("lost", backend, key, fence, detail)

    def renew_failed(
        self, backend: str, key: str, fence: int, error: BaseException, left: float
    ) -> None:
        self._each("renew_failed", backend, key, fence, error, left)

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        self._each("release_failed", backend, key, fence, error, timeout)

    def hold_scope(self, backend: str, key: str) -> Scope | None:
        return self._scope("hold_scope", backend, key)

    def turn_scope(self, api: str, backend: str, key: str) -> Scope | None:
        return self._scope("turn_scope", api, backend, key)

    def run_waiting(self, key: str, kind: str, run_id: str, status: str, waited: float) -> None:
        self._each("run_waiting", key, kind, run_id, status, waited)

    def run_adopted(self, key: str, run_id: str, error: str) -> None:
        self._each("run_adopted", key, run_id, error)

    def conversation_locked(self, key: str, delay: float) -> None:
        self._each("conversation_locked", key, delay)

    def recovery_retry(self, what: str, error: str, delay: float) -> None:
        self._each("recovery_retry", what, error, delay)

    def inbox_posted(self, backend: str, key: str, message_id: str, stored: bool) -> None:
        self._each("inbox_posted", backend, key, message_id, stored)

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        self._each("inbox_batch", backend, key, fence, size, skipped, attempt)

    def inbox_pending(self, backend: str, key: str, pending: int) -> None:
        self._each("inbox_pending", backend, key, pending)

    def inbox_superseded(self, backend: str, key: str, fence: int) -> None:
        self._each("inbox_superseded", backend, key, fence)

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        self._each("inbox_dead_letter", backend, key, message_id, attempts)

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        self._each("orphan_cancelled", backend, key, kind, run_id)


class _ShieldedScopes:
    """Enters the members' scopes in order and exits them in reverse; never raises."""

    __slots__ = ("_entered", "_owner", "_scopes")

    def __init__(self, owner: CombinedObserver, scopes: list[tuple[Observer, Scope]]) -> None:
        self._owner = owner
        self._scopes = scopes
        self._entered: list[tuple[Observer, Scope]] = []

    def __enter__(self) -> None:
        for observer, scope in self._scopes:
            try:
                scope.__enter__()
            except Exception:
                self._owner._failure(observer, "scope.__enter__")
            else:
                self._entered.append((observer, scope))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        while self._entered:
            observer, scope = self._entered.pop()
            try:
                scope.__exit__(exc_type, exc, tb)
            except Exception:
                self._owner._failure(observer, "scope.__exit__")


def combine(*observers: Observer) -> Observer:
    """One observer that passes every hook to each of ``observers``, in order.

    For example ``combine(LoggingObserver(), PrometheusObserver())`` keeps the log events and
    adds metrics. An exception from one member is caught and logged once; the others still run.
    """
    return CombinedObserver(observers)
