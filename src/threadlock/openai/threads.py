"""``guard_thread``: one turn at a time on an OpenAI Assistants thread.

The guard holds the lease for the whole turn, waits on entry for the thread's active run, if
any, records every run it starts in the run registry before the create call returns, and always
releases (see :mod:`threadlock.openai.guard`, which it shares with ``guard_conversation``).
A run is created exactly once: it carries the ``threadlock_token`` metadata tag, by which the
guard finds it again after a lost response instead of creating a second one.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import openai

from threadlock._lease import Lease
from threadlock._validate import check_key, check_timeout, check_ttl
from threadlock.errors import ThreadBusy
from threadlock.openai._recorded import create_recorded
from threadlock.openai.guard import (
    RUN_TOKEN_METADATA,
    _check_client,
    _check_registry,
    _Guard,
    _Turn,
)
from threadlock.openai.runs import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    Backoff,
    active_run_in_error,
    is_retryable,
    sleep_within,
    status_of,
    wait_until_done,
)
from threadlock.protocol import RunRegistry, ThreadLock

if TYPE_CHECKING:
    from openai.types.beta.threads import Message, Run

__all__ = ["INTENT_PREFIX", "ThreadGuard", "ThreadTurn", "guard_thread"]

#: The ``run_id`` prefix of an intent entry: what the guard records in the run registry before
#: it creates a run, followed by the run's ``threadlock_token``. Recovery finds the run by
#: that tag (``runs.list`` on the entry's thread) even if the create call never answered.
INTENT_PREFIX = "intent:"

_RECONCILE_ATTEMPTS = 3


class ThreadTurn(_Turn):
    """One turn on an Assistants thread, inside the lease."""

    @property
    def thread_id(self) -> str:
        """The thread this turn is on (also the lease key)."""
        return self._key

    async def _retrieve_raw(self, run_id: str) -> Any:
        return await self._client.beta.threads.runs.with_raw_response.retrieve(
            run_id, thread_id=self.thread_id
        )

    async def _wait_run(
        self, run_id: str, *, active: frozenset[str], deadline: float | None
    ) -> Run:
        first_raw = await self._retrieve_raw(run_id)
        first: Run = first_raw.parse()
        if status_of(first) not in active:
            return first
        expires = getattr(first, "expires_at", None)
        run: Run = await wait_until_done(
            lambda: self._retrieve_raw(run_id),
            what="run",
            key=self._key,
            active=active,
            deadline=deadline,
            observer=self._observer,
            expires_at=float(expires) if expires else None,
        )
        return run

    async def _wait_for_other_run(self, run_id: str, deadline: float | None) -> None:
        """Wait for a run this turn did not start to reach a terminal status."""
        run = await self._wait_run(run_id, active=ACTIVE_RUN_STATUSES, deadline=deadline)
        if status_of(run) in ACTIVE_RUN_STATUSES:
            raise self._busy(f"run {run_id} on {self.thread_id} is still {status_of(run)}")
        await self._untrack(run_id)

    async def add_message(self, content: Any, *, role: str = "user", **kwargs: Any) -> Message:
        """``client.beta.threads.messages.create`` that waits out a run started elsewhere.

        A 400 ``Can't add messages to thread_X while a run run_Y is active.`` makes it wait for
        ``run_Y`` (bounded by the guard's ``timeout``), then try again.
        """
        deadline = self._deadline()
        while True:
            try:
                message: Message = await self._api.beta.threads.messages.create(
                    self.thread_id,
                    role=role,  # type: ignore[arg-type]
                    content=content,
                    **kwargs,
                )
                return message
            except openai.BadRequestError as error:
                run_id = active_run_in_error(error)
                if run_id is None:
                    raise
                await self._wait_for_other_run(run_id, deadline)

    async def _find_own_run(self, token: str) -> Run | None:
        page = await self._client.beta.threads.runs.list(self.thread_id, limit=5)
        for run in page.data:
            if (run.metadata or {}).get(RUN_TOKEN_METADATA) == token:
                return run
        return None

    async def create(self, **kwargs: Any) -> Run:
        """``client.beta.threads.runs.create`` exactly once, recorded in the run registry.

        The run carries ``metadata={"threadlock_token": ...}``. After a lost response (a
        timeout, a connection error, a 5xx or 429) the guard looks for its own run by that tag
        and adopts it instead of creating a second one; only when it is not there does it try
        again (at most 3 times). A ``Thread ... already has an active run run_Y.`` error makes
        it adopt ``run_Y`` if it is its own, or wait for it otherwise. The run is in the
        registry before this returns.

        Before the call, an intent entry (``run_id`` ``"intent:<token>"``) is recorded, so a
        run whose create never answered (a worker killed meanwhile) is still found by
        :func:`~threadlock.openai.recover_orphaned_runs`, by its tag. A cancel that lands while
        the answer is in flight waits for it (shielded, bounded by the lease) and the run is
        recorded before the cancel is delivered. The intent is removed once the run is
        recorded, or when no run was created (a refusal, :class:`~threadlock.ThreadBusy`);
        whenever the outcome is unknown (a lost answer, a backend error) it stays, for
        recovery.
        """
        token = secrets.token_hex(12)
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata[RUN_TOKEN_METADATA] = token
        intent = INTENT_PREFIX + token
        await self._track("run", intent, self.thread_id)
        try:
            run = await self._create_run(token, metadata, kwargs)
        except (ThreadBusy, openai.APIStatusError) as error:
            if not is_retryable(error):  # refused, or waited out: no run was created
                await self._untrack(intent)
            raise
        await self._untrack(intent)
        if status_of(run) in TERMINAL_RUN_STATUSES:
            await self._untrack(run.id)
        return run

    async def _track_run(self, run: Run) -> None:
        await self._track("run", run.id, self.thread_id)

    async def _create_run(self, token: str, metadata: dict[str, str], kwargs: Any) -> Run:
        """The create, its retries and reconciliation; the run is recorded when it returns."""
        deadline = self._deadline()
        backoff = Backoff(0.5, 2.0)
        failures = 0
        while True:
            try:
                return await create_recorded(
                    lambda: self._api.beta.threads.runs.create(
                        self.thread_id, metadata=metadata, **kwargs
                    ),
                    self._track_run,
                    "runs.create",
                )
            except openai.BadRequestError as error:
                run_id = active_run_in_error(error)
                if run_id is None:
                    raise
                other: Run = (await self._retrieve_raw(run_id)).parse()
                if (other.metadata or {}).get(RUN_TOKEN_METADATA) == token:
                    await self._track_run(other)
                    return other
                await self._wait_for_other_run(run_id, deadline)
            except openai.APIError as error:
                if not is_retryable(error):
                    raise
                own = await self._find_own_run(token)
                if own is not None:
                    self._observer.run_adopted(self._key, own.id, type(error).__name__)
                    await self._track_run(own)
                    return own
                failures += 1
                if failures >= _RECONCILE_ATTEMPTS:
                    raise
                if not await sleep_within(backoff.next_delay(), deadline):
                    raise

    async def wait(self, run: str | Run) -> Run:
        """Poll until the run is terminal or ``requires_action`` (bounded by ``timeout``).

        At ``requires_action`` the thread is still locked: submit the tool outputs inside the
        same turn (:meth:`submit_tool_outputs`) and wait again. A terminal run is removed from
        the registry; one still active when the block exits stays there for recovery.
        """
        run_id = run if isinstance(run, str) else run.id
        active = ACTIVE_RUN_STATUSES - {"requires_action"}
        done = await self._wait_run(run_id, active=active, deadline=self._deadline())
        if status_of(done) in TERMINAL_RUN_STATUSES:
            await self._untrack(run_id)
        return done

    async def create_and_poll(self, **kwargs: Any) -> Run:
        """:meth:`create`, then :meth:`wait`: returns at a terminal status or
        ``requires_action``."""
        run = await self.create(**kwargs)
        return await self.wait(run)

    async def submit_tool_outputs(self, run: str | Run, tool_outputs: Any, **kwargs: Any) -> Run:
        """Submit tool outputs for a ``requires_action`` run, then :meth:`wait` for it."""
        run_id = run if isinstance(run, str) else run.id
        await self._api.beta.threads.runs.submit_tool_outputs(
            run_id, thread_id=self.thread_id, tool_outputs=tool_outputs, **kwargs
        )
        return await self.wait(run_id)


class ThreadGuard(_Guard[ThreadTurn]):
    """The async context manager returned by :func:`guard_thread`."""

    _api = "thread"

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        thread_id: str,
        *,
        lock: ThreadLock,
        ttl: float,
        timeout: float | None,
        lease: Lease | None = None,
    ) -> None:
        _check_client(client)
        _check_registry(lock)
        check_key(thread_id, "thread_id")
        super().__init__(lock, thread_id, check_ttl(ttl), check_timeout(timeout), lease)
        self._client = client

    def _make_turn(self) -> ThreadTurn:
        return ThreadTurn(self._client, self._key, self._lock, self._hold, self._timeout)

    async def _before_body(self, turn: ThreadTurn, deadline: float | None) -> None:
        # A thread has at most one active run, the newest: one call finds it.
        page = await self._client.beta.threads.runs.list(self._key, limit=1)
        newest = page.data[0] if page.data else None
        registry: RunRegistry = self._lock  # type: ignore[assignment]
        for record in await registry.tracked_runs(self._key):
            if newest is None or record.run_id != newest.id:
                # Only the newest run can be active: every older one has ended.
                await registry.untrack_run(self._key, record.run_id)
        if newest is not None and status_of(newest) in ACTIVE_RUN_STATUSES:
            await turn._wait_for_other_run(newest.id, deadline)


def guard_thread(
    client: openai.AsyncOpenAI,
    thread_id: str,
    *,
    lock: ThreadLock,
    ttl: float = 30.0,
    timeout: float | None = 300.0,
    lease: Lease | None = None,
) -> ThreadGuard:
    """Guard one turn on an Assistants thread; ``async with`` yields a :class:`ThreadTurn`.

    On entry it takes the lease (key: ``thread_id``), then waits for the thread's active run,
    if any, to reach a terminal status (``requires_action`` is never taken as free), all
    within ``timeout``; when that runs out it raises :class:`~threadlock.ThreadBusy`.

    The Assistants API is deprecated; OpenAI's own service shut it down on 2026-08-26, and
    compatible servers still serve it.

    ``lease`` runs the turn under a lease the caller already holds on ``thread_id`` (an inbox
    batch's ``batch.lease``), as in :func:`guard_conversation`: no acquire, no release.
    """
    return ThreadGuard(client, thread_id, lock=lock, ttl=ttl, timeout=timeout, lease=lease)
