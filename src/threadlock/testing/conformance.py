"""The behaviour suite every :class:`~threadlock.ThreadLock` backend must pass.

Use it for your own backend in one of two ways::

    # 1. a factory (sync or async callable returning a fresh backend)
    from threadlock.testing import backend_conformance

    TestMyBackend = backend_conformance(lambda: MyBackend(), anyio_backends=("asyncio",))

    # 2. a subclass, when the backend needs other fixtures (a server URL, a fresh prefix)
    from threadlock.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def lock(self, server_url):
            async with MyBackend.from_url(server_url) as backend:
                yield backend

Every test gets a fresh ``lock`` and must see an empty backend. The suite needs pytest and
anyio's pytest plugin (shipped with anyio). It asserts behaviour (exclusion, order, fences,
what was released), not speed: the only time bounds are generous ones that separate "woken by
a notification" from "woken by a TTL-long fallback".

Class attributes tune it for slow backends: :attr:`BackendConformance.short_ttl` is the TTL of
the tests that wait for an expiry, :attr:`BackendConformance.long_ttl` the TTL that must never
run out during a test.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from threadlock._lease import Lease
from threadlock.errors import LeaseLost, ThreadBusy
from threadlock.protocol import ThreadLock

__all__ = ["BackendConformance", "backend_conformance"]

BAD_KEYS: list[object] = ["", "a\x00b", "a" * 1025, "é" * 513, 1, None, b"key", ["k"]]
BAD_TTLS: list[object] = [0, -1, math.nan, math.inf, "1", None, True]
BAD_TIMEOUTS: list[object] = [-0.5, math.nan, "1", True]


async def _until(predicate: Callable[[], Awaitable[bool]], limit: float = 10.0) -> None:
    """Re-check ``predicate`` until it holds; fail the test after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not await predicate():
            await anyio.sleep(0.005)


class BackendConformance:
    """The conformance tests; subclass it and override the :meth:`lock` fixture."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio

    #: TTL (s) for tests that wait for a lease to expire.
    short_ttl: ClassVar[float] = 0.4
    #: TTL (s) that must not run out during a test; a waiter woken by a TTL-long fallback
    #: instead of a notification is caught by this margin.
    long_ttl: ClassVar[float] = 60.0
    #: Bound (s) within which a released key must reach the next waiter.
    handoff_bound: ClassVar[float] = 5.0

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def lock(self) -> AsyncIterator[ThreadLock]:
        """Override: yield a fresh, empty backend, and close it afterwards."""
        raise NotImplementedError("override the `lock` fixture")
        yield  # pragma: no cover

    async def _wait_for_waiters(self, lock: ThreadLock, key: str, count: int) -> None:
        async def queued() -> bool:
            info = await lock.inspect(key)
            return info is not None and info.waiters >= count

        await _until(queued)

    # -- exclusion and order --------------------------------------------------------------

    async def test_mutual_exclusion(self, lock: ThreadLock) -> None:
        inside = 0
        most = 0
        sections = 0
        fences: list[int] = []

        async def worker() -> None:
            nonlocal inside, most, sections
            for _ in range(50):
                async with lock.hold("exclusion", ttl=self.long_ttl) as lease:
                    inside += 1
                    most = max(most, inside)
                    fences.append(lease.fence)
                    await anyio.lowlevel.checkpoint()
                    inside -= 1
                    sections += 1

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(worker)
        assert most == 1
        assert sections == 16 * 50
        assert fences == sorted(fences)
        assert len(set(fences)) == len(fences)
        assert await lock.inspect("exclusion") is None

    async def test_fifo_order(self, lock: ThreadLock) -> None:
        key = "fifo"
        first = await lock.acquire(key, ttl=self.long_ttl)
        served: list[int] = []

        async def waiter(index: int) -> None:
            lease = await lock.acquire(key, ttl=self.long_ttl, timeout=None)
            served.append(index)
            await lock.release(lease)

        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(waiter, index)
                await self._wait_for_waiters(lock, key, index + 1)
            assert await lock.release(first)
        assert served == list(range(8))
        assert await lock.inspect(key) is None

    async def test_no_self_reacquire_while_others_wait(self, lock: ThreadLock) -> None:
        key = "handoff-order"
        mine = await lock.acquire(key, ttl=self.long_ttl)
        theirs: list[Lease] = []

        async def other() -> None:
            theirs.append(await lock.acquire(key, ttl=self.long_ttl, timeout=None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await self._wait_for_waiters(lock, key, 1)
            assert await lock.release(mine)
            with pytest.raises(ThreadBusy):  # the key went to the waiter, not back to us
                await lock.acquire(key, ttl=self.long_ttl, timeout=0)
        assert len(theirs) == 1
        again_task: list[Lease] = []

        async def again() -> None:
            again_task.append(await lock.acquire(key, ttl=self.long_ttl, timeout=None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(again)
            await self._wait_for_waiters(lock, key, 1)
            assert await lock.release(theirs[0])
        assert again_task[0].fence > theirs[0].fence > mine.fence
        assert await lock.release(again_task[0])

    async def test_handoff_is_notified_not_polled(self, lock: ThreadLock) -> None:
        # The holder's TTL is long: a waiter that learnt of the release only from its
        # TTL-bounded fallback re-check would not get the key within the bound.
        key = "handoff"
        for _ in range(3):
            holder = await lock.acquire(key, ttl=self.long_ttl)
            got: list[Lease] = []

            async def waiter(got: list[Lease] = got) -> None:
                got.append(await lock.acquire(key, ttl=self.long_ttl, timeout=None))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await self._wait_for_waiters(lock, key, 1)
                assert await lock.release(holder)
                with anyio.fail_after(self.handoff_bound):
                    while not got:
                        await anyio.sleep(0.001)
            assert got[0].fence > holder.fence
            assert await lock.release(got[0])

    async def test_fences_strictly_increase(self, lock: ThreadLock) -> None:
        seen: dict[str, list[int]] = {"f1": [], "f2": []}
        for round_ in range(20):
            for key in seen:
                lease = await lock.acquire(key, ttl=self.long_ttl, timeout=0)
                seen[key].append(lease.fence)
                if round_ % 2:
                    assert await lock.release(lease)
                else:
                    # extend keeps the fence; then release
                    extended = await lock.extend(lease)
                    assert extended.fence == lease.fence
                    assert extended.token == lease.token
                    assert await lock.release(extended)
        for fences in seen.values():
            assert all(a < b for a, b in itertools.pairwise(fences))

    # -- expiry and renewal -----------------------------------------------------------------

    async def test_expired_lease_is_taken_and_old_lease_is_dead(self, lock: ThreadLock) -> None:
        key = "expiry"
        old = await lock.acquire(key, ttl=self.short_ttl)
        new = await lock.acquire(key, ttl=self.long_ttl, timeout=self.short_ttl * 10)
        assert new.fence > old.fence
        with pytest.raises(LeaseLost) as lost:
            await lock.extend(old)
        assert lost.value.key == key
        assert lost.value.fence == old.fence
        assert await lock.release(old) is False
        info = await lock.inspect(key)
        assert info is not None
        assert info.fence == new.fence  # the old lease did not touch the new holder
        assert await lock.release(new) is True

    async def test_extend_after_expiry_raises_even_if_nobody_took_it(
        self, lock: ThreadLock
    ) -> None:
        key = "expired-free"
        lease = await lock.acquire(key, ttl=self.short_ttl)
        await anyio.sleep(self.short_ttl * 2)
        with pytest.raises(LeaseLost):
            await lock.extend(lease)
        assert await lock.release(lease) is False
        assert await lock.inspect(key) is None
        fresh = await lock.acquire(key, ttl=self.long_ttl, timeout=0)
        assert fresh.fence > lease.fence
        assert await lock.release(fresh)

    async def test_extend_moves_expiry_and_keeps_fence(self, lock: ThreadLock) -> None:
        key = "extend"
        lease = await lock.acquire(key, ttl=self.short_ttl)
        longer = await lock.extend(lease, ttl=self.long_ttl)
        assert longer.fence == lease.fence
        assert longer.ttl == self.long_ttl
        assert longer.expires_at > lease.expires_at
        await anyio.sleep(self.short_ttl * 2)
        with pytest.raises(ThreadBusy):  # still held: the extension counted
            await lock.acquire(key, ttl=self.long_ttl, timeout=0)
        assert await lock.release(longer)

    async def test_renewal_keeps_lease_past_three_ttls(self, lock: ThreadLock) -> None:
        key = "renewal"
        ttl = self.short_ttl
        async with lock.hold(key, ttl=ttl) as lease:
            await anyio.sleep(ttl * 3.5)
            with pytest.raises(ThreadBusy):
                await lock.acquire(key, ttl=ttl, timeout=0)
            info = await lock.inspect(key)
            assert info is not None
            assert info.fence == lease.fence
        assert await lock.inspect(key) is None

    async def test_lost_lease_cancels_body(self, lock: ThreadLock) -> None:
        key = "lost"
        reached_end = False
        thief: list[Lease] = []
        with anyio.fail_after(self.short_ttl * 20), pytest.raises(LeaseLost) as lost:
            async with lock.hold(key, ttl=self.short_ttl) as lease:
                # Someone else takes the key from under us (as after a long stall).
                assert await lock.release(lease)
                thief.append(await lock.acquire(key, ttl=self.long_ttl, timeout=0))
                await anyio.sleep(self.long_ttl)
                reached_end = True
        assert not reached_end
        assert lost.value.fence == lease.fence
        assert thief[0].fence > lease.fence
        info = await lock.inspect(key)
        assert info is not None
        assert info.fence == thief[0].fence  # the losing holder's exit released nothing
        assert await lock.release(thief[0])

    # -- fail-fast and timeouts -------------------------------------------------------------

    async def test_fail_fast_raises_thread_busy_at_once(self, lock: ThreadLock) -> None:
        key = "busy"
        holder = await lock.acquire(key, ttl=self.long_ttl)
        with anyio.fail_after(self.handoff_bound), pytest.raises(ThreadBusy) as busy:
            await lock.acquire(key, ttl=self.long_ttl, timeout=0)
        error = busy.value
        assert isinstance(error, TimeoutError)
        assert error.key == key
        assert 0 < error.retry_after <= self.long_ttl
        assert error.holder is not None
        assert error.holder.fence == holder.fence
        info = await lock.inspect(key)
        assert info is not None
        assert info.waiters == 0  # the fail-fast attempt left no waiter behind
        assert await lock.release(holder)

    async def test_timeout_raises_after_waiting_and_leaves_queue(self, lock: ThreadLock) -> None:
        key = "timeout"
        holder = await lock.acquire(key, ttl=self.long_ttl)
        started = anyio.current_time()
        with anyio.fail_after(self.handoff_bound), pytest.raises(ThreadBusy) as busy:
            await lock.acquire(key, ttl=self.long_ttl, timeout=0.3)
        waited = anyio.current_time() - started
        assert waited >= 0.25
        assert waited < self.handoff_bound
        assert busy.value.retry_after > 0
        info = await lock.inspect(key)
        assert info is not None
        assert info.waiters == 0
        # The departed waiter is not granted the key: the next one is.
        got: list[Lease] = []

        async def waiter() -> None:
            got.append(await lock.acquire(key, ttl=self.long_ttl, timeout=None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await self._wait_for_waiters(lock, key, 1)
            assert await lock.release(holder)
        assert got
        assert await lock.release(got[0])
        assert await lock.inspect(key) is None

    # -- cancellation -----------------------------------------------------------------------

    async def test_waiter_cancelled_at_grant_passes_key_on(self, lock: ThreadLock) -> None:
        key = "cancel-at-grant"
        holder = await lock.acquire(key, ttl=self.long_ttl)
        second: list[Lease] = []
        returned: list[Lease] = []

        async def cancelled_waiter(scope: anyio.CancelScope) -> None:
            with scope:
                lease = await lock.acquire(key, ttl=self.long_ttl, timeout=None)
                # The cancel landed only after acquire returned: releasing is now the
                # caller's duty (hold() does it), so do it and record it.
                returned.append(lease)
                with anyio.CancelScope(shield=True):
                    await lock.release(lease)

        async def next_waiter() -> None:
            second.append(await lock.acquire(key, ttl=self.long_ttl, timeout=None))

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled_waiter, scope)
            await self._wait_for_waiters(lock, key, 1)
            tg.start_soon(next_waiter)
            await self._wait_for_waiters(lock, key, 2)
            # Cancel the first waiter and grant it the key in the same step.
            scope.cancel()
            assert await lock.release(holder)
            with anyio.fail_after(self.handoff_bound):
                while not second:
                    await anyio.sleep(0.001)
        assert scope.cancel_called
        assert second[0].fence > holder.fence
        if returned:
            assert second[0].fence > returned[0].fence
        assert await lock.release(second[0])
        assert await lock.inspect(key) is None

    async def test_cancellation_storm_leaves_nothing_held(self, lock: ThreadLock) -> None:
        rng = random.Random(1234)
        keys = ["storm-a", "storm-b", "storm-c"]
        entered = 0

        async def contender(key: str, hold_for: float, cancel_after: float) -> None:
            nonlocal entered
            with anyio.move_on_after(cancel_after):
                async with lock.hold(key, ttl=self.long_ttl, timeout=None):
                    entered += 1
                    await anyio.sleep(hold_for)

        for _ in range(200):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(
                        contender,
                        rng.choice(keys),
                        rng.choice([0, 0.0005, 0.002]),
                        rng.choice([0, 0.0002, 0.001, 0.003, 0.05]),
                    )
        assert entered > 0
        assert await lock.held() == []
        for key in keys:
            assert await lock.inspect(key) is None
            lease = await lock.acquire(key, ttl=self.long_ttl, timeout=0)
            assert await lock.release(lease)

    async def test_hold_releases_on_error_cancel_and_success(self, lock: ThreadLock) -> None:
        key = "hold-exits"
        with pytest.raises(KeyError):  # the body's own exception, never an ExceptionGroup
            async with lock.hold(key, ttl=self.long_ttl):
                raise KeyError("boom")
        assert await lock.inspect(key) is None
        with anyio.move_on_after(0.05):
            async with lock.hold(key, ttl=self.long_ttl):
                await anyio.sleep(self.long_ttl)
        assert await lock.inspect(key) is None
        async with lock.hold(key, ttl=self.long_ttl) as lease:
            assert (await lock.inspect(key)) is not None
        assert await lock.release(lease) is False
        assert await lock.inspect(key) is None

    async def test_max_hold_cancels_body_with_timeout_error(self, lock: ThreadLock) -> None:
        key = "max-hold"
        with pytest.raises(TimeoutError) as raised:
            async with lock.hold(key, ttl=self.long_ttl, max_hold=0.1):
                await anyio.sleep(self.long_ttl)
        assert not isinstance(raised.value, ThreadBusy)
        assert await lock.inspect(key) is None

    # -- ownership --------------------------------------------------------------------------

    async def test_release_from_another_task(self, lock: ThreadLock) -> None:
        key = "other-task"
        lease = await lock.acquire(key, ttl=self.long_ttl)
        results: list[bool] = []

        async def releaser() -> None:
            results.append(await lock.release(lease))

        async with anyio.create_task_group() as tg:
            tg.start_soon(releaser)
        assert results == [True]
        assert await lock.inspect(key) is None

    async def test_forged_token_cannot_release_or_extend(self, lock: ThreadLock) -> None:
        key = "token"
        lease = await lock.acquire(key, ttl=self.long_ttl)
        forged = dataclasses.replace(lease, token="0" * len(lease.token))
        assert await lock.release(forged) is False
        with pytest.raises(LeaseLost):
            await lock.extend(forged)
        info = await lock.inspect(key)
        assert info is not None
        assert info.fence == lease.fence
        assert await lock.release(lease) is True
        assert await lock.release(lease) is False  # twice is not twice the release

    # -- inspection -------------------------------------------------------------------------

    async def test_inspect_and_held_fields(self, lock: ThreadLock) -> None:
        assert await lock.inspect("inspect-a") is None
        assert await lock.held() == []
        a = await lock.acquire("inspect-a", ttl=self.long_ttl)
        b = await lock.acquire("inspect-b", ttl=self.long_ttl)
        info = await lock.inspect("inspect-a")
        assert info is not None
        assert info.key == "inspect-a"
        assert info.fence == a.fence
        assert isinstance(info.owner, str)
        assert info.owner
        assert info.waiters == 0
        assert info.run_id is None
        assert info.acquired_at == pytest.approx(a.acquired_at, abs=1.0)
        assert info.expires_at - info.acquired_at == pytest.approx(self.long_ttl, abs=1.0)
        assert a.expires_at - a.acquired_at == pytest.approx(self.long_ttl, abs=1.0)

        async def waiter() -> None:
            lease = await lock.acquire("inspect-a", ttl=self.long_ttl, timeout=None)
            await lock.release(lease)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(waiter)
            await self._wait_for_waiters(lock, "inspect-a", 2)
            info = await lock.inspect("inspect-a")
            assert info is not None
            assert info.waiters == 2
            held = {i.key: i for i in await lock.held()}
            assert set(held) == {"inspect-a", "inspect-b"}
            assert held["inspect-b"].fence == b.fence
            assert held["inspect-a"].waiters == 2
            assert await lock.release(a)
        assert await lock.release(b)
        assert await lock.held() == []

    async def test_unusual_keys_are_plain_keys(self, lock: ThreadLock) -> None:
        keys = ["'; DROP TABLE x; --", "*", "{a}b}", "käse 🧀", "a:b:c", "x" * 1024, " "]
        leases = [await lock.acquire(key, ttl=self.long_ttl, timeout=0) for key in keys]
        for key in keys:
            with pytest.raises(ThreadBusy):
                await lock.acquire(key, ttl=self.long_ttl, timeout=0)
        assert {info.key for info in await lock.held()} == set(keys)
        for lease in leases:
            assert await lock.release(lease)
        assert await lock.held() == []

    # -- bad input --------------------------------------------------------------------------

    async def test_bad_input_names_the_argument_and_changes_nothing(self, lock: ThreadLock) -> None:
        held_before = await lock.acquire("bad-input", ttl=self.long_ttl)
        for key in BAD_KEYS:
            with pytest.raises((ValueError, TypeError), match="key"):
                await lock.acquire(key, ttl=1.0)  # type: ignore[arg-type]
            with pytest.raises((ValueError, TypeError), match="key"):
                await lock.inspect(key)  # type: ignore[arg-type]
            with pytest.raises((ValueError, TypeError), match="key"):
                async with lock.hold(key):  # type: ignore[arg-type]
                    pass  # pragma: no cover
        for ttl in BAD_TTLS:
            with pytest.raises((ValueError, TypeError), match="ttl"):
                await lock.acquire("bad-ttl", ttl=ttl)  # type: ignore[arg-type]
            with pytest.raises((ValueError, TypeError), match="ttl"):
                async with lock.hold("bad-ttl", ttl=ttl):  # type: ignore[arg-type]
                    pass  # pragma: no cover
            if ttl is not None:
                with pytest.raises((ValueError, TypeError), match="ttl"):
                    await lock.extend(held_before, ttl=ttl)  # type: ignore[arg-type]
        for timeout in BAD_TIMEOUTS:
            with pytest.raises((ValueError, TypeError), match="timeout"):
                await lock.acquire("bad-timeout", timeout=timeout)  # type: ignore[arg-type]
        for bad_lease in [None, "lease", held_before.token]:
            with pytest.raises(TypeError, match="lease"):
                await lock.release(bad_lease)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="lease"):
                await lock.extend(bad_lease)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError), match="renew_every"):
            async with lock.hold("bad-renew", ttl=1.0, renew_every=2.0):
                pass  # pragma: no cover
        with pytest.raises((ValueError, TypeError), match="max_hold"):
            async with lock.hold("bad-max-hold", max_hold=-1):
                pass  # pragma: no cover
        # Nothing changed: the one key held is still held by the same lease, and no other.
        infos = await lock.held()
        assert [(i.key, i.fence, i.waiters) for i in infos] == [("bad-input", held_before.fence, 0)]
        assert await lock.release(held_before)


def backend_conformance(
    factory: Callable[[], ThreadLock | Awaitable[ThreadLock]],
    *,
    anyio_backends: Iterable[str] = ("asyncio",),
    **attributes: Any,
) -> type[BackendConformance]:
    """Build a test class running :class:`BackendConformance` on backends from ``factory``.

    Assign the result to a ``Test*`` name in a test module. ``anyio_backends`` names the event
    loops to run on; ``attributes`` override class attributes such as ``short_ttl``.
    """
    backends = list(anyio_backends)

    class Suite(BackendConformance):
        @pytest.fixture(params=backends)
        def anyio_backend(self, request: pytest.FixtureRequest) -> str:
            return str(request.param)

        @pytest.fixture
        async def lock(self) -> AsyncIterator[ThreadLock]:
            made = factory()
            backend = await made if inspect.isawaitable(made) else made
            try:
                yield backend
            finally:
                await backend.aclose()

    for name, value in attributes.items():
        if not hasattr(BackendConformance, name):
            raise TypeError(f"{name} is not a setting of BackendConformance")
        setattr(Suite, name, value)
    return Suite
