"""Run and response statuses, OpenAI's concurrency errors, and waiting for a run to end.

OpenAI's Assistants errors carry no structured code, so they are recognised by their text;
the Responses API's ``conversation_locked`` has a code.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import openai

if TYPE_CHECKING:
    from threadlock.observe import Observer

__all__ = [
    "ACTIVE_RESPONSE_STATUSES",
    "ACTIVE_RUN_STATUSES",
    "TERMINAL_RESPONSE_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "Backoff",
    "active_run_in_error",
    "is_cannot_cancel",
    "is_conversation_locked",
    "is_not_found",
    "is_retryable",
    "poll_delay",
]

#: A thread with a run in one of these statuses refuses new messages and runs.
#: ``requires_action`` is active: the SDK's ``poll()`` returns on it, but the thread is locked.
ACTIVE_RUN_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
TERMINAL_RUN_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
ACTIVE_RESPONSE_STATUSES = frozenset({"queued", "in_progress"})
TERMINAL_RESPONSE_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})

_ACTIVE_RUN_ERROR = re.compile(
    r"Can't add messages to \S+ while a run (?P<a>run_[A-Za-z0-9_-]+) is active"
    r"|Thread \S+ already has an active run (?P<b>run_[A-Za-z0-9_-]+)"
)
_CANNOT_CANCEL = re.compile(r"Cannot cancel run with status")

_RUN_WAITING_LOG_EVERY = 5.0  # seconds between two ``run.waiting`` log lines for one wait
_RUN_EXPIRY_SLACK = 5.0  # seconds past a run's expires_at before waiting for it stops


def _message(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        body = error.body
        if isinstance(body, Mapping):
            inner = body.get("error", body)
            if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
                return str(inner["message"])
        return str(getattr(error, "message", "") or error)
    return str(error)


def active_run_in_error(error: BaseException) -> str | None:
    """The run id from a "run is active" 400 error, or ``None`` for any other error.

    Recognises ``Can't add messages to thread_X while a run run_Y is active.`` and
    ``Thread thread_X already has an active run run_Y.``
    """
    if not isinstance(error, openai.BadRequestError):
        return None
    match = _ACTIVE_RUN_ERROR.search(_message(error))
    if match is None:
        return None
    return match.group("a") or match.group("b")


def is_conversation_locked(error: BaseException) -> bool:
    """Whether ``error`` is the Responses API's 400 ``conversation_locked``."""
    return isinstance(error, openai.BadRequestError) and error.code == "conversation_locked"


def is_cannot_cancel(error: BaseException) -> bool:
    """Whether ``error`` is a 400 ``Cannot cancel run with status '...'`` (already terminal)."""
    return isinstance(error, openai.BadRequestError) and bool(
        _CANNOT_CANCEL.search(_message(error))
    )


def is_not_found(error: BaseException) -> bool:
    """Whether ``error`` is a 404."""
    return isinstance(error, openai.NotFoundError)


def is_retryable(error: BaseException) -> bool:
    """429, 5xx, 408, 409 and connection errors: worth another try after a pause."""
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


def poll_delay(headers: Mapping[str, str] | None, fallback: float) -> float:
    """Seconds to wait before the next poll: the ``openai-poll-after-ms`` hint, or ``fallback``."""
    if headers is not None:
        hint = headers.get("openai-poll-after-ms")
        if hint is not None:
            try:
                return max(0.0, int(hint) / 1000)
            except ValueError:
                pass
    return fallback


class Backoff:
    """Exponential backoff with full jitter: ``first``, doubling up to ``cap`` seconds.

    The first delay is drawn from ``[first/2, first]``; later ones from ``[d/2, d]`` as ``d``
    doubles to ``cap``. Jitter keeps workers that hit the same wall from retrying in step.
    """

    def __init__(
        self,
        first: float = 0.5,
        cap: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._next = first
        self._cap = cap
        self._rand = rand

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay / 2 + delay / 2 * self._rand()


async def sleep_within(delay: float, deadline: float | None) -> bool:
    """Sleep ``delay`` seconds, or until ``deadline``; ``False`` if the deadline has passed."""
    if deadline is not None:
        left = deadline - anyio.current_time()
        if left <= 0:
            return False
        delay = min(delay, left)
    await anyio.sleep(delay)
    return True


def status_of(obj: Any) -> str:
    """The ``status`` of a run or response object (``""`` when missing)."""
    status = getattr(obj, "status", None)
    return str(status) if status is not None else ""


async def wait_until_done(
    fetch: Any,
    *,
    what: str,
    key: str,
    active: frozenset[str],
    deadline: float | None,
    observer: Observer,
    expires_at: float | None = None,
) -> Any:
    """Poll ``fetch()`` (a raw-response call) until the status leaves ``active``.

    It sleeps by the ``openai-poll-after-ms`` hint, else backs off 0.5 -> 2 s with jitter, and
    stops at ``deadline`` (returning the last object seen) or a while after ``expires_at``.
    """
    backoff = Backoff(0.5, 2.0)
    if expires_at is not None:
        until_expiry = expires_at - time.time() + _RUN_EXPIRY_SLACK
        expiry_deadline = anyio.current_time() + max(0.0, until_expiry)
        deadline = expiry_deadline if deadline is None else min(deadline, expiry_deadline)
    started = anyio.current_time()
    logged = started - _RUN_WAITING_LOG_EVERY
    while True:
        raw = await fetch()
        obj = raw.parse()
        status = status_of(obj)
        if status not in active:
            return obj
        now = anyio.current_time()
        if now - logged >= _RUN_WAITING_LOG_EVERY:
            logged = now
            observer.run_waiting(
                key, what, str(getattr(obj, "id", "?")), str(status), now - started
            )
        if not await sleep_within(poll_delay(raw.headers, backoff.next_delay()), deadline):
            return obj
