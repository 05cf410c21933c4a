"""Model-based test: random sequences of lock operations against a reference model of the SPEC.

A hypothesis ``RuleBasedStateMachine`` drives one backend (memory on asyncio and trio, Redis
and Postgres on asyncio) through try-acquire (``timeout=0``), queued acquire (a task waiting
with ``timeout=None``), release, extend, expire (extend to a short ttl and wait past it),
and cancel-waiter over three keys, checks ``inspect`` of every key and ``held()`` after every
step, and compares every answer with a small model:

* per key: the owner (one of the leases handed out), a FIFO queue of waiters, the last fence;
* a free key is granted at once; a held key answers ``ThreadBusy`` to a try-acquire and queues
  a waiter; release and expiry hand the key to the head of the queue, nobody else;
* fences strictly increase per key; extend keeps the fence; release/extend of a lease that is
  not the owner is ``False`` / ``LeaseLost``; a cancelled waiter leaves the queue at once.

Hypothesis state machines are synchronous: the backend lives on an event loop in a thread of
its own (``anyio.from_thread.start_blocking_portal``), and the rules call into it. Every
example gets a fresh lock (a fresh Redis prefix / Postgres table). The examples are
derandomized and bounded (see ``SETTINGS``), so CI runs the same sequences every time.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tests._servers.postgres_server import PostgresServer, ServerUnavailable
from tests._servers.redis_server import RedisServer

from threadlock import Lease, LeaseLost, MemoryThreadLock, ThreadBusy

pytestmark = pytest.mark.slow

KEYS = ("k1", "ключ", "{x}*")  # plain, unicode, hash-tag and glob characters
LONG = 30.0  # the ttl of every lease: nothing expires unless the `expire` rule says so
SHORT = 0.05  # the ttl `expire` shortens a lease to before waiting past it
GRACE = 1.0  # Redis/Postgres waiters re-check at least every grace / 3
MAX_EXPIRES = 2  # per example: each costs 2 x SHORT of real time, plus the hand-off
BOUND = 10.0  # generous bound on anything that must happen "at once" (shared machine)


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@dataclass(eq=False)
class Held:
    """A lease the backend handed out, and the newest version of it (after extends)."""

    key: str
    lease: Lease


@dataclass(eq=False)
class Waiter:
    """A task waiting in ``acquire(key, timeout=None)`` on the portal's loop."""

    key: str
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    scope: anyio.CancelScope | None = None
    lease: Lease | None = None
    error: BaseException | None = None


@dataclass
class KeyModel:
    owner: Held | None = None
    queue: list[Waiter] = field(default_factory=list)
    last_fence: int = 0


class LockMachine(RuleBasedStateMachine):
    """The machine; ``make_lock`` (an async factory) and ``loop`` are set per backend."""

    make_lock: Callable[[], Any]
    loop = "asyncio"
    stats: Counter[str]
    bound = BOUND

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(self.loop)
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.lock = self.portal.call(type(self).make_lock)
        self.model = {key: KeyModel() for key in KEYS}
        self.leases: list[Held] = []
        self.waiters: list[Waiter] = []  # still queued, in the model
        self.expired = 0

    # -- helpers ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    def grant(self, key: str, lease: Lease) -> Held:
        model = self.model[key]
        assert lease.key == key
        assert lease.fence > model.last_fence, "fences must strictly increase per key"
        model.last_fence = lease.fence
        held = Held(key, lease)
        model.owner = held
        self.leases.append(held)
        return held

    def waiting_count(self, key: str) -> int:
        info = self.call(self.lock.inspect, key)
        return 0 if info is None else info.waiters

    def wait_for(self, what: Callable[[], bool], message: str) -> None:
        deadline = time.monotonic() + self.bound
        while not what():
            assert time.monotonic() < deadline, message
            time.sleep(0.01)

    def hand_to_head(self, key: str) -> None:
        """The key just became free: the head waiter (only it) gets it, at once."""
        model = self.model[key]
        model.owner = None
        if not model.queue:
            return
        head = model.queue.pop(0)
        self.waiters.remove(head)
        assert head.done.wait(self.bound), "the head waiter was not handed the key"
        assert head.error is None, repr(head.error)
        assert head.lease is not None
        for other in model.queue:
            assert not other.done.is_set(), "a waiter behind the head got the key (not FIFO)"
        self.grant(key, head.lease)

    async def _run_waiter(self, waiter: Waiter) -> None:
        try:
            with anyio.CancelScope() as scope:
                waiter.scope = scope
                waiter.started.set()
                waiter.lease = await self.lock.acquire(waiter.key, ttl=LONG, timeout=None)
        except BaseException as error:  # recorded, and checked by the rules
            waiter.error = error
        finally:
            waiter.done.set()

    # -- rules ------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS))
    def try_acquire(self, key: str) -> None:
        self.stats["try_acquire"] += 1
        model = self.model[key]
        try:
            lease = self.call(self.lock.acquire, key, ttl=LONG, timeout=0)
        except ThreadBusy as busy:
            assert model.owner is not None, "ThreadBusy for a free key"
            assert busy.key == key
            assert busy.retry_after > 0
            if busy.holder is not None:
                assert busy.holder.fence == model.owner.lease.fence
            return
        assert model.owner is None, "a held key was granted to a try-acquire"
        self.grant(key, lease)

    @rule(key=st.sampled_from(KEYS))
    def queued_acquire(self, key: str) -> None:
        self.stats["queued_acquire"] += 1
        self._queued_acquire(key)

    @precondition(lambda self: any(m.owner is not None for m in self.model.values()))
    @rule(pick=st.integers(0, 10_000))
    def queue_behind_holder(self, pick: int) -> None:
        """A queued acquire on a held key (so queues build up more often)."""
        self.stats["queue_behind_holder"] += 1
        keys = [key for key, m in self.model.items() if m.owner is not None]
        self._queued_acquire(keys[pick % len(keys)])

    def _queued_acquire(self, key: str) -> None:
        model = self.model[key]
        waiter = Waiter(key)
        self.portal.start_task_soon(self._run_waiter, waiter)
        assert waiter.started.wait(BOUND)
        if model.owner is None:
            assert waiter.done.wait(BOUND), "a free key was not granted at once"
            assert waiter.error is None, repr(waiter.error)
            assert waiter.lease is not None
            self.grant(key, waiter.lease)
            return
        expected = len(model.queue) + 1
        self.wait_for(
            lambda: waiter.done.is_set() or self.waiting_count(key) >= expected,
            f"the waiter on {key!r} did not show in the queue",
        )
        assert not waiter.done.is_set(), f"a held key was granted: {waiter.error!r}"
        model.queue.append(waiter)
        self.waiters.append(waiter)

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 10_000))
    def release(self, index: int) -> None:
        self.stats["release"] += 1
        held = self.leases[index % len(self.leases)]
        model = self.model[held.key]
        is_owner = model.owner is held
        assert self.call(self.lock.release, held.lease) is is_owner
        if is_owner:
            self.hand_to_head(held.key)

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(0, 10_000))
    def extend(self, index: int) -> None:
        self.stats["extend"] += 1
        held = self.leases[index % len(self.leases)]
        model = self.model[held.key]
        try:
            new = self.call(self.lock.extend, held.lease, ttl=LONG)
        except LeaseLost as lost:
            assert model.owner is not held, "extend of the live lease raised LeaseLost"
            assert lost.fence == held.lease.fence
            assert lost.key == held.key
            return
        assert model.owner is held, "extend of a dead lease succeeded"
        assert new.fence == held.lease.fence
        assert new.token == held.lease.token
        assert new.expires_at >= held.lease.expires_at - 1.0
        held.lease = new

    @precondition(
        lambda self: (
            self.expired < MAX_EXPIRES and any(m.owner is not None for m in self.model.values())
        )
    )
    @rule(pick=st.integers(0, 10_000))
    def expire(self, pick: int) -> None:
        self.stats["expire"] += 1
        self.expired += 1
        keys = [key for key, m in self.model.items() if m.owner is not None]
        key = keys[pick % len(keys)]
        owner = self.model[key].owner
        assert owner is not None
        owner.lease = self.call(self.lock.extend, owner.lease, ttl=SHORT)
        time.sleep(2 * SHORT)  # the expiry was set by the backend before extend returned
        # inspect() also makes a lazily expiring backend retire the holder now; without it the
        # memory backend's head waiter would sleep until the old expiry (see
        # tests/chaos/test_chaos_repros.py).
        self.call(self.lock.inspect, key)
        self.hand_to_head(key)
        with pytest.raises(LeaseLost):
            self.call(self.lock.extend, owner.lease)
        assert self.call(self.lock.release, owner.lease) is False

    @precondition(lambda self: self.waiters)
    @rule(index=st.integers(0, 10_000))
    def cancel_waiter(self, index: int) -> None:
        self.stats["cancel_waiter"] += 1
        waiter = self.waiters.pop(index % len(self.waiters))
        model = self.model[waiter.key]
        model.queue.remove(waiter)
        assert waiter.scope is not None
        self.portal.call(waiter.scope.cancel)
        assert waiter.done.wait(BOUND), "a cancelled waiter did not return"
        assert waiter.error is None, repr(waiter.error)
        assert waiter.lease is None, "a waiter was granted a held key"
        assert self.waiting_count(waiter.key) == len(model.queue)

    @invariant()
    def observe(self) -> None:
        """After every step, ``inspect()`` of every key and ``held()`` agree with the model."""
        self.stats["observe"] += 1
        for key, model in self.model.items():
            info = self.call(self.lock.inspect, key)
            if model.owner is None:
                assert info is None, f"inspect({key!r}) shows a holder of a free key: {info}"
                continue
            assert info is not None, f"inspect({key!r}) shows no holder"
            assert info.key == key
            assert info.fence == model.owner.lease.fence
            assert info.waiters == len(model.queue)
        infos = self.call(self.lock.held)
        seen = {info.key: info.fence for info in infos}
        expected = {
            key: m.owner.lease.fence for key, m in self.model.items() if m.owner is not None
        }
        assert seen == expected

    def teardown(self) -> None:
        try:
            for waiter in list(self.waiters):
                if waiter.scope is not None:
                    self.portal.call(waiter.scope.cancel)
                waiter.done.wait(BOUND)
            self.call(self.lock.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)


def _run(
    make_lock: Callable[[], Any],
    loop: str,
    config: settings,
    capsys: pytest.CaptureFixture[str] | None = None,
    bound: float = BOUND,
) -> Counter[str]:
    stats: Counter[str] = Counter()
    machine = type(
        f"LockMachine_{loop}",
        (LockMachine,),
        {"make_lock": staticmethod(make_lock), "loop": loop, "stats": stats, "bound": bound},
    )
    began = time.monotonic()
    run_state_machine_as_test(machine, settings=config)
    if capsys is not None:
        with capsys.disabled():
            counts = " ".join(f"{name}={n}" for name, n in sorted(stats.items()))
            print(
                f"\nstate machine: {config.max_examples} examples x <= "
                f"{config.stateful_step_count} steps, {time.monotonic() - began:.1f}s: {counts}"
            )
    return stats


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_memory_backend_follows_the_model(loop: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> MemoryThreadLock:
        return MemoryThreadLock()

    _run(make, loop, _settings(examples=25, steps=30), capsys)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


def test_redis_backend_follows_the_model(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from threadlock.backends.redis import RedisThreadLock

    async def make() -> RedisThreadLock:
        return RedisThreadLock.from_url(
            redis_url, prefix=f"sm-{uuid.uuid4().hex[:12]}", grace=GRACE
        )

    _run(make, "asyncio", _settings(examples=30, steps=30), capsys)


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    try:
        server = PostgresServer.create()
    except ServerUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Postgres tests cannot run: {error}")
        pytest.skip(str(error))
    try:
        server.start()
        yield server.dsn
    finally:
        server.destroy()


def test_postgres_backend_follows_the_model(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from threadlock.backends.postgres import PostgresThreadLock

    async def make() -> PostgresThreadLock:
        lock = PostgresThreadLock.from_url(
            pg_dsn, table=f"sm_{uuid.uuid4().hex[:16]}", grace=GRACE, max_size=4
        )
        await lock.create_schema()
        return lock

    _run(make, "asyncio", _settings(examples=30, steps=30), capsys)


class _Lifo(MemoryThreadLock):
    """Broken on purpose: the newest waiter is served first."""

    def _grant_next(self, key: str, entry: Any) -> None:
        entry.waiters.reverse()
        super()._grant_next(key, entry)
        entry.waiters.reverse()


class _NoTokenCheck(MemoryThreadLock):
    """Broken on purpose: release() frees the key whoever asks."""

    async def _release(self, lease: Lease) -> bool:
        entry = self._current(lease.key)
        if entry is None or entry.holder is None:
            return False
        self._grant_next(lease.key, entry)
        return True


class _StuckFence(MemoryThreadLock):
    """Broken on purpose: every holder gets the same fence."""

    def _next_fence(self) -> int:
        return 7


class _SlowHandOff(MemoryThreadLock):
    """Broken on purpose: a release frees the key but wakes nobody."""

    def _grant_next(self, key: str, entry: Any) -> None:
        if entry.waiters and entry.holder is not None:
            entry.holder.deadline = time.monotonic() + 60.0  # looks held for another minute
            return
        super()._grant_next(key, entry)


@pytest.mark.parametrize("broken", [_Lifo, _NoTokenCheck, _StuckFence, _SlowHandOff])
def test_the_model_catches_a_broken_backend(broken: type[MemoryThreadLock]) -> None:
    async def make() -> MemoryThreadLock:
        return broken()

    config = settings(_settings(examples=40, steps=30), phases=[Phase.generate])
    with pytest.raises(Exception):  # any failed check will do
        _run(make, "asyncio", config, bound=1.0)  # a broken hand-off need not be waited for
