"""``guard_conversation``, and what it shares with ``guard_thread``: one turn at a time.

Both guards (``guard_thread`` lives in :mod:`threadlock.openai.threads`) hold the lease for
the whole turn (renewed while runs execute, through :meth:`threadlock.ThreadLock.hold`), wait
before the body runs for any run or background response still active on the conversation,
record every run or background response they start in the run registry before the create call
returns, and always release.

Create calls go through ``client.with_options(max_retries=0)`` (built once per client, see
:mod:`threadlock.openai._clients`): the SDK's own retries send no idempotency key, so a retried
create could post twice or collide with its own run. The guards retry what is safe to retry
themselves, and reconcile what is not (a run is found again by the ``threadlock_token``
metadata tag the guard puts on it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
import openai

from threadlock._lazy import load_lazily
from threadlock._lease import Lease
from threadlock._validate import check_key, check_timeout, check_ttl
from threadlock.errors import LeaseLost, ThreadBusy
from threadlock.observe import backend_kind, observer_of
from threadlock.openai._clients import no_retries
from threadlock.openai._recorded import create_recorded
from threadlock.openai._threaded import ThreadedClient
from threadlock.openai.runs import (
    ACTIVE_RESPONSE_STATUSES,
    Backoff,
    is_conversation_locked,
    sleep_within,
    status_of,
    wait_until_done,
)
from threadlock.openai.streaming import GuardedStream, GuardedStreamManager, TurnStreams
from threadlock.protocol import ChainStore, RunKind, RunRecord, RunRegistry, ThreadLock

if TYPE_CHECKING:
    from openai.lib.streaming.responses import ResponseStreamEvent
    from openai.types.responses import ParsedResponse, Response
    from openai.types.responses import ResponseStreamEvent as RawResponseStreamEvent

    from threadlock.hold import Hold
    from threadlock.observe import Scope
    from threadlock.openai.threads import ThreadGuard, ThreadTurn, guard_thread

__all__ = [
    "RUN_TOKEN_METADATA",
    "ConversationGuard",
    "ConversationTurn",
    "ThreadGuard",
    "ThreadTurn",
    "guard_conversation",
    "guard_thread",
]

#: The metadata key the guard sets on every run it creates, to find it again after a lost
#: response instead of creating a second one.
RUN_TOKEN_METADATA = "threadlock_token"  # noqa: S105 - a metadata key, not a secret


# Lock classes that passed _check_registry (or, second item, the ChainStore check too): an
# isinstance on a runtime-checkable protocol costs ~10 us, more than the rest of a guard's
# checks, and a class that has the methods gives them to every instance.
_CHECKED: set[type] = set()
_CHECKED_CHAINS: set[type] = set()


def _check_registry(lock: object) -> None:
    if type(lock) in _CHECKED:
        return
    if not isinstance(lock, ThreadLock):
        raise TypeError(f"lock must be a threadlock.ThreadLock, not {type(lock).__name__}")
    if not isinstance(lock, RunRegistry):
        raise TypeError(
            f"lock must also be a threadlock.RunRegistry to guard OpenAI turns; "
            f"{type(lock).__name__} does not track runs"
        )
    _CHECKED.add(type(lock))


def _check_client(client: object) -> None:
    if isinstance(client, ThreadedClient):  # a sync client, driven by threadlock.sync
        return
    if not isinstance(client, openai.AsyncOpenAI):
        raise TypeError(f"client must be an openai.AsyncOpenAI, not {type(client).__name__}")


TurnT = TypeVar("TurnT", bound="_Turn")
T = TypeVar("T")
R = TypeVar("R")


class _Turn:
    """What both turn objects share: the lease, the registry, the time budget."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        key: str,
        lock: ThreadLock,
        hold: Hold | _Borrowed,
        timeout: float | None,
    ) -> None:
        self._client = client
        self._api = no_retries(client)
        self._key = key
        self._lock = lock
        self._registry: RunRegistry = lock  # type: ignore[assignment]  # checked on entry
        self._hold = hold
        self._timeout = timeout
        self._observer = observer_of(lock)
        self._kind = backend_kind(lock)
        self._started = anyio.current_time()  # the guard sets when the turn was entered
        self._streams = TurnStreams(key)  # closed by the guard before it releases the lease

    @property
    def key(self) -> str:
        """The lease key: the conversation or thread id, or the chain key."""
        return self._key

    @property
    def lease(self) -> Lease:
        """The current lease (renewals replace it; ``fence`` and ``token`` stay the same)."""
        return self._hold.lease

    def _deadline(self) -> float | None:
        return None if self._timeout is None else anyio.current_time() + self._timeout

    def _busy(self, what: str, retry_after: float = 1.0, reason: str = "run") -> ThreadBusy:
        """The :class:`ThreadBusy` to raise (reported to the observer as ``reason``)."""
        error = ThreadBusy(self._key, retry_after)
        error.add_note(what)
        waited = anyio.current_time() - self._started
        self._observer.busy(self._kind, self._key, waited, reason)
        return error

    async def _track(self, kind: RunKind, run_id: str, thread_id: str) -> None:
        lease = self.lease
        owner = getattr(self._lock, "owner", "")
        record = RunRecord(self._key, kind, run_id, thread_id, time.time(), lease.fence, owner)
        await self._registry.track_run(record)

    async def _untrack(self, run_id: str) -> None:
        await self._registry.untrack_run(self._key, run_id)


class _Borrowed:
    """A lease the caller already holds (an inbox batch's): the guard runs its turn under it
    and neither acquires, renews nor releases it. Entering checks that the lock still shows
    this lease on the key, and raises :class:`~threadlock.LeaseLost` otherwise."""

    def __init__(self, lock: ThreadLock, lease: Lease) -> None:
        self._lock = lock
        self.lease = lease

    async def __aenter__(self) -> Lease:
        info = await self._lock.inspect(self.lease.key)
        if info is None or info.fence != self.lease.fence:
            raise LeaseLost(self.lease.key, self.lease.fence, "the borrowed lease is not held")
        return self.lease

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _check_lease(lease: object, key: str) -> Lease:
    if not isinstance(lease, Lease):
        raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
    if lease.key != key:
        raise ValueError(f"lease must be a lease on {key!r}, got one on {lease.key!r}")
    return lease


class _Guard(Generic[TurnT]):
    """Enter: take the lease (or check a borrowed one), then wait for what is still running.
    Exit: release (a borrowed lease stays with its holder)."""

    _api = "turn"  # the ``api`` told to Observer.turn_scope

    def __init__(
        self,
        lock: ThreadLock,
        key: str,
        ttl: float,
        timeout: float | None,
        lease: Lease | None = None,
    ) -> None:
        self._lock = lock
        self._key = key
        self._timeout = timeout
        if lease is not None:
            self._hold: Hold | _Borrowed = _Borrowed(lock, _check_lease(lease, key))
        else:
            self._hold = lock.hold(key, ttl=ttl, timeout=timeout)  # type: ignore[assignment]
        self._turn: TurnT | None = None
        self._scope: Scope | None = None

    def _make_turn(self) -> TurnT:
        raise NotImplementedError

    async def _before_body(self, turn: TurnT, deadline: float | None) -> None:
        raise NotImplementedError

    def _end_scope(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> TurnT:
        started = anyio.current_time()
        deadline = None if self._timeout is None else started + self._timeout
        scope = observer_of(self._lock).turn_scope(self._api, backend_kind(self._lock), self._key)
        if scope is not None:
            scope.__enter__()
            self._scope = scope
        try:
            await self._hold.__aenter__()
        except BaseException as error:
            self._end_scope(type(error), error, error.__traceback__)
            raise
        try:
            turn = self._make_turn()
            turn._started = started
            await self._before_body(turn, deadline)
        except BaseException as error:
            try:
                await self._hold.__aexit__(*sys.exc_info())
            except BaseException as outcome:
                self._end_scope(type(outcome), outcome, outcome.__traceback__)
                raise
            self._end_scope(type(error), error, error.__traceback__)
            raise
        self._turn = turn
        return turn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The guard never swallows the body's exception (hence ``-> None``): it comes out as
        # itself, or as LeaseLost / TimeoutError from the hold.
        turn, self._turn = self._turn, None
        if turn is not None:
            try:
                await turn._streams.close_all()  # shielded: nothing streams past the lease
            except BaseException:
                await self._exit_hold(*sys.exc_info())
                raise
        await self._exit_hold(exc_type, exc, tb)

    async def _exit_hold(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._scope is None:
            await self._hold.__aexit__(exc_type, exc, tb)
            return
        try:
            await self._hold.__aexit__(exc_type, exc, tb)
        except BaseException as outcome:
            self._end_scope(type(outcome), outcome, outcome.__traceback__)
            raise
        self._end_scope(exc_type, exc, tb)


# -- Responses + Conversations -------------------------------------------------------------


class ConversationTurn(_Turn):
    """One turn on a conversation (or a ``previous_response_id`` chain), inside the lease."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        key: str,
        lock: ThreadLock,
        hold: Hold | _Borrowed,
        timeout: float | None,
        conversation_id: str | None,
        chain: str | None,
    ) -> None:
        super().__init__(client, key, lock, hold, timeout)
        self.conversation_id = conversation_id
        self.chain = chain

    @overload
    async def create(
        self, *, stream: Literal[True], **kwargs: Any
    ) -> GuardedStream[RawResponseStreamEvent]: ...

    @overload
    async def create(self, *, stream: Literal[False] = ..., **kwargs: Any) -> Response: ...

    @overload
    async def create(
        self, *, stream: bool, **kwargs: Any
    ) -> Response | GuardedStream[RawResponseStreamEvent]: ...

    async def create(
        self, *, stream: bool = False, **kwargs: Any
    ) -> Response | GuardedStream[RawResponseStreamEvent]:
        """``client.responses.create(conversation=..., **kwargs)`` inside the lease.

        It retries ``conversation_locked`` (a process outside the lock is busy on the
        conversation) with backoff and jitter until the guard's ``timeout``, then raises
        :class:`~threadlock.ThreadBusy`. A 400 means the request was refused, so a retry never
        sends the input twice; other errors are raised as they are (the SDK's own retries are
        off, because they could send it twice). With ``background=True`` the response is
        recorded in the run registry before this returns; :meth:`wait` waits for it, and the
        next turn waits for it too. On a chain, ``previous_response_id`` is supplied from the
        chain head, which then moves to this response (compare-and-set under the lease).

        With ``stream=True`` it returns a :class:`~threadlock.openai.GuardedStream` of the raw
        events, readable inside this block only (the guard closes it on exit); on a chain the
        head moves when ``response.completed`` is read.
        """
        head = await self._prepare(kwargs, streaming=stream)
        if stream:
            kwargs["stream"] = True
            raw = await self._retrying_lock(lambda: self._api.responses.create(**kwargs))
            return GuardedStream(raw, self._streams, self._chain_mover(head))
        response: Response = await self._retrying_lock(
            lambda: self._recording(lambda: self._api.responses.create(**kwargs), kwargs)
        )
        await self._finish(response, head)
        return response

    async def parse(self, **kwargs: Any) -> ParsedResponse[Any]:
        """``client.responses.parse(conversation=..., **kwargs)`` (structured outputs, e.g.
        ``text_format=MyModel``) inside the lease, exactly as :meth:`create`."""
        head = await self._prepare(kwargs, streaming=False)
        response: ParsedResponse[Any] = await self._retrying_lock(
            lambda: self._recording(lambda: self._api.responses.parse(**kwargs), kwargs)
        )
        await self._finish(response, head)
        return response

    def stream(self, **kwargs: Any) -> GuardedStreamManager[ResponseStreamEvent[Any]]:
        """``client.responses.stream(conversation=..., **kwargs)`` inside the lease.

        Use it as the SDK's: ``async with turn.stream(model=..., input=...) as stream:``, then
        ``async for event in stream`` or ``await stream.get_final_response()``. Opening it
        retries ``conversation_locked`` as :meth:`create` does. The stream reads only inside
        the guard's block, and the guard closes it on exit; leaving the ``async with`` closes
        it too (a response not read to its end is then cancelled on OpenAI's side). On a
        chain, the head moves to the streamed response when ``response.completed`` is read;
        an interrupted stream leaves the head where it was.
        """
        if "response_id" in kwargs:
            raise ValueError("response_id (resuming a background stream) is not supported")

        async def open_stream() -> GuardedStream[ResponseStreamEvent[Any]]:
            head = await self._prepare(kwargs, streaming=True)

            async def enter() -> Any:
                return await self._api.responses.stream(**kwargs).__aenter__()

            inner = await self._retrying_lock(enter)
            return GuardedStream(inner, self._streams, self._chain_mover(head))

        return GuardedStreamManager(open_stream)

    async def _prepare(self, kwargs: dict[str, Any], *, streaming: bool) -> str | None:
        """Check ``kwargs``, add what the guard supplies; returns the chain head (or None)."""
        if not self._streams.open:
            raise RuntimeError("this turn has ended: its guard block exited")
        for supplied in ("conversation", "previous_response_id"):
            if supplied in kwargs and (supplied == "conversation" or self.chain is not None):
                raise ValueError(f"{supplied} is supplied by the guard; do not pass it")
        if streaming and kwargs.get("background"):
            raise ValueError(
                "background=True with streaming is not supported by the guard; "
                "stream in the foreground, or create in the background without stream"
            )
        if self.conversation_id is not None:
            kwargs["conversation"] = self.conversation_id
        if self.chain is None:
            return None
        head = await self._chains().chain_head(self.chain)
        if head is not None:
            kwargs["previous_response_id"] = head
        return head

    def _chains(self) -> ChainStore:
        return self._lock  # type: ignore[return-value]  # checked on entry

    async def _advance_chain(self, head: str | None, response_id: str) -> None:
        assert self.chain is not None
        if not await self._chains().advance_chain(self.lease, head, response_id):
            detail = "the chain head moved under the lease"
            self._observer.lost(self._kind, self._key, self.lease.fence, detail)
            raise LeaseLost(self._key, self.lease.fence, detail)

    def _chain_mover(self, head: str | None) -> Callable[[str], Awaitable[None]] | None:
        """What a stream calls on ``response.completed``: move the chain head (on a chain)."""
        if self.chain is None:
            return None

        async def move(response_id: str) -> None:
            await self._advance_chain(head, response_id)

        return move

    async def _recording(self, call: Callable[[], Awaitable[R]], kwargs: dict[str, Any]) -> R:
        """``await call()``; with ``background=True``, the response is recorded in the run
        registry in the same shielded step (:func:`~threadlock.openai._recorded.create_recorded`),
        so a cancel that lands while the answer is in flight cannot leave it unrecorded."""
        if not kwargs.get("background"):
            return await call()
        return await create_recorded(call, self._track_response, "responses.create")

    async def _track_response(self, response: Any) -> None:
        if status_of(response) in ACTIVE_RESPONSE_STATUSES:
            await self._track("response", response.id, self.conversation_id or self._key)

    async def _finish(self, response: Response, head: str | None) -> None:
        """After a create (a background response is recorded already): move the chain head."""
        if self.chain is not None:
            await self._advance_chain(head, response.id)

    async def _retrying_lock(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, retrying ``conversation_locked`` until the guard's timeout."""
        deadline = self._deadline()
        backoff = Backoff(0.5, 2.0)
        while True:
            try:
                return await call()
            except openai.BadRequestError as error:
                if not is_conversation_locked(error):
                    raise
                delay = backoff.next_delay()
                self._observer.conversation_locked(self._key, delay)
                if not await sleep_within(delay, deadline):
                    raise self._busy(
                        "conversation_locked retries ran out", delay, "conversation_locked"
                    ) from error

    async def wait(self, response: str | Response) -> Response:
        """Wait for a background response to end (bounded by the guard's ``timeout``).

        A response that ended is removed from the run registry.
        """
        response_id = response if isinstance(response, str) else response.id
        done: Response = await wait_until_done(
            lambda: self._client.responses.with_raw_response.retrieve(response_id),
            what="response",
            key=self._key,
            active=ACTIVE_RESPONSE_STATUSES,
            deadline=self._deadline(),
            observer=self._observer,
        )
        if status_of(done) not in ACTIVE_RESPONSE_STATUSES:
            await self._untrack(response_id)
        return done

    async def run_agent(self, agent: Any, input: Any, **kwargs: Any) -> Any:
        """``agents.Runner.run(agent, input, ...)`` inside this turn (the ``agents`` extra).

        See :func:`threadlock.openai.agents.run_agent`: ``conversation_id=`` (or the chain's
        ``previous_response_id=``) is supplied, and ``conversation_locked`` is retried within
        the guard's ``timeout``, with the Agents SDK's own retries off.
        """
        from threadlock.openai.agents import run_agent

        return await run_agent(self, agent, input, **kwargs)

    async def run_agent_streamed(self, agent: Any, input: Any, **kwargs: Any) -> Any:
        """``agents.Runner.run_streamed(agent, input, ...)`` inside this turn (the ``agents``
        extra); read ``async for event in run.stream_events()`` inside the block.

        See :func:`threadlock.openai.agents.run_agent_streamed`: the lease is held until the
        events end, and a block that exits first cancels the run before the release.
        """
        from threadlock.openai.agents import run_agent_streamed

        return await run_agent_streamed(self, agent, input, **kwargs)


class ConversationGuard(_Guard[ConversationTurn]):
    """The async context manager returned by :func:`guard_conversation`."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        conversation_id: str | None,
        *,
        lock: ThreadLock,
        ttl: float,
        timeout: float | None,
        chain: str | None,
        lease: Lease | None = None,
    ) -> None:
        _check_client(client)
        _check_registry(lock)
        if conversation_id is None and chain is None:
            raise ValueError("conversation_id or chain must be given")
        if conversation_id is not None:
            check_key(conversation_id, "conversation_id")
        if chain is not None:
            check_key(chain, "chain")
            if type(lock) not in _CHECKED_CHAINS:
                if not isinstance(lock, ChainStore):
                    raise TypeError(
                        f"lock must be a threadlock.ChainStore to guard a chain; "
                        f"{type(lock).__name__} does not keep chain heads"
                    )
                _CHECKED_CHAINS.add(type(lock))
        key = chain if chain is not None else conversation_id
        assert key is not None
        super().__init__(lock, key, check_ttl(ttl), check_timeout(timeout), lease)
        self._client = client
        self._conversation_id = conversation_id
        self._chain = chain
        self._api = "chain" if chain is not None else "conversation"

    def _make_turn(self) -> ConversationTurn:
        return ConversationTurn(
            self._client,
            self._key,
            self._lock,
            self._hold,
            self._timeout,
            self._conversation_id,
            self._chain,
        )

    async def _before_body(self, turn: ConversationTurn, deadline: float | None) -> None:
        registry: RunRegistry = self._lock  # type: ignore[assignment]
        for record in await registry.tracked_runs(self._key):
            if record.kind != "response":
                continue
            try:
                done = await wait_until_done(
                    lambda rid=record.run_id: self._client.responses.with_raw_response.retrieve(
                        rid
                    ),
                    what="response",
                    key=self._key,
                    active=ACTIVE_RESPONSE_STATUSES,
                    deadline=deadline,
                    observer=turn._observer,
                )
            except openai.NotFoundError:
                await registry.untrack_run(self._key, record.run_id)
                continue
            if status_of(done) in ACTIVE_RESPONSE_STATUSES:
                raise turn._busy(f"background response {record.run_id} is still running")
            await registry.untrack_run(self._key, record.run_id)


def guard_conversation(
    client: openai.AsyncOpenAI,
    conversation_id: str | None,
    *,
    lock: ThreadLock,
    ttl: float = 30.0,
    timeout: float | None = 300.0,
    chain: str | None = None,
    lease: Lease | None = None,
) -> ConversationGuard:
    """Guard one turn on an OpenAI conversation; ``async with`` yields a
    :class:`ConversationTurn`.

    The lease key is ``conversation_id`` (so ``lock.inspect(conversation_id)`` shows the
    turn), or ``chain`` for a ``previous_response_id`` chain, where the guard supplies
    ``previous_response_id`` itself (``conversation_id`` may then be ``None``). ``timeout``
    bounds everything waited for before the body runs (the lock, then background responses
    still running) and the ``conversation_locked`` retries; when it runs out the guard raises
    :class:`~threadlock.ThreadBusy`. ``lock`` must also be a
    :class:`~threadlock.RunRegistry` (and a :class:`~threadlock.ChainStore` for chains).

    ``lease`` runs the turn under a lease the caller already holds on the key, such as an
    inbox batch's ``batch.lease``: the guard then neither acquires nor releases (its holder
    renews it; ``ttl`` is unused), and still waits for active runs, records the runs it starts
    and moves the chain head under that lease's fence. Entering raises
    :class:`~threadlock.LeaseLost` if the lock no longer shows that lease on the key.
    """
    return ConversationGuard(
        client, conversation_id, lock=lock, ttl=ttl, timeout=timeout, chain=chain, lease=lease
    )


_MOVED_TO_THREADS = dict.fromkeys(
    ("ThreadGuard", "ThreadTurn", "guard_thread"), "threadlock.openai.threads"
)


def __getattr__(name: str) -> Any:
    """The thread guard's names, which live in :mod:`threadlock.openai.threads`, still import
    from here (loaded on first use, as that module imports this one)."""
    return load_lazily(__name__, name, _MOVED_TO_THREADS)
