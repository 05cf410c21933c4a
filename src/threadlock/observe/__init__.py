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

The default observer is :class:`LoggingObserver`, which writes the stable log events (listed
on the Observability page) on ``logging.getLogger("threadlock")``. Set another one per lock
(``lock.observer = ...`` or ``BaseThreadLock(observer=...)``) or for the whole process
(:func:`set_default_observer`), and use :func:`combine` to keep the log events beside metrics
or spans.

The package is split by what each part owns:

* ``threadlock.observe.protocol``: :class:`Observer` (the hooks), :data:`Scope`,
  :data:`DEFAULT_WAITING_INTERVAL`;
* ``threadlock.observe.log_events``: :class:`LoggingObserver`, the log events;
* ``threadlock.observe.combinators``: :func:`combine` and :class:`CombinedObserver`;
* ``threadlock.observe.lookup``: the process-wide default, :func:`observer_of` and
  :func:`backend_kind`, which the shared layers use to find a lock's observer and label.

Import from ``threadlock.observe``; the submodules are its layout, not its interface.
"""

from __future__ import annotations

from threadlock.observe.combinators import CombinedObserver, combine
from threadlock.observe.log_events import LoggingObserver
from threadlock.observe.lookup import (
    backend_kind,
    get_default_observer,
    kind_from_name,
    observer_of,
    set_default_observer,
)
from threadlock.observe.protocol import DEFAULT_WAITING_INTERVAL, Observer, Scope

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
