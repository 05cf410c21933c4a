"""The OpenAI Agents SDK (``openai-agents``) under a threadlock lease; the ``agents`` extra.

Nothing imports this module but its users: ``import threadlock`` and ``import threadlock.openai``
never load ``agents``. Importing it without the extra raises :class:`ImportError` naming
``pip install 'threadlock[agents]'``.

- :func:`run_agent` (also ``turn.run_agent``) runs ``agents.Runner.run`` inside a
  :func:`~threadlock.openai.guard_conversation` turn: with ``conversation_id=`` the guarded
  conversation, or on a ``previous_response_id`` chain (the head is read under the lease and
  moved to ``result.last_response_id`` with a compare-and-set).
- :func:`run_agent_streamed` (also ``turn.run_agent_streamed``) does the same for
  ``Runner.run_streamed``: its events are read inside the turn, and a block that exits first
  cancels the run before the lease is released (:class:`AgentStream`).
- :class:`LockedSession` wraps any agents ``Session``: its reads and writes happen under the
  lease of its key. :class:`LockedOpenAIConversationsSession` is an
  ``OpenAIConversationsSession`` whose key is its conversation, safe across processes.
  :func:`run_session` runs ``Runner.run`` with one of them, the whole run under one lease.
  They live in :mod:`threadlock.openai.agent_sessions` and import from here too.

One retry budget. Every model call of a run goes through a model wrapper that retries
``conversation_locked`` with backoff and jitter, all the calls of the run within one guard
``timeout`` counted from the run's first model call (then it raises
:class:`~threadlock.ThreadBusy`). The SDK's own retries are switched off for the run: its
``ModelSettings.retry`` gets ``ModelRetrySettings(max_retries=0)``, which disables both its
compatibility retries of ``conversation_locked`` (1, 2 and 4 s) and the openai client's
hidden retries, so the two never stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

try:
    import agents
    from agents.models.interface import Model, ModelProvider
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from agents.models.openai_provider import OpenAIProvider
    from agents.models.openai_responses import OpenAIResponsesModel
    from agents.retry import ModelRetrySettings
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "'agents' (openai-agents) is needed for threadlock.openai.agents; install it with "
        "`pip install 'threadlock[agents]'`"
    ) from _missing

import anyio
import openai

from threadlock._lazy import load_lazily
from threadlock.errors import LeaseLost, ThreadBusy, ThreadLockError
from threadlock.observe import backend_kind, observer_of
from threadlock.openai._clients import no_retries, retry_free
from threadlock.openai._threaded import ThreadedClient
from threadlock.openai.guard import ConversationTurn
from threadlock.openai.runs import Backoff, is_conversation_locked, sleep_within
from threadlock.openai.streaming import _CLOSE_TIMEOUT
from threadlock.protocol import ThreadLock

if TYPE_CHECKING:
    from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
    from agents.result import RunResult, RunResultStreaming
    from agents.stream_events import StreamEvent

    from threadlock.openai.agent_sessions import (
        LockedOpenAIConversationsSession,
        LockedSession,
        run_session,
    )

__all__ = [
    "NO_SDK_RETRIES",
    "AgentStream",
    "LockedModel",
    "LockedModelProvider",
    "LockedOpenAIConversationsSession",
    "LockedSession",
    "locked_run_config",
    "run_agent",
    "run_agent_streamed",
    "run_session",
]

#: What the guard puts in ``ModelSettings.retry`` for a run: no SDK retries at all.
NO_SDK_RETRIES = ModelRetrySettings(max_retries=0)
_NO_RETRY_SETTINGS = agents.ModelSettings(retry=NO_SDK_RETRIES)

# The (lock, key) pairs whose lease the current task holds for a whole run.
_held: contextvars.ContextVar[frozenset[tuple[int, str]]] = contextvars.ContextVar(
    "threadlock_agents_held", default=frozenset()
)


@contextlib.contextmanager
def _holding(lock: ThreadLock, key: str) -> Iterator[None]:
    token = _held.set(_held.get() | {(id(lock), key)})
    try:
        yield
    finally:
        _held.reset(token)


def _holds(lock: ThreadLock, key: str) -> bool:
    return (id(lock), key) in _held.get()


class _Budget:
    """The ``conversation_locked`` retries of one run: ``timeout`` from its first model call.

    Every model call of the run draws on the same deadline, so a run with many responses
    never waits for OpenAI's lock longer than ``timeout`` in all.
    """

    def __init__(self, lock: ThreadLock, key: str, timeout: float | None) -> None:
        self._lock = lock
        self._key = key
        self._timeout = timeout
        self._observer = observer_of(lock)
        self._kind = backend_kind(lock)
        self._deadline: float | None = None

    def start(self) -> tuple[Backoff, float | None]:
        if self._timeout is not None and self._deadline is None:
            self._deadline = anyio.current_time() + self._timeout
        return Backoff(0.5, 2.0), self._deadline

    async def wait_or_raise(
        self, error: openai.BadRequestError, backoff: Backoff, deadline: float | None
    ) -> None:
        """Sleep before the next try, or raise :class:`ThreadBusy` when the budget is spent."""
        delay = backoff.next_delay()
        self._observer.conversation_locked(self._key, delay)
        if not await sleep_within(delay, deadline):
            busy = ThreadBusy(self._key, delay)
            busy.add_note("conversation_locked retries ran out")
            self._observer.busy(self._kind, self._key, self._timeout or 0.0, "conversation_locked")
            raise busy from error


# The SDK's models whose only client is ``_client`` and that keep no connection of their own
# (not the websocket model, a subclass): a per-run copy of one is the same model.
_TWINNABLE = (OpenAIResponsesModel, OpenAIChatCompletionsModel)


def _retry_free_twin(model: Model) -> Model:
    """``model``, or a copy of it whose client is retry-free (see :mod:`._clients`).

    With ``max_retries=0`` in its settings, the SDK's ``_get_client()`` calls
    ``client.with_options(max_retries=0)`` before every request: a new client each time, and
    its platform probe in a worker thread. The copy's client is the cached no-retries copy of
    the model's client, whose ``with_options(max_retries=0)`` is itself, so requests reuse one
    client. Other models (a caller's own ``Model``, the websocket one) are used as they are.
    """
    if type(model) not in _TWINNABLE:
        return model
    client = getattr(model, "_client", None)
    if not isinstance(client, openai.AsyncOpenAI):
        return model
    twin = copy.copy(model)
    twin._client = no_retries(client)  # type: ignore[attr-defined]
    return twin


class LockedModel(Model):
    """An agents ``Model`` whose calls retry ``conversation_locked`` within one budget.

    It forwards everything else to the model it wraps, so the SDK sees the same model.
    """

    def __init__(self, inner: Model, budget: _Budget, is_open: Any) -> None:
        self._inner = inner
        self._budget = budget
        self._is_open = is_open
        self._target = _retry_free_twin(inner)

    @property
    def inner(self) -> Model:
        """The wrapped model."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _check_open(self) -> None:
        if not self._is_open():
            raise ThreadLockError(
                "this agents model belongs to a threadlock turn that has ended; "
                "run the agent inside the guard"
            )

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        backoff, deadline = self._budget.start()
        while True:
            self._check_open()
            try:
                return await self._target.get_response(*args, **kwargs)
            except openai.BadRequestError as error:
                if not is_conversation_locked(error):
                    raise
                await self._budget.wait_or_raise(error, backoff, deadline)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        return self._stream(args, kwargs)

    async def _stream(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[TResponseStreamEvent]:
        backoff, deadline = self._budget.start()
        while True:
            self._check_open()
            events = self._target.stream_response(*args, **kwargs)
            try:
                first = await events.__anext__()
            except StopAsyncIteration:
                return
            except openai.BadRequestError as error:
                if not is_conversation_locked(error):
                    raise
                await self._budget.wait_or_raise(error, backoff, deadline)
                continue
            yield first
            async for event in events:
                self._check_open()
                yield event
            return

    def get_retry_advice(self, request: Any) -> Any:
        return self._inner.get_retry_advice(request)

    async def _cleanup_on_run_end(self, owner: object) -> None:
        await self._inner._cleanup_on_run_end(owner)

    async def close(self) -> None:
        await self._inner.close()


class LockedModelProvider(ModelProvider):
    """A ``ModelProvider`` whose models are :class:`LockedModel` s."""

    def __init__(self, inner: ModelProvider, budget: _Budget, is_open: Any) -> None:
        self._inner = inner
        self._budget = budget
        self._is_open = is_open

    def get_model(self, model_name: str | None) -> Model:
        return LockedModel(self._inner.get_model(model_name), self._budget, self._is_open)

    async def aclose(self) -> None:
        await self._inner.aclose()


def locked_run_config(
    run_config: agents.RunConfig | dict[str, Any] | None,
    *,
    agent: agents.Agent[Any],
    client: openai.AsyncOpenAI | None,
    budget: _Budget,
    is_open: Any,
) -> agents.RunConfig:
    """The ``RunConfig`` of a guarded run: locked models and no SDK retries.

    Without a ``model_provider`` of the caller's, models come from ``client`` (the guard's).
    A ``Model`` instance given as ``run_config.model`` or as the agent's ``model`` is wrapped
    too (one set on a handoff target is the caller's to wrap with :class:`LockedModel`).
    """
    if run_config is None:
        config = agents.RunConfig()
    elif isinstance(run_config, dict):  # Runner.run takes the fields as a dict too
        config = agents.RunConfig(**run_config)
    elif isinstance(run_config, agents.RunConfig):
        config = run_config
    else:
        raise TypeError(
            f"run_config must be an agents.RunConfig or a dict, not {type(run_config).__name__}"
        )
    changes: dict[str, Any] = {}
    provider = config.model_provider
    if client is not None and type(provider) is agents.MultiProvider:
        provider = OpenAIProvider(openai_client=client, use_responses=True)
    changes["model_provider"] = LockedModelProvider(provider, budget, is_open)
    if isinstance(config.model, Model):
        changes["model"] = LockedModel(config.model, budget, is_open)
    elif config.model is None and isinstance(agent.model, Model):
        changes["model"] = LockedModel(agent.model, budget, is_open)
    settings = config.model_settings
    locked = dataclasses.replace(config, **changes)
    # Set after the copy: RunConfig(model_settings=...) re-validates them, about 1.5 ms a run,
    # and these are the caller's settings (already validated) or ours.
    if settings is None:
        locked.model_settings = _NO_RETRY_SETTINGS
    else:
        locked.model_settings = dataclasses.replace(settings, retry=NO_SDK_RETRIES)
    return locked


def _async_client(client: Any) -> tuple[openai.AsyncOpenAI | None, bool]:
    """The ``AsyncOpenAI`` for the models of a turn's run, and whether the run must close it.

    A sync client (the turn of :mod:`threadlock.sync`) gets an async twin with its settings.
    """
    if isinstance(client, openai.AsyncOpenAI):
        return client, False
    if isinstance(client, ThreadedClient) and isinstance(client.wrapped, openai.OpenAI):
        sync = client.wrapped
        twin = openai.AsyncOpenAI(
            api_key=sync.api_key,
            organization=sync.organization,
            project=sync.project,
            base_url=sync.base_url,
            timeout=sync.timeout,
            max_retries=0,
        )
        return retry_free(twin), True
    return None, False


def _no_supplied(kwargs: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if kwargs.get(name) is not None:
            raise ValueError(f"{name} is supplied by the guard; do not pass it")


@dataclasses.dataclass
class _Run:
    """What one agent run inside a turn needs around the SDK call: the wrapped run config's
    open flag, the client the guard made (closed when the run ends), and the chain head read
    under the lease (moved afterwards)."""

    turn: ConversationTurn
    client: openai.AsyncOpenAI | None
    owned: bool
    head: str | None
    done: bool = False

    @classmethod
    async def start(
        cls, turn: ConversationTurn, agent: agents.Agent[Any], kwargs: dict[str, Any]
    ) -> _Run:
        """Check the arguments and fill ``kwargs`` for ``Runner.run`` / ``run_streamed``."""
        if not isinstance(turn, ConversationTurn):
            raise TypeError(f"turn must be a ConversationTurn, not {type(turn).__name__}")
        _no_supplied(
            kwargs, ("conversation_id", "previous_response_id", "auto_previous_response_id")
        )
        client, owned = _async_client(turn._client)
        run = cls(turn, client, owned, None)
        kwargs["run_config"] = locked_run_config(
            kwargs.get("run_config"),
            agent=agent,
            client=client,
            budget=_Budget(turn._lock, turn.key, turn._timeout),
            is_open=lambda: not run.done,
        )
        if turn.chain is not None:
            run.head = await turn._lock.chain_head(turn.chain)  # type: ignore[attr-defined]
            kwargs["previous_response_id"] = run.head
        elif turn.conversation_id is not None:
            kwargs["conversation_id"] = turn.conversation_id
        return run

    async def end(self) -> None:
        """No model call from now on; close the client the guard made (shielded)."""
        if self.done:
            return
        self.done = True
        if self.owned:
            assert self.client is not None
            with anyio.CancelScope(shield=True):
                await self.client.close()

    async def advance(self, new_head: str | None) -> None:
        """On a chain: move the head to the run's last response (compare-and-set)."""
        turn = self.turn
        if turn.chain is None or new_head is None or new_head == self.head:
            return
        lock: Any = turn._lock
        lease = turn.lease
        if not await lock.advance_chain(lease, self.head, new_head):
            detail = "the chain head moved under the lease"
            observer_of(lock).lost(backend_kind(lock), turn.key, lease.fence, detail)
            raise LeaseLost(turn.key, lease.fence, detail)


async def run_agent(
    turn: ConversationTurn,
    agent: agents.Agent[Any],
    input: str | list[TResponseInputItem],
    **kwargs: Any,
) -> RunResult:
    """``agents.Runner.run(agent, input, ...)`` inside ``turn`` (also ``turn.run_agent``).

    On a conversation turn the run gets ``conversation_id=turn.conversation_id``. On a chain
    turn it gets ``previous_response_id=`` the chain head, read under the lease, and the head
    moves to ``result.last_response_id`` afterwards (compare-and-set under the lease; a head
    that moved meanwhile raises :class:`~threadlock.LeaseLost`). Other keyword arguments go to
    ``Runner.run``; ``run_config`` is kept, with its models wrapped and the SDK's retries off
    (see the module doc).
    """
    run = await _Run.start(turn, agent, kwargs)
    try:
        with _holding(turn._lock, turn.key):
            result: RunResult = await agents.Runner.run(agent, input, **kwargs)
    finally:
        await run.end()
    await run.advance(result.last_response_id)
    return result


class AgentStream:
    """What ``turn.run_agent_streamed(...)`` returns: the SDK's ``RunResultStreaming``, read
    inside its turn.

    :meth:`stream_events` passes the SDK's events through while the turn is open (afterwards
    it raises :class:`~threadlock.openai.streaming.StreamOutsideTurn`). When the events end,
    the run is over: a chain head moves to the run's last response. If the turn's block exits
    first (an exception, a client that went away), the guard cancels the run and waits for its
    task to stop, shielded and bounded, before it releases the lease, so no model call of the
    run outlives the lease. Other attributes (``final_output``, ``new_items``,
    ``last_response_id``, ...) are the SDK result's; :attr:`result` is the result itself.
    """

    def __init__(self, result: RunResultStreaming, run: _Run) -> None:
        self._result = result
        self._run = run
        self._streams = run.turn._streams
        self._closed = False
        self._streams.add(self)

    @property
    def result(self) -> RunResultStreaming:
        """The SDK's own streamed result (read its events through :meth:`stream_events`)."""
        return self._result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        """The run's events, as ``RunResultStreaming.stream_events()`` gives them."""
        self._streams.check_open()
        async for event in self._result.stream_events():
            self._streams.check_open()
            yield event
        await self._finish()

    async def _finish(self) -> None:
        """The events ended: the run is over; move the chain head."""
        if self._closed:
            return
        await self.aclose()
        if not self._result.is_complete or self._result._stored_exception is not None:
            return
        await self._run.advance(self._result.last_response_id)

    async def aclose(self) -> None:
        """Stop the run if it is still going, and wait for its task (shielded, bounded)."""
        if self._closed:
            return
        self._closed = True
        self._streams.discard(self)
        task = self._result.run_loop_task
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CLOSE_TIMEOUT
            if task is not None and not task.done():
                self._result.cancel()
                await asyncio.wait([task])
            await self._run.end()


async def run_agent_streamed(
    turn: ConversationTurn,
    agent: agents.Agent[Any],
    input: str | list[TResponseInputItem],
    **kwargs: Any,
) -> AgentStream:
    """``agents.Runner.run_streamed(agent, input, ...)`` inside ``turn`` (also
    ``turn.run_agent_streamed``); read it with ``async for event in run.stream_events()``
    inside the block.

    The same arguments and guarantees as :func:`run_agent`; the lease is held until the events
    end or the block exits, whichever comes first (see :class:`AgentStream`).
    """
    run = await _Run.start(turn, agent, kwargs)
    try:
        with _holding(turn._lock, turn.key):  # the run's task inherits this context
            result = agents.Runner.run_streamed(agent, input, **kwargs)
    except BaseException:
        await run.end()
        raise
    return AgentStream(result, run)


_MOVED_TO_SESSIONS = dict.fromkeys(
    ("LockedOpenAIConversationsSession", "LockedSession", "run_session"),
    "threadlock.openai.agent_sessions",
)


def __getattr__(name: str) -> Any:
    """The sessions' names, which live in :mod:`threadlock.openai.agent_sessions`, import from
    here too (loaded on first use, as that module imports this one)."""
    return load_lazily(__name__, name, _MOVED_TO_SESSIONS)
