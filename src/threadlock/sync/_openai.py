"""The OpenAI guards and recovery for a sync ``openai.OpenAI`` client.

They are the async guards of :mod:`threadlock.openai`, run on the process's loop with the
sync client behind an adapter that makes each of its calls in a worker thread. The retries
on ``conversation_locked``, the chain heads, the run registry and the waits for runs are
therefore the async code's; the blocking turn objects only forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import openai

from threadlock.openai import guard as _guard
from threadlock.openai import recovery as _recovery
from threadlock.openai._threaded import ThreadedClient
from threadlock.sync import _runtime
from threadlock.sync._bridge import Bridge
from threadlock.sync._lock import SyncThreadLock

if TYPE_CHECKING:
    from openai.types.beta.threads import Message, Run
    from openai.types.responses import Response

    from threadlock._lease import Lease

__all__ = [
    "SyncConversationGuard",
    "SyncConversationTurn",
    "SyncThreadGuard",
    "SyncThreadTurn",
    "guard_conversation",
    "guard_thread",
    "recover_orphaned_runs",
]

AsyncTurnT = TypeVar("AsyncTurnT", bound="_guard._Turn")


def _threaded(client: object) -> openai.AsyncOpenAI:
    if not isinstance(client, openai.OpenAI):
        raise TypeError(f"client must be an openai.OpenAI, not {type(client).__name__}")
    return cast("openai.AsyncOpenAI", ThreadedClient(client))


def _backend(lock: object) -> Any:
    if not isinstance(lock, SyncThreadLock):
        raise TypeError(f"lock must be a threadlock.sync.SyncThreadLock, not {type(lock).__name__}")
    return lock.backend


class _SyncTurn(Generic[AsyncTurnT]):
    def __init__(self, bridge: Bridge[Any], turn: AsyncTurnT) -> None:
        self._bridge = bridge
        self._turn = turn

    @property
    def key(self) -> str:
        """The lease key: the conversation or thread id, or the chain key."""
        return self._turn.key

    @property
    def lease(self) -> Lease:
        """The current lease (renewals replace it; ``fence`` and ``token`` stay the same)."""
        return self._turn.lease


class SyncConversationTurn(_SyncTurn["_guard.ConversationTurn"]):
    """The blocking :class:`threadlock.openai.ConversationTurn`."""

    @property
    def conversation_id(self) -> str | None:
        return self._turn.conversation_id

    @property
    def chain(self) -> str | None:
        return self._turn.chain

    def create(self, **kwargs: Any) -> Response:
        """See :meth:`threadlock.openai.ConversationTurn.create` (without ``stream``)."""
        if kwargs.pop("stream", False):
            raise ValueError(
                "stream=True is not supported by the blocking guard; stream with the async "
                "guard, threadlock.openai.guard_conversation"
            )
        return cast("Response", self._bridge.call(self._turn.create, **kwargs))

    def wait(self, response: str | Response) -> Response:
        """See :meth:`threadlock.openai.ConversationTurn.wait`."""
        return self._bridge.call(self._turn.wait, response)

    def run_agent(self, agent: Any, input: Any, **kwargs: Any) -> Any:
        """The blocking ``turn.run_agent`` (the ``agents`` extra): the sync form of
        ``agents.Runner.run_sync`` for a guarded turn.

        ``Runner.run`` runs on threadlock.sync's loop while this thread waits, so the lease is
        renewed meanwhile; see :func:`threadlock.openai.agents.run_agent`. The models use an
        ``AsyncOpenAI`` built from the sync client's settings (key, base URL, organization,
        project, timeout), unless ``run_config`` names a ``model_provider``.
        """
        return self._bridge.call(self._turn.run_agent, agent, input, **kwargs)


class SyncThreadTurn(_SyncTurn["_guard.ThreadTurn"]):
    """The blocking :class:`threadlock.openai.ThreadTurn`."""

    @property
    def thread_id(self) -> str:
        return self._turn.thread_id

    def add_message(self, content: Any, *, role: str = "user", **kwargs: Any) -> Message:
        """See :meth:`threadlock.openai.ThreadTurn.add_message`."""
        return self._bridge.call(self._turn.add_message, content, role=role, **kwargs)

    def create(self, **kwargs: Any) -> Run:
        """See :meth:`threadlock.openai.ThreadTurn.create`."""
        return self._bridge.call(self._turn.create, **kwargs)

    def wait(self, run: str | Run) -> Run:
        """See :meth:`threadlock.openai.ThreadTurn.wait`."""
        return self._bridge.call(self._turn.wait, run)

    def create_and_poll(self, **kwargs: Any) -> Run:
        """See :meth:`threadlock.openai.ThreadTurn.create_and_poll`."""
        return self._bridge.call(self._turn.create_and_poll, **kwargs)

    def submit_tool_outputs(self, run: str | Run, tool_outputs: Any, **kwargs: Any) -> Run:
        """See :meth:`threadlock.openai.ThreadTurn.submit_tool_outputs`."""
        return self._bridge.call(self._turn.submit_tool_outputs, run, tool_outputs, **kwargs)


class SyncConversationGuard:
    """The blocking context manager returned by :func:`guard_conversation`."""

    def __init__(self, guard: _guard.ConversationGuard) -> None:
        self._bridge: Bridge[_guard.ConversationTurn] = Bridge(guard)

    def __enter__(self) -> SyncConversationTurn:
        return SyncConversationTurn(self._bridge, self._bridge.enter())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bridge.exit(exc_type, exc, tb)


class SyncThreadGuard:
    """The blocking context manager returned by :func:`guard_thread`."""

    def __init__(self, guard: _guard.ThreadGuard) -> None:
        self._bridge: Bridge[_guard.ThreadTurn] = Bridge(guard)

    def __enter__(self) -> SyncThreadTurn:
        return SyncThreadTurn(self._bridge, self._bridge.enter())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bridge.exit(exc_type, exc, tb)


def guard_conversation(
    client: openai.OpenAI,
    conversation_id: str | None,
    *,
    lock: SyncThreadLock,
    ttl: float = 30.0,
    timeout: float | None = 300.0,
    chain: str | None = None,
    lease: Lease | None = None,
) -> SyncConversationGuard:
    """:func:`threadlock.openai.guard_conversation` for a sync client; ``with`` yields a
    :class:`SyncConversationTurn`.

    The lease is renewed on the loop while the calling thread is blocked in an HTTP call. A
    lease lost meanwhile is raised as :class:`~threadlock.LeaseLost` by the call in
    progress once its HTTP request has returned, by the next call, or at the end of the
    block.

    ``lease`` runs the turn under a lease the caller already holds on the key, such as a
    sync inbox batch's ``batch.lease``: the guard then neither acquires, renews nor releases
    it (its holder does), and entering raises :class:`~threadlock.LeaseLost` if the lock no
    longer shows that lease on the key.
    """
    guard = _guard.guard_conversation(
        _threaded(client),
        conversation_id,
        lock=_backend(lock),
        ttl=ttl,
        timeout=timeout,
        chain=chain,
        lease=lease,
    )
    return SyncConversationGuard(guard)


def guard_thread(
    client: openai.OpenAI,
    thread_id: str,
    *,
    lock: SyncThreadLock,
    ttl: float = 30.0,
    timeout: float | None = 300.0,
    lease: Lease | None = None,
) -> SyncThreadGuard:
    """:func:`threadlock.openai.guard_thread` for a sync client; ``with`` yields a
    :class:`SyncThreadTurn` (see :func:`guard_conversation` for a lost lease and for
    ``lease``, a lease the caller already holds on ``thread_id``)."""
    guard = _guard.guard_thread(
        _threaded(client), thread_id, lock=_backend(lock), ttl=ttl, timeout=timeout, lease=lease
    )
    return SyncThreadGuard(guard)


def recover_orphaned_runs(
    client: openai.OpenAI,
    *,
    lock: SyncThreadLock,
    max_age: float = 300.0,
    thread_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    concurrency: int = 4,
) -> _recovery.RecoveryReport:
    """:func:`threadlock.openai.recover_orphaned_runs` for a sync client (same arguments)."""
    threaded = _threaded(client)
    backend = _backend(lock)
    ids = None if thread_ids is None else list(thread_ids)

    async def recover() -> _recovery.RecoveryReport:
        return await _recovery.recover_orphaned_runs(
            threaded,
            lock=backend,
            max_age=max_age,
            thread_ids=ids,
            dry_run=dry_run,
            concurrency=concurrency,
        )

    return _runtime.run(recover)
