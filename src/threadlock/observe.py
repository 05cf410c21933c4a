"""What threadlock does, told to an :class:`Observer`: log events, metrics and spans hook here.

The shared layers call the observer, so every backend reports the same events without code
of its own:

* :class:`~threadlock.backends.base.BaseThreadLock` (the front of every backend) reports
  ``acquired``, ``busy``, ``waiting``, ``released``, ``renewed`` and ``lost``;
* ``hold()`` reports what only it can see (a lease that expired before a renewal got through,
  failed renewals and releases) and opens the ``hold_scope``;
* the OpenAI guards and ``recover_orphaned_runs`` report run events and open the
  ``turn_scope``.

:class:`Observer` is a base class whose hooks do nothing, not a :class:`typing.Protocol`: an
observer overrides only the hooks it needs, and a hook added in a later release does not break
observers written against this one (a protocol would make every observer incomplete, and
``isinstance`` on a runtime-checkable protocol is slow). Observers must be quick and must not
block; an exception raised by an observer never reaches the lock: it is caught, and logged once
per observer and hook (event ``observer.failed``).

The default observer is :class:`LoggingObserver`, which writes the stable events of SPEC §5 on
``logging.getLogger("threadlock")``. Set another one per lock (``lock.observer = ...`` or
``BaseThreadLock(observer=...)``) or for the whole process (:func:`set_default_observer`), and
use :func:`combine` to keep the log events beside metrics or spans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final

__all__ = [
    "DEFAULT_WAITING_INTERVAL",
    "CombinedObserver",
    "LoggingObserver",
    "Observer",
    "Scope",
    "backend_kind",
    "combine",
    "get_default_observer",
    "kind_from_name",
    "observer_of",
    "set_default_observer",
]

logger = logging.getLogger("threadlock")

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


_emit_failed: list[bool] = []  # non-empty once a log call has failed


def _emit(
    log: logging.Logger,
    level: int,
    msg: str,
    *args: object,
    extra: dict[str, Any],
    exc_info: BaseException | None = None,
) -> None:
    """``log.log(...)``, except that a failing filter or handler never reaches the lock."""
    try:
        log.log(level, msg, *args, extra=extra, exc_info=exc_info)
    except Exception:
        if not _emit_failed:  # once: a logger that fails would likely fail again
            _emit_failed.append(True)
            logging.getLogger("threadlock.observe").error(
                "logging a threadlock event failed; threadlock goes on", exc_info=True
            )


class LoggingObserver(Observer):
    """The default observer: the stable log events of SPEC §5 on ``threadlock``'s logger.

    Every record carries ``extra={"event": ..., ...}`` with the fields listed in
    ``docs/observability.md``. Each hook first asks ``logger.isEnabledFor(level)``, so an
    event whose level is off costs one cached dictionary lookup.

    Args:
        logger: where to log (``logging.getLogger("threadlock")`` by default).
        waiting_interval: seconds between two ``lock.waiting`` lines for one acquire.
    """

    __slots__ = ("_every", "_log")

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        waiting_interval: float = DEFAULT_WAITING_INTERVAL,
    ) -> None:
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
        if (
            isinstance(waiting_interval, bool)
            or not isinstance(waiting_interval, int | float)
            or not waiting_interval > 0
        ):
            raise ValueError(f"waiting_interval must be a number > 0, got {waiting_interval!r}")
        self._log = logger if logger is not None else logging.getLogger("threadlock")
        self._every = float(waiting_interval)

    @property
    def logger(self) -> logging.Logger:
        """The logger the events go to."""
        return self._log

    @property
    def waiting_interval(self) -> float | None:
        """The interval while INFO is enabled on the logger, else ``None``."""
        return self._every if self._log.isEnabledFor(logging.INFO) else None

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "acquired %r (fence %d) after %.3fs",
                key,
                fence,
                waited,
                extra={
                    "event": "lock.acquired",
                    "backend": backend,
                    "key": key,
                    "fence": fence,
                    "waited": waited,
                },
            )

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "%r is busy (%s) after %.3fs",
                key,
                reason,
                waited,
                extra={
                    "event": "lock.busy",
                    "backend": backend,
                    "key": key,
                    "waited": waited,
                    "reason": reason,
                },
            )

    def waiting(self, backend: str, key: str, waited: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "still waiting for %r after %.1fs",
                key,
                waited,
                extra={"event": "lock.waiting", "backend": backend, "key": key, "waited": waited},
            )

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "released %r (fence %d) after %.3fs%s",
                key,
                fence,
                held_for,
                "" if released else "; it was no longer held",
                extra={
                    "event": "lock.released",
                    "backend": backend,
                    "key": key,
                    "fence": fence,
                    "held_for": held_for,
                    "released": released,
                },
            )

    def renewed(self, backend: str, key: str, fence: int) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "renewed %r (fence %d)",
                key,
                fence,
                extra={"event": "lock.renewed", "backend": backend, "key": key, "fence": fence},
            )

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        log = self._log
        if log.isEnabledFor(logging.WARNING):
            _emit(
                log,
                logging.WARNING,
                "lease on %r lost: %s",
                key,
                detail or "expired or taken",
                extra={
                    "event": "lock.lost",
                    "backend": backend,
                    "key": key,
                    "fence": fence,
                    "detail": detail,
                },
            )

    def renew_failed(
        self, backend: str, key: str, fence: int, error: BaseException, left: float
    ) -> None:
        log = self._log
        if log.isEnabledFor(logging.WARNING):
            _emit(
                log,
                logging.WARNING,
                "renewal of %r failed (%s); retrying for %.3fs more",
                key,
                error,
                left,
                extra={
                    "event": "lock.renew_failed",
                    "backend": backend,
                    "key": key,
                    "fence": fence,
                    "error": repr(error),
                    "left": left,
                },
            )

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        log = self._log
        if not log.isEnabledFor(logging.WARNING):
            return
        extra = {
            "event": "lock.release_failed",
            "backend": backend,
            "key": key,
            "fence": fence,
            "error": "timeout" if error is None else repr(error),
        }
        if error is None:
            _emit(
                log,
                logging.WARNING,
                "release of %r timed out after %ss; the lease will expire by its TTL",
                key,
                timeout,
                extra=extra,
            )
        else:
            _emit(
                log,
                logging.WARNING,
                "release of %r failed; the lease will expire by its TTL",
                key,
                exc_info=error,
                extra=extra,
            )

    def turn_scope(self, api: str, backend: str, key: str) -> Scope | None:
        if self._log.isEnabledFor(logging.DEBUG):
            return _LoggedTurn(self._log, api, backend, key)
        return None

    def run_waiting(self, key: str, kind: str, run_id: str, status: str, waited: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "waiting for %s %s (%s) on %r",
                kind,
                run_id,
                status,
                key,
                extra={
                    "event": "run.waiting",
                    "key": key,
                    "kind": kind,
                    "run_id": run_id,
                    "status": status,
                    "waited": waited,
                },
            )

    def run_adopted(self, key: str, run_id: str, error: str) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "adopted run %s after a lost response (%s)",
                run_id,
                error,
                extra={"event": "run.adopted", "key": key, "run_id": run_id, "error": error},
            )

    def conversation_locked(self, key: str, delay: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "conversation %r is locked by a process outside threadlock; retrying in %.2fs",
                key,
                delay,
                extra={"event": "run.conversation_locked", "key": key, "delay": delay},
            )

    def recovery_retry(self, what: str, error: str, delay: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.INFO):
            _emit(
                log,
                logging.INFO,
                "recovery: %s failed (%s); retrying in %.2fs",
                what,
                error,
                delay,
                extra={"event": "recovery.retry", "what": what, "error": error, "delay": delay},
            )

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        log = self._log
        if log.isEnabledFor(logging.WARNING):
            _emit(
                log,
                logging.WARNING,
                "cancelled orphaned %s %s on %r",
                kind,
                run_id,
                key,
                extra={
                    "event": "run.orphan_cancelled",
                    "backend": backend,
                    "key": key,
                    "kind": kind,
                    "run_id": run_id,
                },
            )


class _LoggedTurn:
    """``turn.started`` / ``turn.ended`` at DEBUG."""

    __slots__ = ("_api", "_backend", "_key", "_log", "_started")

    def __init__(self, log: logging.Logger, api: str, backend: str, key: str) -> None:
        self._log = log
        self._api = api
        self._backend = backend
        self._key = key
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()
        _emit(
            self._log,
            logging.DEBUG,
            "turn on %r started",
            self._key,
            extra={
                "event": "turn.started",
                "api": self._api,
                "backend": self._backend,
                "key": self._key,
            },
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        took = time.monotonic() - self._started
        outcome = "ok" if exc_type is None else exc_type.__name__
        _emit(
            self._log,
            logging.DEBUG,
            "turn on %r ended after %.3fs (%s)",
            self._key,
            took,
            outcome,
            extra={
                "event": "turn.ended",
                "api": self._api,
                "backend": self._backend,
                "key": self._key,
                "took": took,
                "outcome": outcome,
            },
        )


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


# -- which observer a lock uses ---------------------------------------------------------------

# Observers of our own that cannot raise are called directly; any other is shielded.
_TRUSTED: Final = (Observer, LoggingObserver, CombinedObserver)


def _shielded(observer: Observer, argument: str) -> Observer:
    """``observer`` as the lock calls it: checked, and shielded unless it is one of ours."""
    if not isinstance(observer, Observer):
        raise TypeError(
            f"{argument} must be a threadlock.observe.Observer, not {type(observer).__name__}"
        )
    if type(observer) in _TRUSTED:
        return observer
    return CombinedObserver((observer,))


_default: Observer = LoggingObserver()
_default_effective: Observer = _default


def set_default_observer(observer: Observer | None) -> None:
    """Set the observer of every lock that has none of its own (``None``: a fresh
    :class:`LoggingObserver`, the initial default). Takes effect at the next operation."""
    global _default, _default_effective
    chosen = LoggingObserver() if observer is None else observer
    effective = _shielded(chosen, "observer")
    _default, _default_effective = chosen, effective


def get_default_observer() -> Observer:
    """The observer of every lock that has none of its own."""
    return _default


def observer_of(lock: object) -> Observer:
    """The observer ``lock`` reports to: its own, else the process-wide default.

    It works for any object: a lock that is not a
    :class:`~threadlock.backends.base.BaseThreadLock` uses the default.
    """
    own = getattr(lock, "_tl_observer", None)
    if isinstance(own, Observer):
        return own
    return _default_effective


def kind_from_name(name: str) -> str:
    """``"RedisThreadLock"`` -> ``"redis"``: a class name without a ``ThreadLock`` suffix,
    lowercased."""
    if name.endswith("ThreadLock") and len(name) > len("ThreadLock"):
        name = name[: -len("ThreadLock")]
    return name.lower()


def backend_kind(lock: object) -> str:
    """The backend label of ``lock``: its ``backend_kind`` attribute when it is a non-empty
    string (every :class:`~threadlock.backends.base.BaseThreadLock` has one), else
    :func:`kind_from_name` of its class."""
    declared = getattr(lock, "backend_kind", None)
    if isinstance(declared, str) and declared:
        return declared
    return kind_from_name(type(lock).__name__)
