"""``Inbox``: fold a burst of messages to one key into as few turns as the strategy allows.

The flow of one :meth:`Inbox.turns` call:

1. the message is appended to the key's inbox in the backend (deduplicated by id there, and
   refused with :class:`InboxFull` when the inbox is full);
2. the call tries to own the key's turn without waiting (``lock.hold(key, timeout=0)``,
   renewed in the background as every ``hold()``). If another worker owns it, the call
   yields nothing: that owner's next batch includes the message;
3. while it owns the key it yields :class:`Batch` objects, chosen by the strategy from the
   pending messages. A batch is acknowledged (under the lease's fence) when the loop body
   finishes normally; an exception from the body counts a failed attempt, and after
   ``max_attempts`` the messages become dead letters;
4. when nothing is pending it releases the lease in the same atomic step that found the
   inbox empty (``InboxStore.finish``), so a message posted at that moment is either in the
   last batch or its own ``turns()`` call finds the key free and becomes the owner.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from threadlock._validate import check_key, check_positive, check_ttl
from threadlock.errors import LeaseLost, ThreadBusy
from threadlock.inbox.store import InboxStore, StoredMessage, SweepableStore, Taken, store_for
from threadlock.inbox.types import (
    STRATEGIES,
    Batch,
    DeadLetter,
    Message,
    Strategy,
    decode_payload,
    encode_payload,
)
from threadlock.observe import backend_kind, observer_of

if TYPE_CHECKING:
    from threadlock._lease import Lease
    from threadlock.protocol import ThreadLock

__all__ = ["Handler", "Inbox", "Turns"]

#: What :meth:`Inbox.sweep` and :meth:`Inbox.serve` call with each batch they own.
Handler = Callable[[Batch], Awaitable[object]]

_log = logging.getLogger("threadlock.inbox")

#: Seconds an acknowledgement or failed-attempt count may take while the caller is being
#: cancelled (it is shielded, so its outcome is known).
_SHIELD_TIMEOUT = 5.0


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _check_seconds(value: object, name: str) -> float:
    """A finite number >= 0."""
    if value == 0 and not isinstance(value, bool) and isinstance(value, (int, float)):
        return 0.0
    return check_positive(value, name)


def _message(record: StoredMessage) -> Message:
    return Message(record.id, decode_payload(record.payload), record.posted_at)


class Inbox:
    """One inbox per key, stored in the backend of ``lock``.

    Args:
        lock: a backend with an inbox store (memory or Redis here; see
            :func:`threadlock.inbox.store.store_for`).
        max_pending: how many messages a key may have waiting; one more raises
            :class:`InboxFull` and is not stored.
        entry_ttl: seconds a message id is remembered for deduplication, and (on Redis) how
            long a key's inbox records are kept after its last write.
    """

    def __init__(self, lock: ThreadLock, *, max_pending: int = 100, entry_ttl: float = 3600.0):
        self._store: InboxStore = store_for(lock)
        self._lock = lock
        self._max_pending = _check_count(max_pending, "max_pending")
        self._entry_ttl = check_positive(entry_ttl, "entry_ttl")

    @property
    def store(self) -> InboxStore:
        """The backend's inbox store."""
        return self._store

    def turns(
        self,
        key: str,
        message: object,
        *,
        id: str | None = None,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
    ) -> Turns:
        """Post ``message`` to ``key``, then yield the batches this call owns (maybe none).

        Every argument is checked here, before anything is stored. Use it as
        ``async with inbox.turns(...) as turns: async for batch in turns: ...`` so that an
        exception from the loop body reaches the inbox (it counts a failed attempt); a plain
        ``async for`` works too, but then an exception counts no attempt.
        """
        key = check_key(key)
        payload = encode_payload(message, "message")
        message_id = uuid.uuid4().hex if id is None else check_key(id, "id")
        return Turns(
            self._run(
                self._settings(
                    key,
                    message_id,
                    payload,
                    strategy,
                    debounce,
                    max_wait,
                    max_batch,
                    ttl,
                    max_attempts,
                )
            )
        )

    def _settings(
        self,
        key: str,
        message_id: str,
        payload: str | None,
        strategy: object,
        debounce: object,
        max_wait: object,
        max_batch: object,
        ttl: object,
        max_attempts: object,
    ) -> _Settings:
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, not {type(strategy).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        debounce_s = _check_seconds(debounce, "debounce")
        max_wait_s = _check_seconds(max_wait, "max_wait")
        if max_wait_s < debounce_s:
            raise ValueError(f"max_wait must be >= debounce ({debounce_s}), got {max_wait!r}")
        return _Settings(
            key=key,
            message_id=message_id,
            payload=payload,
            strategy=strategy,
            debounce=debounce_s,
            max_wait=max_wait_s,
            max_batch=_check_count(max_batch, "max_batch"),
            ttl=check_ttl(ttl),
            max_attempts=_check_count(max_attempts, "max_attempts"),
        )

    async def pending(self, key: str) -> list[Message]:
        """The messages of ``key`` not acknowledged yet, in arrival order."""
        return [_message(r) for r in await self._store.pending(check_key(key))]

    async def dead_letters(self, key: str) -> list[DeadLetter]:
        """The messages of ``key`` that failed ``max_attempts`` times, oldest first."""
        dead = await self._store.dead_letters(check_key(key))
        return [DeadLetter(_message(d.message), d.message.attempts, d.died_at) for d in dead]

    # -- crash recovery -------------------------------------------------------------------

    async def stranded(self, limit: int = 100) -> list[str]:
        """Keys with pending messages and no live lease (their owner died mid-batch)."""
        return await self._sweepable().stranded_keys(_check_count(limit, "limit"))

    def _sweepable(self) -> SweepableStore:
        store = self._store
        if not isinstance(store, SweepableStore):
            raise TypeError(
                f"the inbox store of this lock ({type(store).__name__}) has no stranded_keys(),"
                " which sweep() and serve() need"
            )
        return store

    async def sweep(
        self,
        handler: Handler,
        *,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
        limit: int = 100,
    ) -> int:
        """One pass of crash recovery: for each key with pending messages and no live lease,
        own it (without waiting; a key someone else took meanwhile is skipped) and call
        ``await handler(batch)`` for each batch until nothing is pending, exactly as a
        ``turns()`` owner does (ack on return, a failed attempt on an exception, fenced).

        An exception from ``handler`` or a lost lease is logged (``threadlock.inbox``) and
        the pass goes on with the next key; the batch stays pending with one more attempt.
        Returns how many batches ``handler`` completed.
        """
        settings = self._sweep_settings(
            handler, strategy, debounce, max_wait, max_batch, ttl, max_attempts
        )
        return await self._sweep_pass(handler, settings, _check_count(limit, "limit"))

    def _sweep_settings(self, handler: object, *options: object) -> _Settings:
        """The one check of the arguments of :meth:`sweep` and :meth:`serve` (the blocking
        :class:`threadlock.sync.Inbox` calls it too): ``handler`` must be callable, the
        rest as for :meth:`turns`. Raises ``TypeError``/``ValueError`` naming the argument;
        ``options``: strategy, debounce, max_wait, max_batch, ttl, max_attempts (in that
        order). Returns what :meth:`_sweep_pass` takes."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        return self._settings("-", "-", None, *options)

    async def _sweep_pass(self, handler: Handler, settings: _Settings, limit: int) -> int:
        """:meth:`sweep` with arguments :meth:`_sweep_settings` checked already."""
        done = 0
        for key in await self._sweepable().stranded_keys(limit):
            try:
                async with Turns(self._run(settings.for_key(key))) as turns:
                    async for batch in turns:
                        await handler(batch)
                        done += 1
            except (Exception, LeaseLost) as error:
                _log.warning("inbox sweep: key %r: %r", key, error)
        return done

    async def serve(
        self,
        handler: Handler,
        *,
        interval: float = 1.0,
        strategy: Strategy = "coalesce",
        debounce: float = 1.5,
        max_wait: float = 8.0,
        max_batch: int = 20,
        ttl: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        """Run :meth:`sweep` every ``interval`` seconds until cancelled: start it in a
        worker's task group (``tg.start_soon(inbox.serve, handler)``). A dead owner's
        messages are picked up within its ``ttl`` plus ``interval`` (keep ``interval`` at
        most the lock's ``grace``)."""
        pause = check_positive(interval, "interval")
        settings = self._sweep_settings(
            handler, strategy, debounce, max_wait, max_batch, ttl, max_attempts
        )
        while True:
            await self._sweep_pass(handler, settings, 100)
            await anyio.sleep(pause)

    # -- the owner's loop -------------------------------------------------------------------

    async def _run(self, s: _Settings) -> AsyncGenerator[Batch, None]:
        store = self._store
        observer, kind = observer_of(self._lock), backend_kind(self._lock)
        if s.payload is not None:  # None: a sweep, which owns a key without posting
            stored = await store.append(
                s.key,
                s.message_id,
                s.payload,
                max_pending=self._max_pending,
                entry_ttl=self._entry_ttl,
            )
            observer.inbox_posted(kind, s.key, s.message_id, stored)
        hold = self._lock.hold(s.key, ttl=s.ttl, timeout=0)
        try:
            lease = await hold.__aenter__()
        except ThreadBusy:  # another worker owns the key: its next batch has our message
            return
        limit = 1 if s.strategy == "queue" else s.max_batch
        if s.strategy == "latest":
            limit = max(self._max_pending, s.max_batch)
        released = False
        try:
            taken: Taken | None = await store.take(lease, limit)
            while taken is not None:
                if s.strategy == "debounce":
                    taken = await self._settle(lease, taken, s, limit)
                observer.inbox_pending(kind, s.key, taken.pending)
                if taken.messages:
                    batch = self._batch(lease, taken, s)
                    ids = [m.id for m in taken.messages]
                    observer.inbox_batch(
                        kind,
                        s.key,
                        lease.fence,
                        len(batch.messages),
                        len(batch.skipped),
                        batch.attempt,
                    )
                    try:
                        yield batch
                    except Exception:
                        await self._nack(lease, ids, s)
                        raise
                    await self._ack(lease, ids)
                taken = await store.finish(lease, limit)
            released = True
            observer.inbox_pending(kind, s.key, 0)
        except BaseException as error:
            observer.inbox_pending(kind, s.key, 0)  # this worker no longer owns the key
            await hold.__aexit__(type(error), error, error.__traceback__)
            raise
        try:
            await hold.__aexit__(None, None, None)
        except LeaseLost:
            # The lease was released by finish(); a renewal that crossed it finds it gone.
            if not released:
                raise

    def _batch(self, lease: Lease, taken: Taken, s: _Settings) -> Batch:
        records = taken.messages
        if s.strategy == "latest":
            answered, skipped = records[-1:], records[:-1]
        else:
            answered, skipped = records, []
        seen = taken.newest_seq
        store, key = self._store, s.key
        observer, kind = observer_of(self._lock), backend_kind(self._lock)

        async def superseded() -> bool:
            newer = await store.newest_seq(key) > seen
            if newer:
                observer.inbox_superseded(kind, key, lease.fence)
            return newer

        return Batch(
            messages=[_message(r) for r in answered],
            skipped=[_message(r) for r in skipped],
            lease=lease,
            attempt=1 + max(r.attempts for r in records),
            _check=superseded,
        )

    async def _settle(self, lease: Lease, taken: Taken, s: _Settings, limit: int) -> Taken:
        """Debounce: wait until no message arrived for ``debounce`` s, or ``max_wait`` s
        passed since the oldest pending one, by the backend's clock. It sleeps until that
        deadline (computed, not polled) and reads again, as a new message moves it."""
        while taken.messages:
            oldest = taken.messages[0].posted_at
            deadline = min(taken.newest_posted + s.debounce, oldest + s.max_wait)
            wait = deadline - taken.now
            if wait <= 0:
                break
            await anyio.sleep(wait)
            taken = await self._store.take(lease, limit)
        return taken

    async def _ack(self, lease: Lease, ids: Sequence[str]) -> None:
        with anyio.move_on_after(_SHIELD_TIMEOUT, shield=True):
            acked = await self._store.ack(lease, ids, entry_ttl=self._entry_ttl)
        if not acked:
            raise LeaseLost(lease.key, lease.fence, "the batch was not acknowledged")

    async def _nack(self, lease: Lease, ids: Sequence[str], s: _Settings) -> None:
        dead: list[str] | None = None
        with anyio.move_on_after(_SHIELD_TIMEOUT, shield=True):
            dead = await self._store.nack(
                lease, ids, max_attempts=s.max_attempts, entry_ttl=self._entry_ttl
            )
        observer, kind = observer_of(self._lock), backend_kind(self._lock)
        for message_id in dead or ():
            observer.inbox_dead_letter(kind, lease.key, message_id, s.max_attempts)


class _Settings:
    __slots__ = (
        "debounce",
        "key",
        "max_attempts",
        "max_batch",
        "max_wait",
        "message_id",
        "payload",
        "strategy",
        "ttl",
    )

    def __init__(
        self,
        *,
        key: str,
        message_id: str,
        payload: str | None,
        strategy: str,
        debounce: float,
        max_wait: float,
        max_batch: int,
        ttl: float,
        max_attempts: int,
    ) -> None:
        self.key = key
        self.message_id = message_id
        self.payload = payload
        self.strategy = strategy
        self.debounce = debounce
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.ttl = ttl
        self.max_attempts = max_attempts

    def for_key(self, key: str) -> _Settings:
        """These settings for a sweep of ``key`` (posting nothing)."""
        settings = copy.copy(self)
        settings.key = key
        return settings


class Turns:
    """The batches of one :meth:`Inbox.turns` call: an async iterator and an async context
    manager. As a context manager it hands an exception from the loop body to the inbox
    (a failed attempt) and closes the iteration in the task that ran it."""

    __slots__ = ("_gen",)

    def __init__(self, gen: AsyncGenerator[Batch, None]) -> None:
        self._gen = gen

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Batch:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop: the current batch (if any) stays pending, and the lease is released."""
        await self._gen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, GeneratorExit):
            await self._gen.aclose()
            return
        try:
            await self._gen.athrow(exc)
        except StopAsyncIteration:
            return
        except BaseException as outcome:
            if outcome is exc:
                return  # the body's own exception goes on as itself
            raise
        await self._gen.aclose()  # it yielded again: not expected, stop it
