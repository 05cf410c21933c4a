"""The default observer, :class:`LoggingObserver`: the stable log events.

The events go to ``logging.getLogger("threadlock")`` with ``extra={"event": ..., ...}``; the
fields of each are listed in ``docs/observability.md``. A failing log filter or handler never
reaches the lock: the first failure is logged on ``threadlock.observe`` and threadlock goes on.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from threadlock.observe.protocol import DEFAULT_WAITING_INTERVAL, Observer, Scope

__all__ = ["LoggingObserver"]

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
    """The default observer: the stable log events on ``threadlock``'s logger.

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

    def inbox_posted(self, backend: str, key: str, message_id: str, stored: bool) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "inbox %r: message %s %s",
                key,
                message_id,
                "posted" if stored else "already posted (duplicate id, not stored)",
                extra={
                    "event": "inbox.posted",
                    "backend": backend,
                    "key": key,
                    "message_id": message_id,
                    "stored": stored,
                },
            )

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "inbox %r: batch of %d (fence %d, %d skipped, attempt %d)",
                key,
                size,
                fence,
                skipped,
                attempt,
                extra={
                    "event": "inbox.batch",
                    "backend": backend,
                    "key": key,
                    "fence": fence,
                    "size": size,
                    "skipped": skipped,
                    "attempt": attempt,
                },
            )

    def inbox_superseded(self, backend: str, key: str, fence: int) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            _emit(
                log,
                logging.DEBUG,
                "inbox %r: batch superseded by newer messages (fence %d)",
                key,
                fence,
                extra={"event": "inbox.superseded", "backend": backend, "key": key, "fence": fence},
            )

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        log = self._log
        if log.isEnabledFor(logging.WARNING):
            _emit(
                log,
                logging.WARNING,
                "inbox %r: message %s failed %d times; moved to the dead letters",
                key,
                message_id,
                attempts,
                extra={
                    "event": "inbox.dead_letter",
                    "backend": backend,
                    "key": key,
                    "message_id": message_id,
                    "attempts": attempts,
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
