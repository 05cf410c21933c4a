"""Agents SDK sessions under a threadlock lease (re-exported by :mod:`threadlock.openai.agents`).

- :class:`LockedSession` wraps any agents ``Session``: its reads and writes happen under the
  lease of its key.
- :class:`LockedOpenAIConversationsSession` is an ``OpenAIConversationsSession`` whose key is
  its conversation, safe across processes.
- :func:`run_session` runs ``Runner.run`` with one of them, the whole run under one lease, with
  the same single retry budget as :func:`threadlock.openai.agents.run_agent`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import agents
import openai
from agents.memory import OpenAIConversationsSession

from threadlock._validate import check_key, check_timeout, check_ttl
from threadlock.openai.agents import (
    _Budget,
    _holding,
    _holds,
    _no_supplied,
    locked_run_config,
)
from threadlock.protocol import ThreadLock

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.result import RunResult

__all__ = ["LockedOpenAIConversationsSession", "LockedSession", "run_session"]


class _SessionLease:
    """How a locked session takes its lease: for one call, unless a run holds it already."""

    def __init__(self, lock: ThreadLock, key: str, ttl: float, timeout: float | None) -> None:
        if not isinstance(lock, ThreadLock):
            raise TypeError(f"lock must be a threadlock.ThreadLock, not {type(lock).__name__}")
        self.lock = lock
        self.key = check_key(key, "key")
        self.ttl = check_ttl(ttl)
        self.timeout = check_timeout(timeout)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if _holds(self.lock, self.key):
            yield
            return
        async with self.lock.hold(self.key, ttl=self.ttl, timeout=self.timeout):
            yield


class LockedSession:
    """Any agents ``Session`` whose reads and writes happen under the lease of ``key``.

    ``key`` defaults to ``session.session_id``. Each call outside a run takes the lease for
    that call; inside :func:`run_session` (which holds the lease for the whole run) the calls
    run under the run's lease. Only the ``Session`` protocol is exposed: a method of the
    wrapped session that the SDK would call around the lock is not forwarded.
    """

    def __init__(
        self,
        session: Any,
        *,
        lock: ThreadLock,
        key: str | None = None,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
    ) -> None:
        if not isinstance(session, agents.memory.Session):
            raise TypeError(f"session must be an agents Session, not {type(session).__name__}")
        self._session = session
        self.session_id: str = str(session.session_id)
        self.session_settings: Any = getattr(session, "session_settings", None)
        self._lease = _SessionLease(
            lock, key if key is not None else session.session_id, ttl, timeout
        )

    @property
    def wrapped(self) -> Any:
        """The wrapped session."""
        return self._session

    @property
    def key(self) -> str:
        return self._lease.key

    @property
    def lock(self) -> ThreadLock:
        return self._lease.lock

    @property
    def _ignore_ids_for_matching(self) -> bool:
        return bool(getattr(self._session, "_ignore_ids_for_matching", False))

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        async with self._lease.held():
            items: list[TResponseInputItem] = await self._session.get_items(limit)
            return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        async with self._lease.held():
            await self._session.add_items(items)

    async def pop_item(self) -> TResponseInputItem | None:
        async with self._lease.held():
            item: TResponseInputItem | None = await self._session.pop_item()
            return item

    async def clear_session(self) -> None:
        async with self._lease.held():
            await self._session.clear_session()


class LockedOpenAIConversationsSession(OpenAIConversationsSession):
    """An ``OpenAIConversationsSession`` that is safe across processes.

    The SDK's own session serialises calls within one instance only (an ``asyncio.Lock``).
    This one holds the lease of its conversation for each call (or runs under the lease of
    the :func:`run_session` run it is in), so it excludes every other process, and every
    :func:`~threadlock.openai.guard_conversation` turn on the same conversation. The
    conversation must exist (``conversation_id`` is required): a lazily created one could not
    be shared. It stays an ``OpenAIConversationsSession``, so the SDK treats it as one.
    """

    def __init__(
        self,
        *,
        conversation_id: str,
        lock: ThreadLock,
        openai_client: openai.AsyncOpenAI | None = None,
        ttl: float = 30.0,
        timeout: float | None = 300.0,
        session_settings: Any = None,
    ) -> None:
        check_key(conversation_id, "conversation_id")
        super().__init__(
            conversation_id=conversation_id,
            openai_client=openai_client,
            session_settings=session_settings,
        )
        self._lease = _SessionLease(lock, conversation_id, ttl, timeout)

    @property
    def key(self) -> str:
        return self._lease.key

    @property
    def lock(self) -> ThreadLock:
        return self._lease.lock

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        async with self._lease.held():
            return await super().get_items(limit)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        async with self._lease.held():
            await super().add_items(items)

    async def pop_item(self) -> TResponseInputItem | None:
        async with self._lease.held():
            return await super().pop_item()

    async def clear_session(self) -> None:
        async with self._lease.held():
            await super().clear_session()


async def run_session(
    agent: agents.Agent[Any],
    input: str | list[TResponseInputItem],
    *,
    session: LockedSession | LockedOpenAIConversationsSession,
    **kwargs: Any,
) -> RunResult:
    """``agents.Runner.run(agent, input, session=session, ...)`` under one lease.

    The lease of ``session.key`` is held for the whole run (reading the history, every model
    call, writing the new items), so two processes never interleave turns on one session.
    The models get the same single retry budget as :func:`run_agent`: the session's
    ``timeout``.
    """
    if not isinstance(session, LockedSession | LockedOpenAIConversationsSession):
        raise TypeError(
            "session must be a LockedSession or a LockedOpenAIConversationsSession, "
            f"not {type(session).__name__}"
        )
    _no_supplied(kwargs, ("conversation_id", "previous_response_id"))
    lease = session._lease
    budget = _Budget(lease.lock, lease.key, lease.timeout)
    done = False
    client = session._openai_client if isinstance(session, OpenAIConversationsSession) else None
    kwargs["run_config"] = locked_run_config(
        kwargs.get("run_config"),
        agent=agent,
        client=client,
        budget=budget,
        is_open=lambda: not done,
    )
    try:
        async with lease.lock.hold(lease.key, ttl=lease.ttl, timeout=lease.timeout):
            with _holding(lease.lock, lease.key):
                result: RunResult = await agents.Runner.run(agent, input, session=session, **kwargs)
                return result
    finally:
        done = True
