"""Which observer a lock reports to, and with which backend label.

A lock's own observer (set with ``lock.observer = ...`` or ``BaseThreadLock(observer=...)``)
wins; a lock without one uses the process-wide default (:func:`set_default_observer`). An
observer that is not one of threadlock's own is wrapped in a :class:`CombinedObserver` of one,
so that an exception it raises never reaches the lock.
"""

from __future__ import annotations

from typing import Final

from threadlock.observe.combinators import CombinedObserver
from threadlock.observe.log_events import LoggingObserver
from threadlock.observe.protocol import Observer

__all__ = [
    "backend_kind",
    "get_default_observer",
    "kind_from_name",
    "observer_of",
    "set_default_observer",
]

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
