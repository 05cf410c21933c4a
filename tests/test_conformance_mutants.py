"""The conformance suite can fail: each deliberately broken backend is caught by its test.

Each mutant below breaks one promise of the memory backend; running the suite against it must
fail exactly the tests that guard that promise (and the suite passes on the real backend, in
``test_memory_conformance.py``).
"""

from __future__ import annotations

import textwrap

import pytest

MUTANTS = textwrap.dedent(
    '''
    import time
    from collections import deque

    import anyio

    from threadlock import Lease, LeaseLost, MemoryThreadLock
    from threadlock.testing import backend_conformance


    class NoTokenCheck(MemoryThreadLock):
        """release ignores the token: anyone with the key can release."""

        async def _release(self, lease):
            entry = self._current(lease.key)
            if entry is None or entry.holder is None:
                return False
            self._grant_next(lease.key, entry)
            return True


    class Lifo(MemoryThreadLock):
        """the newest waiter is served first."""

        def _grant_next(self, key, entry):
            entry.waiters = deque(reversed(entry.waiters))
            super()._grant_next(key, entry)
            entry.waiters = deque(reversed(entry.waiters))


    class TimerWake(MemoryThreadLock):
        """release frees the key but wakes nobody: waiters find out by their TTL fallback."""

        def _grant_next(self, key, entry):
            if entry.holder is not None and entry.holder.deadline > time.monotonic():
                entry.holder.deadline = time.monotonic() + 1e-9  # looks expired; nobody told
                return
            super()._grant_next(key, entry)


    class StuckFence(MemoryThreadLock):
        """every holder gets the same fence."""

        def _next_fence(self):
            return 7


    class NeverExpires(MemoryThreadLock):
        """leases never expire."""

        def _current(self, key):
            entry = self._entries.get(key)
            if entry is not None and entry.holder is None:
                self._grant_next(key, entry)
                entry = self._entries.get(key)
            return entry


    class LeakOnCancel(MemoryThreadLock):
        """a waiter cancelled at the grant keeps the key."""

        def _give_back(self, lease):
            pass


    class Barging(MemoryThreadLock):
        """release frees the key and wakes the head waiter, but anyone may take it first."""

        async def _acquire(self, key, ttl, timeout):
            entry = self._entries.get(key)
            if entry is not None and entry.holder is None:
                holder = self._new_holder(ttl, self._task_owner())
                entry.holder = holder
                return holder.lease(key)
            return await super()._acquire(key, ttl, timeout)

        def _grant_next(self, key, entry):
            if entry.waiters and entry.holder is not None:
                entry.holder = None
                entry.waiters[0].event.set()
                return
            super()._grant_next(key, entry)


    class NoWaiterCount(MemoryThreadLock):
        """inspect reports no waiters."""

        def _info(self, key, entry):
            info = super()._info(key, entry)
            return None if info is None else info.__class__(
                info.key, info.fence, info.owner, info.acquired_at, info.expires_at, 0, None
            )


    class ExtendRevives(MemoryThreadLock):
        """extend accepts an expired lease that nobody took."""

        async def _extend(self, lease, ttl):
            entry = self._entries.get(lease.key)
            if entry is not None and entry.holder is not None and entry.holder.token == lease.token:
                entry.holder.deadline = time.monotonic() + ttl
            return await super()._extend(lease, ttl)


    class KeepsStaleWaiter(MemoryThreadLock):
        """a waiter that timed out stays queued and is granted the key later."""

        async def _acquire(self, key, ttl, timeout):
            try:
                return await super()._acquire(key, ttl, timeout)
            except Exception:
                entry = self._entries.get(key)
                if entry is not None:
                    from threadlock.backends.memory import _Waiter
                    entry.waiters.appendleft(_Waiter(ttl, "ghost"))
                raise


    class NoRenewal(MemoryThreadLock):
        """extend does nothing (the lease runs out under a renewing hold())."""

        async def _extend(self, lease, ttl):
            entry = self._current(lease.key)
            if entry is None or entry.holder is None or entry.holder.token != lease.token:
                raise LeaseLost(lease.key, lease.fence)
            return entry.holder.lease(lease.key)


    class AcceptsAnyKey(MemoryThreadLock):
        """argument checks skipped: bad keys reach the backend."""

        async def acquire(self, key, *, ttl=30.0, timeout=300.0):
            return await self._acquire(key, ttl, timeout)

        async def inspect(self, key):
            return await self._inspect(key)


    class GhostOnCancel(MemoryThreadLock):
        """a cancelled waiter leaves a ghost in the queue, which is later granted the key."""

        async def _acquire(self, key, ttl, timeout):
            try:
                return await super()._acquire(key, ttl, timeout)
            except anyio.get_cancelled_exc_class():
                entry = self._entries.get(key)
                if entry is not None:
                    from threadlock.backends.memory import _Waiter
                    entry.waiters.append(_Waiter(ttl, "ghost"))
                raise


    class HeldForgetsKeys(MemoryThreadLock):
        """held() lists only one key."""

        async def _held(self):
            return (await super()._held())[:1]


    class FailFastWaits(MemoryThreadLock):
        """timeout=0 waits instead of failing at once."""

        async def _acquire(self, key, ttl, timeout):
            return await super()._acquire(key, ttl, None if timeout == 0 else timeout)
    '''
)

# mutant -> the conformance tests (by -k expression) that must fail against it
CAUGHT_BY = {
    "NoTokenCheck": "test_forged_token_cannot_release_or_extend",
    "Barging": "test_no_self_reacquire_while_others_wait",
    "Lifo": "test_fifo_order",
    "TimerWake": "test_handoff_is_notified_not_polled",
    "StuckFence": "test_fences_strictly_increase or test_mutual_exclusion",
    "NeverExpires": "test_expired_lease_is_taken_and_old_lease_is_dead",
    "LeakOnCancel": "test_waiter_cancelled_at_grant_passes_key_on",
    "NoWaiterCount": "test_inspect_and_held_fields",
    "ExtendRevives": "test_extend_after_expiry_raises_even_if_nobody_took_it",
    "KeepsStaleWaiter": "test_timeout_raises_after_waiting_and_leaves_queue",
    "NoRenewal": "test_renewal_keeps_lease_past_three_ttls",
    "AcceptsAnyKey": "test_bad_input_names_the_argument_and_changes_nothing",
    "GhostOnCancel": "test_cancellation_storm_leaves_nothing_held",
    "HeldForgetsKeys": "test_unusual_keys_are_plain_keys",
    "FailFastWaits": "test_fail_fast_raises_thread_busy_at_once",
}


@pytest.mark.parametrize("mutant", sorted(CAUGHT_BY))
def test_suite_catches_mutant(pytester: pytest.Pytester, mutant: str) -> None:
    pytester.makepyfile(
        mutants=MUTANTS,
        test_mutant=(
            f"from mutants import {mutant}, backend_conformance\n"
            f"TestMutant = backend_conformance({mutant})\n"
        ),
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=no",
        "-rf",
        "-k",
        CAUGHT_BY[mutant],
        "-o",
        "timeout=60",
    )
    # exit code 1 means tests ran and some failed (5 would mean none was selected)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, (
        result.ret,
        result.stdout.str()[-3000:],
        result.stderr.str()[-3000:],
    )
