"""Prometheus metrics for threadlock (extra ``prometheus``): :class:`PrometheusObserver`.

The three signals bot operators alert on, under clear names, plus the timings behind them:

======================================================  =========  ======================
metric                                                  type       labels
======================================================  =========  ======================
``threadlock_busy_total``                               counter    ``backend``, ``reason``
``threadlock_locks_held``                               gauge      ``backend``
``threadlock_orphaned_runs_cancelled_total``            counter    ``backend``, ``kind``
``threadlock_acquire_wait_seconds``                     histogram  ``backend``, ``outcome``
``threadlock_hold_seconds``                             histogram  ``backend``
``threadlock_leases_lost_total``                        counter    ``backend``
``threadlock_renewals_total``                           counter    ``backend``
``threadlock_inbox_batch_size``                         histogram  ``backend``
``threadlock_inbox_pending``                            gauge      ``backend``
``threadlock_inbox_dead_letters_total``                 counter    ``backend``
======================================================  =========  ======================

Labels never carry the key (one time series per conversation would swamp Prometheus).
``prometheus_client`` is imported when the observer is built, not when ``threadlock`` is.

Usage::

    from threadlock.observe import LoggingObserver, combine, set_default_observer
    from threadlock.prometheus import PrometheusObserver

    set_default_observer(combine(LoggingObserver(), PrometheusObserver()))
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Final

from threadlock._optional import require
from threadlock.observe import Observer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["ACQUIRE_WAIT_BUCKETS", "BATCH_SIZE_BUCKETS", "HOLD_BUCKETS", "PrometheusObserver"]

#: Buckets of ``threadlock_acquire_wait_seconds``: from an uncontended grant to a long queue.
ACQUIRE_WAIT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

#: Buckets of ``threadlock_hold_seconds``: one OpenAI turn takes from a second to minutes.
HOLD_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


#: Buckets of ``threadlock_inbox_batch_size``: messages answered in one batch.
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 20.0, 50.0, 100.0)


class _Metrics:
    """The metric families of one registry and namespace (registered once, then shared)."""

    def __init__(self, prom: Any, registry: CollectorRegistry, namespace: str) -> None:
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.busy = prom.Counter(
            "busy",
            "Times a conversation was busy: acquire ran out of time (ThreadBusy), or a guard "
            "found a run still active or OpenAI's conversation_locked retries ran out.",
            ["backend", "reason"],
            **common,
        )
        self.held = prom.Gauge(
            "locks_held",
            "Leases this process holds now (acquired and not yet released or lost).",
            ["backend"],
            **common,
        )
        self.orphans = prom.Counter(
            "orphaned_runs_cancelled",
            "Runs and background responses cancelled by recover_orphaned_runs.",
            ["backend", "kind"],
            **common,
        )
        self.wait = prom.Histogram(
            "acquire_wait_seconds",
            "Seconds acquire took, until the grant (outcome=acquired) or ThreadBusy (busy).",
            ["backend", "outcome"],
            buckets=ACQUIRE_WAIT_BUCKETS,
            **common,
        )
        self.hold = prom.Histogram(
            "hold_seconds",
            "Seconds from the grant to the release of a lease.",
            ["backend"],
            buckets=HOLD_BUCKETS,
            **common,
        )
        self.lost = prom.Counter(
            "leases_lost",
            "Leases found lost while in use (expired or taken before a renewal).",
            ["backend"],
            **common,
        )
        self.renewals = prom.Counter(
            "renewals",
            "Successful lease renewals (extend).",
            ["backend"],
            **common,
        )
        self.batch_size = prom.Histogram(
            "inbox_batch_size",
            "Messages answered in one inbox batch.",
            ["backend"],
            buckets=BATCH_SIZE_BUCKETS,
            **common,
        )
        self.pending = prom.Gauge(
            "inbox_pending",
            "Messages waiting in the inboxes of the keys this process owns now.",
            ["backend"],
            **common,
        )
        self.dead_letters = prom.Counter(
            "inbox_dead_letters",
            "Inbox messages moved to the dead letters after max_attempts failures.",
            ["backend"],
            **common,
        )


_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_shared_lock = threading.Lock()


def _metrics_for(prom: Any, registry: CollectorRegistry, namespace: str) -> _Metrics:
    with _shared_lock:
        by_namespace = _shared.setdefault(registry, {})
        metrics = by_namespace.get(namespace)
        if metrics is None:
            metrics = by_namespace[namespace] = _Metrics(prom, registry, namespace)
        return metrics


class PrometheusObserver(Observer):
    """An observer that keeps Prometheus metrics (see the module doc for the list).

    Args:
        registry: where to register the metrics (``prometheus_client.REGISTRY`` by default).
            Several observers on one registry and namespace share the same metrics instead
            of failing on duplicate registration.
        namespace: the metric name prefix.

    ``threadlock_locks_held`` counts the leases this observer saw acquired and not yet
    released or lost (each lease once, however many times it is released). A lease taken with
    ``acquire`` and never released stays counted: ``hold()`` and the guards always release.

    It replaces the default :class:`~threadlock.observe.LoggingObserver` where it is set; to
    keep the log events too, set ``combine(LoggingObserver(), PrometheusObserver())``.

    Raises:
        ImportError: ``prometheus_client`` is not installed (``pip install
            'threadlock[prometheus]'``).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "threadlock"
    ) -> None:
        prom = require("prometheus_client", "prometheus")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if registry is None:
            registry = prom.REGISTRY
        elif not isinstance(registry, prom.CollectorRegistry):
            raise TypeError(
                f"registry must be a prometheus_client.CollectorRegistry, "
                f"not {type(registry).__name__}"
            )
        self._metrics = _metrics_for(prom, registry, namespace)
        # Leases seen acquired and not yet released -> whether the gauge still counts them
        # (a lost lease leaves the gauge at once, and the histogram at its release).
        self._held: dict[tuple[str, str, int], bool] = {}
        # Keys this process owns -> the pending count last counted in the gauge for them.
        self._pending: dict[tuple[str, str], int] = {}
        self._registry = registry

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics live in."""
        return self._registry

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        metrics = self._metrics
        metrics.wait.labels(backend, "acquired").observe(waited)
        lease = (backend, key, fence)
        if lease not in self._held:
            self._held[lease] = True
            metrics.held.labels(backend).inc()

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        metrics = self._metrics
        metrics.busy.labels(backend, reason).inc()
        if reason == "lock":
            metrics.wait.labels(backend, "busy").observe(waited)

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        counted = self._held.pop((backend, key, fence), None)
        if counted is None:  # not seen acquired, or already released
            return
        self._metrics.hold.labels(backend).observe(held_for)
        if counted:
            self._metrics.held.labels(backend).dec()

    def renewed(self, backend: str, key: str, fence: int) -> None:
        self._metrics.renewals.labels(backend).inc()

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self._metrics.lost.labels(backend).inc()
        lease = (backend, key, fence)
        if self._held.get(lease):
            self._held[lease] = False
            self._metrics.held.labels(backend).dec()

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        self._metrics.orphans.labels(backend, kind).inc()

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        self._metrics.batch_size.labels(backend).observe(size)

    def inbox_pending(self, backend: str, key: str, pending: int) -> None:
        owned = (backend, key)
        before = self._pending.pop(owned, 0)
        if pending > 0:
            self._pending[owned] = pending
        if pending != before:
            self._metrics.pending.labels(backend).inc(pending - before)

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        self._metrics.dead_letters.labels(backend).inc()
