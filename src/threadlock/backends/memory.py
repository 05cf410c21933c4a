"""In-process backend: FIFO per key, direct hand-off, exact lazy expiry. anyio primitives only.

It runs on asyncio and trio and serves one process (one event loop at a time). It is the
embedded default and the backend for tests.

How it keeps its promises:

* each held key has an entry with its holder and a FIFO deque of waiters; a release pops the
  head waiter and makes it the holder before waking it (direct hand-off: nobody can barge in
  between, and the releaser cannot re-acquire ahead of the queue);
* expiry is lazy but exact: every operation first retires an expired holder (handing the key
  to the head waiter), and the head waiter sleeps at most until the holder's expiry, so an
  expired lease is reclaimed when it expires, not later;
* a free key is deleted, and keys whose holder expired without release are swept in
  amortised O(1), so memory stays flat however many distinct keys pass through;
* fences come from one counter per instance, seeded from the wall clock in microseconds, so
  they strictly increase per key and, unless the clock goes back, across restarts too.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel

from threadlock._lease import Lease, LockInfo
from threadlock._validate import check_key
from threadlock.backends.base import (
    DEFAULT_CHAIN_TTL,
    DEFAULT_GRACE,
    DEFAULT_REGISTRY_TTL,
    BaseThreadLock,
    check_registry_ttls,
)
from threadlock.errors import BackendError, LeaseLost, ThreadBusy
from threadlock.observe import Observer
from threadlock.protocol import RunRecord

__all__ = ["MemoryThreadLock"]

_MIN_RETRY_AFTER = 0.001
_SWEEP_MIN_OPS = 1024


class _Holder:
    __slots__ = ("acquired_at", "deadline", "expires_at", "fence", "owner", "token", "ttl")

    def __init__(self, token: str, fence: int, ttl: float, owner: str) -> None:
        now_wall = time.time()
        self.token = token
        self.fence = fence
        self.ttl = ttl
        self.owner = owner
        self.acquired_at = now_wall
        self.expires_at = now_wall + ttl
        self.deadline = time.monotonic() + ttl

    def lease(self, key: str) -> Lease:
        return Lease(key, self.token, self.fence, self.ttl, self.acquired_at, self.expires_at)


class _Waiter:
    __slots__ = ("event", "lease", "owner", "ttl")

    def __init__(self, ttl: float, owner: str) -> None:
        self.event = anyio.Event()
        self.lease: Lease | None = None
        self.ttl = ttl
        self.owner = owner


class _Entry:
    __slots__ = ("holder", "waiters")

    def __init__(self, holder: _Holder) -> None:
        self.holder: _Holder | None = holder
        self.waiters: deque[_Waiter] = deque()


class MemoryThreadLock(BaseThreadLock):
    """The in-process backend. See the module docstring for how it works.

    Args:
        owner: the owner prefix stored with each lease (``host:pid`` by default).
        grace: accepted as every backend accepts it (a waiter of this process cannot die
            without the process, so it is never needed here).
        release_timeout: the bound on the release at the end of ``hold()``.
        observer: where this lock reports what it does (see :mod:`threadlock.observe`).
        registry_ttl: seconds a key's run registry is kept after its last ``track_run``
            (each ``track_run`` also drops the key's entries recorded longer ago than this);
            at least 600 (an OpenAI run's life). As on Redis.
        chain_ttl: seconds a chain head is kept after its last ``advance_chain``.
    """

    def __init__(
        self,
        *,
        owner: str | None = None,
        grace: float = DEFAULT_GRACE,
        release_timeout: float = 5.0,
        observer: Observer | None = None,
        registry_ttl: float = DEFAULT_REGISTRY_TTL,
        chain_ttl: float = DEFAULT_CHAIN_TTL,
    ) -> None:
        super().__init__(
            owner=owner, grace=grace, release_timeout=release_timeout, observer=observer
        )
        self._registry_ttl, self._chain_ttl = check_registry_ttls(registry_ttl, chain_ttl)
        # The registry's and the chains' expiry, on this clock (a test may replace it): per
        # key, when it is dropped; per run, when it was recorded.
        self._clock: Callable[[], float] = time.monotonic
        self._runs_until: dict[str, float] = {}
        self._recorded: dict[str, dict[str, float]] = {}
        self._chains_until: dict[str, float] = {}
        self._next_prune = 0.0
        self._entries: dict[str, _Entry] = {}
        self._last_fence = 0
        self._ops = 0
        # Tokens: a random per-instance prefix and a counter. They only need to be unique and
        # unforgeable by other holders in this process, which can see the backend anyway;
        # one getrandom() per grant would be most of an uncontended acquire.
        self._token_prefix = secrets.token_hex(8)
        self._token_counter = itertools.count()
        self._runs: dict[str, dict[str, RunRecord]] = {}
        self._chains: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str = "memory://", **options: object) -> MemoryThreadLock:
        """Build from ``memory://``; the URL carries no settings."""
        return cls(**options)  # type: ignore[arg-type]

    @property
    def active_keys(self) -> int:
        """How many keys have state (held, or with waiters); free keys are deleted.

        A property rather than ``__len__``, so that an idle backend is not falsy.
        """
        return len(self._entries)

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` is the live lease of its key, decided without yielding.

        With :meth:`release`, which does not yield before it releases either, this lets code
        sharing this event loop (the inbox store) make "check, then release" one critical
        section.
        """
        if not isinstance(lease, Lease):
            raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
        entry = self._current(lease.key)
        return entry is not None and entry.holder is not None and entry.holder.token == lease.token

    # -- internals ----------------------------------------------------------------------------

    def _new_holder(self, ttl: float, owner: str) -> _Holder:
        token = f"{self._token_prefix}{next(self._token_counter):016x}"
        return _Holder(token, self._next_fence(), ttl, owner)

    def _next_fence(self) -> int:
        fence = max(self._last_fence + 1, time.time_ns() // 1000)
        self._last_fence = fence
        return fence

    def _grant_next(self, key: str, entry: _Entry) -> None:
        """The holder is gone: hand the key to the head waiter, or delete the entry."""
        if entry.waiters:
            waiter = entry.waiters.popleft()
            holder = self._new_holder(waiter.ttl, waiter.owner)
            entry.holder = holder
            waiter.lease = holder.lease(key)
            waiter.event.set()
            if entry.waiters:  # the new head must arm a timer for the new holder's expiry
                entry.waiters[0].event.set()
        else:
            entry.holder = None
            del self._entries[key]

    def _current(self, key: str) -> _Entry | None:
        """The entry of ``key`` with an expired holder retired first."""
        entry = self._entries.get(key)
        if entry is not None and (
            entry.holder is None or entry.holder.deadline <= time.monotonic()
        ):
            self._grant_next(key, entry)
            entry = self._entries.get(key)
        return entry

    def _sweep(self) -> None:
        self._ops += 1
        if self._ops < max(_SWEEP_MIN_OPS, 2 * len(self._entries)):
            return
        self._ops = 0
        for key in list(self._entries):
            self._current(key)

    def _info(self, key: str, entry: _Entry) -> LockInfo | None:
        holder = entry.holder
        if holder is None:
            return None
        return LockInfo(
            key=key,
            fence=holder.fence,
            owner=holder.owner,
            acquired_at=holder.acquired_at,
            expires_at=holder.expires_at,
            waiters=len(entry.waiters),
            run_id=self._newest_run(key),
        )

    def _newest_run(self, key: str) -> str | None:
        until = self._runs_until.get(key)
        if until is not None and until <= self._clock():
            return None
        runs = self._runs.get(key)
        return next(reversed(runs)) if runs else None

    def _busy(self, key: str, entry: _Entry) -> ThreadBusy:
        holder = entry.holder
        left = holder.deadline - time.monotonic() if holder is not None else 0.0
        return ThreadBusy(key, max(left, _MIN_RETRY_AFTER), self._info(key, entry))

    def _give_back(self, lease: Lease) -> None:
        entry = self._entries.get(lease.key)
        if entry is not None and entry.holder is not None and entry.holder.token == lease.token:
            self._grant_next(lease.key, entry)

    # -- primitives ---------------------------------------------------------------------------

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        self._sweep()
        owner = self._task_owner()
        entry = self._current(key)
        if entry is None:
            # A free key is granted without yielding (as asyncio.Lock does): there is no
            # await between the check and the grant, so a cancellation cannot split them.
            holder = self._new_holder(ttl, owner)
            self._entries[key] = _Entry(holder)
            return holder.lease(key)
        if timeout == 0:  # fail-fast: decided on what was just seen, without yielding
            raise self._busy(key, entry)

        waiter = _Waiter(ttl, owner)
        entry.waiters.append(waiter)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if self._closed:
                    raise BackendError("MemoryThreadLock was closed while waiting")
                # Sleep until the hand-off; only the head waiter also wakes when the holder
                # expires (a new head is nudged by _grant_next, or by a leaving head).
                wake = deadline
                current = entry.holder
                if current is not None and entry.waiters and entry.waiters[0] is waiter:
                    wake = current.deadline if wake is None else min(wake, current.deadline)
                if wake is None:
                    await waiter.event.wait()
                else:
                    delay = wake - time.monotonic()
                    if delay > 0:
                        with anyio.move_on_after(delay):
                            await waiter.event.wait()
                if waiter.lease is None:
                    self._current(key)  # retires an expired holder, maybe granting to us
                if waiter.lease is not None:
                    return waiter.lease
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._busy(key, entry)
                if waiter.event.is_set():
                    waiter.event = anyio.Event()
        except BaseException:
            if waiter.lease is not None:  # granted, but the caller is gone: pass it on
                self._give_back(waiter.lease)
            else:
                was_head = bool(entry.waiters) and entry.waiters[0] is waiter
                entry.waiters.remove(waiter)
                if entry.holder is None and not entry.waiters:
                    self._entries.pop(key, None)
                elif was_head and entry.waiters:
                    entry.waiters[0].event.set()
            raise

    async def _release(self, lease: Lease) -> bool:
        entry = self._current(lease.key)
        if entry is None or entry.holder is None or entry.holder.token != lease.token:
            return False
        self._grant_next(lease.key, entry)
        return True

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        entry = self._current(lease.key)
        if entry is None or entry.holder is None or entry.holder.token != lease.token:
            raise LeaseLost(lease.key, lease.fence, "expired or taken before extend")
        holder = entry.holder
        shortened = time.monotonic() + ttl < holder.deadline
        holder.ttl = ttl
        holder.deadline = time.monotonic() + ttl
        holder.expires_at = time.time() + ttl
        if shortened and entry.waiters:  # the head's expiry timer is now too late: re-arm it
            entry.waiters[0].event.set()
        return holder.lease(lease.key)

    async def _inspect(self, key: str) -> LockInfo | None:
        entry = self._current(key)
        return None if entry is None else self._info(key, entry)

    async def _held(self) -> list[LockInfo]:
        infos = []
        for key in list(self._entries):
            entry = self._current(key)
            info = None if entry is None else self._info(key, entry)
            if info is not None:
                infos.append(info)
        return infos

    # -- run registry and chain heads (RunRegistry, ChainStore) --------------------------------

    @property
    def registry_ttl(self) -> float:
        """Seconds a key's run registry is kept after its last ``track_run``."""
        return self._registry_ttl

    @property
    def chain_ttl(self) -> float:
        """Seconds a chain head is kept after its last ``advance_chain``."""
        return self._chain_ttl

    async def track_run(self, record: RunRecord) -> None:
        """Record a run or background response; see :class:`threadlock.RunRegistry`."""
        if not isinstance(record, RunRecord):
            raise TypeError(f"record must be a RunRecord, not {type(record).__name__}")
        self._check_open()
        now = self._prune()
        key = record.key
        self._expire(key, now)
        runs = self._runs.setdefault(key, {})
        recorded = self._recorded.setdefault(key, {})
        too_old = now - self._registry_ttl
        for run_id in [r for r, at in recorded.items() if at <= too_old]:
            del recorded[run_id]
            runs.pop(run_id, None)
        runs[record.run_id] = record
        recorded.setdefault(record.run_id, now)  # first recorded, as on Redis
        self._runs_until[key] = now + self._registry_ttl
        await anyio.lowlevel.checkpoint()

    async def untrack_run(self, key: str, run_id: str) -> None:
        """Forget a run; see :class:`threadlock.RunRegistry`."""
        check_key(key)
        check_key(run_id, "run_id")
        self._check_open()
        runs = self._runs.get(key)
        if runs is not None:
            runs.pop(run_id, None)
            self._recorded.get(key, {}).pop(run_id, None)
            if not runs:
                self._drop_runs(key)
        await anyio.lowlevel.checkpoint()

    async def tracked_runs(self, key: str | None = None) -> list[RunRecord]:
        """The recorded runs of ``key`` (or all), oldest first."""
        if key is not None:
            check_key(key)
        self._check_open()
        await anyio.lowlevel.checkpoint()
        now = self._prune(force=key is None)
        if key is not None:
            self._expire(key, now)
            return list(self._runs.get(key, {}).values())
        records = [r for runs in self._runs.values() for r in runs.values()]
        return sorted(records, key=lambda r: r.created_at)

    async def chain_head(self, key: str) -> str | None:
        """The last response id of chain ``key``; see :class:`threadlock.ChainStore`."""
        check_key(key)
        self._check_open()
        await anyio.lowlevel.checkpoint()
        self._expire(key, self._prune())
        return self._chains.get(key)

    async def advance_chain(self, lease: Lease, expected: str | None, new: str) -> bool:
        """Compare-and-set the chain head while ``lease`` is held."""
        if not isinstance(lease, Lease):
            raise TypeError(f"lease must be a threadlock.Lease, not {type(lease).__name__}")
        check_key(new, "new")
        self._check_open()
        await anyio.lowlevel.checkpoint()
        entry = self._current(lease.key)
        if entry is None or entry.holder is None or entry.holder.token != lease.token:
            return False
        now = self._prune()
        self._expire(lease.key, now)
        if self._chains.get(lease.key) != expected:
            return False
        self._chains[lease.key] = new
        self._chains_until[lease.key] = now + self._chain_ttl
        return True

    def _drop_runs(self, key: str) -> None:
        self._runs.pop(key, None)
        self._recorded.pop(key, None)
        self._runs_until.pop(key, None)

    def _expire(self, key: str, now: float) -> None:
        """Drop ``key``'s registry and chain head if they are past their TTL (exact reads)."""
        until = self._runs_until.get(key)
        if until is not None and until <= now:
            self._drop_runs(key)
        until = self._chains_until.get(key)
        if until is not None and until <= now:
            del self._chains_until[key]
            self._chains.pop(key, None)

    def _prune(self, *, force: bool = False) -> float:
        """Drop every registry and chain head past its TTL; returns the clock's time.

        A full pass runs at most 16 times per TTL (amortised O(1) per call), or when
        ``force`` (a read of every key); a read of one key checks that key (``_expire``).
        """
        now = self._clock()
        if now < self._next_prune and not force:
            return now
        for key in [k for k, until in self._runs_until.items() if until <= now]:
            self._drop_runs(key)
        for key in [k for k, until in self._chains_until.items() if until <= now]:
            del self._chains_until[key]
            self._chains.pop(key, None)
        self._next_prune = now + min(self._registry_ttl, self._chain_ttl) / 16
        return now

    async def _aclose(self) -> None:
        for entry in self._entries.values():
            for waiter in entry.waiters:
                waiter.event.set()
