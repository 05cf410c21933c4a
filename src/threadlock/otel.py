"""OpenTelemetry spans for threadlock (extra ``otel``): :class:`OtelObserver`.

Spans (all ``SpanKind.INTERNAL``):

* ``threadlock.turn``: a guarded OpenAI turn (``guard_conversation`` / ``guard_thread``), from
  entry to release; it is the current span inside the ``async with`` block, so the OpenAI
  client's own spans nest under it.
* ``threadlock.hold``: a ``hold()`` block, from before the acquire to after the release; the
  current span inside the block.
* ``threadlock.acquire``: one ``acquire`` call, from its start to the grant or
  :class:`~threadlock.ThreadBusy`. It is recorded when the call returns, with its true start
  time, as a child of the span current at the call (``threadlock.hold`` inside ``hold()``).

Attributes: ``threadlock.key``, ``threadlock.backend``, and on the acquire span
``threadlock.fence``, ``threadlock.waited_s``, ``threadlock.outcome`` (``acquired`` or
``busy``); ``threadlock.api`` on the turn span. Span events on the current span:
``threadlock.waiting``, ``threadlock.lease_lost``, ``threadlock.renew_failed``,
``threadlock.release_failed``, ``threadlock.run_waiting``,
``threadlock.conversation_locked``, ``threadlock.run_adopted``,
``threadlock.orphan_cancelled``; for the inbox ``threadlock.inbox_posted``,
``threadlock.inbox_batch`` (``threadlock.batch_size``, ``threadlock.skipped``,
``threadlock.attempt``), ``threadlock.inbox_pending`` (``threadlock.pending``),
``threadlock.inbox_superseded`` and ``threadlock.inbox_dead_letter``. A block that ends with
an exception gets it recorded and the span status set to ERROR; a cancelled block is marked
``threadlock.cancelled = true``.

Only ``opentelemetry-api`` is used; it is imported when the observer is built, not when
``threadlock`` is. Without an SDK configured every span is a no-op.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from threadlock._optional import require
from threadlock._version import __version__
from threadlock.observe import DEFAULT_WAITING_INTERVAL, Observer, Scope

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["OtelObserver"]


class _SpanScope:
    """Starts a span, makes it current, and ends it with the outcome of the block."""

    __slots__ = ("_attributes", "_context", "_name", "_span", "_token", "_trace", "_tracer")

    def __init__(self, api: Any, tracer: Tracer, name: str, attributes: dict[str, Any]) -> None:
        self._trace = api.trace
        self._context = api.context
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._span: Span | None = None
        self._token: object = None

    def __enter__(self) -> None:
        span = self._tracer.start_span(self._name, attributes=self._attributes)
        self._span = span
        self._token = self._context.attach(self._trace.set_span_in_context(span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        self._span = None
        try:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(
                    self._trace.Status(self._trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                )
            elif exc is not None:  # cancellation and the like: not an error of the block
                span.set_attribute("threadlock.cancelled", True)
        finally:
            try:
                self._context.detach(self._token)
            finally:
                span.end()


class OtelObserver(Observer):
    """An observer that records OpenTelemetry spans (see the module doc for the list).

    Args:
        tracer: the tracer to use; by default ``trace.get_tracer("threadlock", version)``
            from ``tracer_provider`` (the global provider when ``None``).
        tracer_provider: where to get the default tracer from.
        waiting_interval: seconds between two ``threadlock.waiting`` events while an acquire
            waits; ``None`` records none.

    It replaces the default :class:`~threadlock.observe.LoggingObserver` where it is set; to
    keep the log events too, set ``combine(LoggingObserver(), OtelObserver())``.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install
            'threadlock[otel]'``).
    """

    def __init__(
        self,
        tracer: Tracer | None = None,
        *,
        tracer_provider: Any = None,
        waiting_interval: float | None = DEFAULT_WAITING_INTERVAL,
    ) -> None:
        if waiting_interval is not None and (
            isinstance(waiting_interval, bool)
            or not isinstance(waiting_interval, int | float)
            or not waiting_interval > 0
        ):
            raise ValueError(
                f"waiting_interval must be a number > 0 or None, got {waiting_interval!r}"
            )
        self._every = None if waiting_interval is None else float(waiting_interval)
        api = require("opentelemetry.trace", "otel")
        context = require("opentelemetry.context", "otel")
        self._api = _Api(api, context)
        if tracer is None:
            tracer = api.get_tracer("threadlock", __version__, tracer_provider=tracer_provider)
        self._tracer: Tracer = tracer

    @property
    def tracer(self) -> Tracer:
        """The tracer the spans come from."""
        return self._tracer

    def _event(self, name: str, attributes: dict[str, Any]) -> None:
        span = self._api.trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    def _acquire_span(
        self, backend: str, key: str, waited: float, outcome: str, fence: int | None
    ) -> None:
        end = time.time_ns()
        attributes: dict[str, Any] = {
            "threadlock.key": key,
            "threadlock.backend": backend,
            "threadlock.waited_s": waited,
            "threadlock.outcome": outcome,
        }
        if fence is not None:
            attributes["threadlock.fence"] = fence
        span = self._tracer.start_span(
            "threadlock.acquire", attributes=attributes, start_time=end - int(waited * 1e9)
        )
        span.end(end_time=end)

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        self._acquire_span(backend, key, waited, "acquired", fence)

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        if reason == "lock":
            self._acquire_span(backend, key, waited, "busy", None)
        else:
            self._event("threadlock.busy", {"threadlock.reason": reason, "threadlock.key": key})

    @property
    def waiting_interval(self) -> float | None:
        return self._every

    def waiting(self, backend: str, key: str, waited: float) -> None:
        self._event("threadlock.waiting", {"threadlock.key": key, "threadlock.waited_s": waited})

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self._event(
            "threadlock.lease_lost",
            {"threadlock.key": key, "threadlock.fence": fence, "threadlock.detail": detail},
        )

    def renew_failed(
        self, backend: str, key: str, fence: int, error: BaseException, left: float
    ) -> None:
        self._event(
            "threadlock.renew_failed",
            {"threadlock.key": key, "threadlock.error": repr(error), "threadlock.left_s": left},
        )

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        self._event(
            "threadlock.release_failed",
            {
                "threadlock.key": key,
                "threadlock.error": "timeout" if error is None else repr(error),
            },
        )

    def hold_scope(self, backend: str, key: str) -> Scope | None:
        return _SpanScope(
            self._api,
            self._tracer,
            "threadlock.hold",
            {"threadlock.key": key, "threadlock.backend": backend},
        )

    def turn_scope(self, api: str, backend: str, key: str) -> Scope | None:
        return _SpanScope(
            self._api,
            self._tracer,
            "threadlock.turn",
            {"threadlock.key": key, "threadlock.backend": backend, "threadlock.api": api},
        )

    def run_waiting(self, key: str, kind: str, run_id: str, status: str, waited: float) -> None:
        self._event(
            "threadlock.run_waiting",
            {
                "threadlock.key": key,
                "threadlock.kind": kind,
                "threadlock.run_id": run_id,
                "threadlock.status": status,
                "threadlock.waited_s": waited,
            },
        )

    def run_adopted(self, key: str, run_id: str, error: str) -> None:
        self._event(
            "threadlock.run_adopted",
            {"threadlock.key": key, "threadlock.run_id": run_id, "threadlock.error": error},
        )

    def conversation_locked(self, key: str, delay: float) -> None:
        self._event(
            "threadlock.conversation_locked", {"threadlock.key": key, "threadlock.delay_s": delay}
        )

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        self._event(
            "threadlock.orphan_cancelled",
            {"threadlock.key": key, "threadlock.kind": kind, "threadlock.run_id": run_id},
        )

    def inbox_posted(self, backend: str, key: str, message_id: str, stored: bool) -> None:
        self._event(
            "threadlock.inbox_posted",
            {
                "threadlock.key": key,
                "threadlock.backend": backend,
                "threadlock.message_id": message_id,
                "threadlock.stored": stored,
            },
        )

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        self._event(
            "threadlock.inbox_batch",
            {
                "threadlock.key": key,
                "threadlock.backend": backend,
                "threadlock.fence": fence,
                "threadlock.batch_size": size,
                "threadlock.skipped": skipped,
                "threadlock.attempt": attempt,
            },
        )

    def inbox_pending(self, backend: str, key: str, pending: int) -> None:
        self._event(
            "threadlock.inbox_pending",
            {"threadlock.key": key, "threadlock.backend": backend, "threadlock.pending": pending},
        )

    def inbox_superseded(self, backend: str, key: str, fence: int) -> None:
        self._event(
            "threadlock.inbox_superseded",
            {"threadlock.key": key, "threadlock.backend": backend, "threadlock.fence": fence},
        )

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        self._event(
            "threadlock.inbox_dead_letter",
            {
                "threadlock.key": key,
                "threadlock.backend": backend,
                "threadlock.message_id": message_id,
                "threadlock.attempts": attempts,
            },
        )


class _Api:
    """The two opentelemetry-api modules, imported lazily."""

    __slots__ = ("context", "trace")

    def __init__(self, trace: Any, context: Any) -> None:
        self.trace = trace
        self.context = context
