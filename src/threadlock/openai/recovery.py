"""``recover_orphaned_runs``: cancel what a crashed worker left running, and nothing else.

Call it once at start-up (and, if you like, on a schedule). For every conversation or thread in
the run registry, plus any ids the caller passes, it takes that conversation's lease with
``timeout=0`` first: a live worker holds the lease for the whole turn, so a busy lease means
the run has an owner and is **skipped**. While recovery holds the lease, no worker can start a
new turn there, so what it sees cannot change under it. It then cancels runs and background
responses that are still active and older than ``max_age`` (by their own ``created_at``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import openai

from threadlock._validate import check_key
from threadlock.errors import BackendError, ThreadBusy
from threadlock.observe import backend_kind, observer_of
from threadlock.openai.guard import RUN_TOKEN_METADATA, _check_client, _check_registry
from threadlock.openai.runs import (
    ACTIVE_RESPONSE_STATUSES,
    Backoff,
    is_cannot_cancel,
    is_not_found,
    is_retryable,
    status_of,
)
from threadlock.openai.threads import INTENT_PREFIX
from threadlock.protocol import RunRecord, RunRegistry, ThreadLock

__all__ = ["RecoveryReport", "recover_orphaned_runs"]

#: Statuses recovery cancels; ``cancelling`` is left alone (a cancel is already under way).
CANCELLABLE_RUN_STATUSES = frozenset({"queued", "in_progress", "requires_action"})
_RUNS_LISTED = 10
_ATTEMPTS = 5
_RECOVERY_TTL = 30.0

_T = TypeVar("_T")


@dataclass
class RecoveryReport:
    """What :func:`recover_orphaned_runs` did (or, with ``dry_run``, would do).

    Attributes:
        checked: the conversation and thread ids looked at.
        cancelled: run and response ids cancelled.
        skipped_live: ids left alone because a live worker holds the conversation's lease
            (the registry's run ids; a caller-passed thread id when no run of it is known).
        too_young: run and response ids still active but younger than ``max_age``.
        already_terminal: ids that had ended on their own (including a cancel answered 400
            ``Cannot cancel ...``, a run already ``cancelling``, and a 404).
        errors: ``(id, error text)`` for what could not be resolved after retries.
        dry_run: whether nothing was changed.
    """

    checked: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    too_young: list[str] = field(default_factory=list)
    already_terminal: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "checked": self.checked,
            "cancelled": self.cancelled,
            "skipped_live": self.skipped_live,
            "too_young": self.too_young,
            "already_terminal": self.already_terminal,
            "errors": [list(pair) for pair in self.errors],
            "dry_run": self.dry_run,
        }


def _token(run: Any) -> str:
    """The guard's ``threadlock_token`` tag of a run ("" if it has none)."""
    return str((getattr(run, "metadata", None) or {}).get(RUN_TOKEN_METADATA, ""))


class _Recovery:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        lock: ThreadLock,
        registry: RunRegistry,
        max_age: float,
        dry_run: bool,
        concurrency: int,
    ) -> None:
        self.client = client
        self.api = client.with_options(max_retries=0)
        self.lock = lock
        self.registry = registry
        self.max_age = max_age
        self.dry_run = dry_run
        self.limiter = anyio.CapacityLimiter(concurrency)  # API calls in flight
        self.leases = anyio.Semaphore(concurrency)  # conversations locked by recovery at once
        self.report = RecoveryReport(dry_run=dry_run)
        self.observer = observer_of(lock)
        self.kind = backend_kind(lock)

    async def call(self, what: str, make: Callable[[], Awaitable[_T]]) -> _T:
        """One API call, at most ``concurrency`` at once, retried on 429/5xx with jitter."""
        backoff = Backoff(0.5, 8.0)
        for attempt in range(_ATTEMPTS):
            async with self.limiter:
                try:
                    return await make()
                except openai.APIError as error:
                    if not is_retryable(error) or attempt == _ATTEMPTS - 1:
                        raise
                    delay = backoff.next_delay()
                    self.observer.recovery_retry(what, type(error).__name__, delay)
            await anyio.sleep(delay)  # outside the limiter: a waiting retry holds no slot
        raise AssertionError("unreachable")  # pragma: no cover

    def old_enough(self, created_at: float | None) -> bool:
        return created_at is None or time.time() - float(created_at) >= self.max_age

    async def forget(self, *records: RunRecord | None) -> None:
        for record in records:
            if record is not None and not self.dry_run:
                try:
                    await self.registry.untrack_run(record.key, record.run_id)
                except BackendError as error:  # listed, not raised: the report still comes
                    self.report.errors.append((record.run_id, f"untrack_run: {error}"))

    async def conversation(self, key: str, records: list[RunRecord], thread_ids: set[str]) -> None:
        async with self.leases:
            try:
                await self._conversation(key, records, thread_ids)
            except BackendError as error:  # this conversation only; the others go on
                self.report.errors.append((key, str(error)))

    async def _conversation(self, key: str, records: list[RunRecord], thread_ids: set[str]) -> None:
        self.report.checked.append(key)
        if self.dry_run:
            if await self.lock.inspect(key) is not None:
                self.skip(key, records)
                return
            await self.work(key, records, thread_ids)
            return
        try:
            async with self.lock.hold(key, ttl=_RECOVERY_TTL, timeout=0):
                await self.work(key, records, thread_ids)
        except ThreadBusy:
            self.skip(key, records)

    def skip(self, key: str, records: list[RunRecord]) -> None:
        self.report.skipped_live.extend([r.run_id for r in records] or [key])

    async def work(self, key: str, records: list[RunRecord], thread_ids: set[str]) -> None:
        runs_by_thread: dict[str, dict[str, RunRecord]] = {}
        for record in records:
            if record.kind == "response":
                await self.response(record)
            else:
                runs_by_thread.setdefault(record.thread_id, {})[record.run_id] = record
        if key in thread_ids:
            runs_by_thread.setdefault(key, {})
        for thread_id, known in runs_by_thread.items():
            await self.thread(thread_id, known)

    async def response(self, record: RunRecord) -> None:
        rid = record.run_id
        try:
            response = await self.call(
                f"retrieve {rid}", lambda: self.client.responses.retrieve(rid)
            )
        except openai.APIError as error:
            if is_not_found(error):
                self.report.already_terminal.append(rid)
                await self.forget(record)
            else:
                self.report.errors.append((rid, str(error)))
            return
        if status_of(response) not in ACTIVE_RESPONSE_STATUSES:
            self.report.already_terminal.append(rid)
            await self.forget(record)
            return
        if not self.old_enough(getattr(response, "created_at", None)):
            self.report.too_young.append(rid)
            return
        await self.cancel(
            rid, "response", record.key, (record,), lambda: self.api.responses.cancel(rid)
        )

    async def thread(self, thread_id: str, recorded: dict[str, RunRecord]) -> None:
        # Intent entries (a create whose answer the guard never got) name the run by its tag.
        known = {k: r for k, r in recorded.items() if not k.startswith(INTENT_PREFIX)}
        intents = {k.removeprefix(INTENT_PREFIX): r for k, r in recorded.items() if k not in known}
        try:
            page = await self.call(
                f"list runs of {thread_id}",
                lambda: self.client.beta.threads.runs.list(thread_id, limit=_RUNS_LISTED),
            )
        except openai.APIError as error:
            if is_not_found(error):  # the thread is gone: so are its runs
                for record in known.values():
                    self.report.already_terminal.append(record.run_id)
                    await self.forget(record)
                await self.forget(*intents.values())
            else:
                self.report.errors.append((thread_id, str(error)))
            return
        seen: set[str] = set()
        for run in page.data:
            seen.add(run.id)
            entries = (known.get(run.id), intents.pop(_token(run), None))
            status = status_of(run)
            tracked = any(entries)
            if status == "cancelling" or (status not in CANCELLABLE_RUN_STATUSES and tracked):
                self.report.already_terminal.append(run.id)
                await self.forget(*entries)
            elif status not in CANCELLABLE_RUN_STATUSES:
                continue  # an old, finished run the registry never knew: nothing to say
            elif not self.old_enough(run.created_at):
                self.report.too_young.append(run.id)
            else:
                key = next((e.key for e in entries if e is not None), thread_id)
                canceller = self._run_canceller(run.id, thread_id)
                await self.cancel(run.id, "run", key, entries, canceller)
        for run_id, record in known.items():
            if run_id not in seen:  # older than the newest runs listed: it has ended
                self.report.already_terminal.append(run_id)
                await self.forget(record)
        # An intent no listed run carries: that create never made a run (or it ended long ago).
        await self.forget(*intents.values())

    def _run_canceller(self, run_id: str, thread_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: self.api.beta.threads.runs.cancel(run_id, thread_id=thread_id)

    async def cancel(
        self,
        rid: str,
        kind: str,
        key: str,
        records: tuple[RunRecord | None, ...],
        make: Callable[[], Awaitable[Any]],
    ) -> None:
        if self.dry_run:
            self.report.cancelled.append(rid)
            return
        try:
            await self.call(f"cancel {rid}", make)
        except openai.APIError as error:
            if is_cannot_cancel(error) or is_not_found(error):
                self.report.already_terminal.append(rid)
                await self.forget(*records)
            else:
                self.report.errors.append((rid, str(error)))
            return
        self.report.cancelled.append(rid)
        await self.forget(*records)
        self.observer.orphan_cancelled(self.kind, key, kind, rid)


async def recover_orphaned_runs(
    client: openai.AsyncOpenAI,
    *,
    lock: ThreadLock,
    max_age: float = 300.0,
    thread_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    concurrency: int = 4,
) -> RecoveryReport:
    """Cancel runs and background responses that no live worker owns; see the module doc.

    Args:
        client: the OpenAI client.
        lock: the backend the workers use; it must also be a :class:`~threadlock.RunRegistry`.
        max_age: seconds; younger runs are reported as ``too_young`` and left alone.
        thread_ids: extra Assistants thread ids to check (e.g. from your own user table);
            their 10 newest runs are listed.
        dry_run: report what would be done, and change nothing (no lease is taken, nothing is
            cancelled, the registry is left as it is).
        concurrency: the most OpenAI calls in flight at once.

    A cancel answered 400 ``Cannot cancel ...`` or 404 counts as resolved; 429 and 5xx are
    retried with backoff and jitter (5 attempts), and what still fails is listed in
    ``errors`` rather than raised, so start-up goes on.
    """
    _check_client(client)
    _check_registry(lock)
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
        raise TypeError(f"max_age must be a number, not {type(max_age).__name__}")
    if not math.isfinite(max_age) or max_age < 0:
        raise ValueError(f"max_age must be a finite number >= 0, got {max_age!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    extra = {check_key(t, "thread_ids") for t in (thread_ids or ())}
    registry: RunRegistry = lock  # type: ignore[assignment]
    recovery = _Recovery(client, lock, registry, float(max_age), dry_run, concurrency)
    by_key: dict[str, list[RunRecord]] = {key: [] for key in sorted(extra)}
    for record in await registry.tracked_runs():
        by_key.setdefault(record.key, []).append(record)
    async with anyio.create_task_group() as tg:
        for key, records in by_key.items():
            tg.start_soon(recovery.conversation, key, records, extra)
    return recovery.report
