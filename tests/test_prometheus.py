"""PrometheusObserver: values read back from a CollectorRegistry after real scenarios."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry
from tests._inbox_burst import burst_with_a_dead_letter

from threadlock import (
    BackendError,
    Inbox,
    Lease,
    LeaseLost,
    LoggingObserver,
    MemoryThreadLock,
    ThreadBusy,
    combine,
    set_default_observer,
)
from threadlock.openai import guard_thread, recover_orphaned_runs
from threadlock.prometheus import PrometheusObserver
from threadlock.protocol import RunRecord
from threadlock.testing import FakeOpenAI

pytestmark = [
    pytest.mark.anyio,
    # the thread guard and recovery drive the SDK's Assistants API, which warns on every call
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]

MEMORY = {"backend": "memory"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _restore_default_observer() -> Iterator[None]:
    yield
    set_default_observer(None)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def lock(registry: CollectorRegistry) -> AsyncIterator[MemoryThreadLock]:
    async with MemoryThreadLock() as backend:
        backend.observer = PrometheusObserver(registry)
        yield backend


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, {**MEMORY, **labels})
    return 0.0 if found is None else found


class FlakyRenewals(MemoryThreadLock):
    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        raise BackendError("backend unreachable (test)")


async def test_hold_counts_wait_hold_renewals_and_locks_held(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    async with lock.hold("k", ttl=0.3, renew_every=0.05):
        assert value(registry, "threadlock_locks_held") == 1
        await anyio.sleep(0.2)
    assert value(registry, "threadlock_locks_held") == 0
    count = "threadlock_acquire_wait_seconds_count"
    assert value(registry, count, outcome="acquired") == 1
    assert value(registry, "threadlock_hold_seconds_count") == 1
    assert value(registry, "threadlock_hold_seconds_sum") >= 0.15
    assert value(registry, "threadlock_renewals_total") >= 2
    assert value(registry, "threadlock_busy_total", reason="lock") == 0
    assert value(registry, "threadlock_leases_lost_total") == 0


async def test_contention_counts_busy_and_the_wait(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    first = await lock.acquire("k", ttl=10)
    with pytest.raises(ThreadBusy):
        await lock.acquire("k", timeout=0)
    with pytest.raises(ThreadBusy):
        await lock.acquire("k", timeout=0.1)

    async def release_later() -> None:
        await anyio.sleep(0.2)
        await lock.release(first)

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_later)
        second = await lock.acquire("k", timeout=5)
    assert value(registry, "threadlock_busy_total", reason="lock") == 2
    assert value(registry, "threadlock_acquire_wait_seconds_count", outcome="busy") == 2
    assert value(registry, "threadlock_acquire_wait_seconds_count", outcome="acquired") == 2
    # the second grant waited about 0.2 s: it falls in the 0.25 s bucket, not the 0.1 s one
    bucket = "threadlock_acquire_wait_seconds_bucket"
    assert value(registry, bucket, outcome="acquired", le="0.1") == 1
    assert value(registry, bucket, outcome="acquired", le="0.25") == 2
    assert value(registry, "threadlock_locks_held") == 1
    await lock.release(second)
    await lock.release(second)  # a second release of the same lease changes nothing
    assert value(registry, "threadlock_locks_held") == 0
    assert value(registry, "threadlock_hold_seconds_count") == 2


async def test_a_lease_refused_at_renewal_is_lost(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    with pytest.raises(LeaseLost):
        async with lock.hold("k", ttl=0.3, renew_every=0.05) as lease:
            await lock.release(lease)  # freed under the holder
            await anyio.sleep(5)
    assert value(registry, "threadlock_leases_lost_total") == 1
    assert value(registry, "threadlock_locks_held") == 0


async def test_a_lease_expired_while_renewals_failed_is_lost(registry: CollectorRegistry) -> None:
    async with FlakyRenewals() as lock:
        lock.observer = PrometheusObserver(registry)
        with pytest.raises(LeaseLost):
            async with lock.hold("k", ttl=0.3, renew_every=0.1):
                await anyio.sleep(5)
    assert value(registry, "threadlock_leases_lost_total") == 1
    assert value(registry, "threadlock_locks_held") == 0
    assert value(registry, "threadlock_hold_seconds_count") == 1  # released after the loss
    assert value(registry, "threadlock_renewals_total") == 0


class FailingRelease(MemoryThreadLock):
    async def _release(self, lease: Lease) -> bool:
        raise BackendError("backend unreachable (test)")


class StuckRelease(MemoryThreadLock):
    async def _release(self, lease: Lease) -> bool:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", [FailingRelease, StuckRelease])
async def test_a_failed_or_timed_out_release_is_reported_as_a_release(
    kind: type[MemoryThreadLock], registry: CollectorRegistry
) -> None:
    async with kind(release_timeout=0.05) as lock:
        lock.observer = PrometheusObserver(registry)
        async with lock.hold("k", ttl=5):
            assert value(registry, "threadlock_locks_held") == 1
        assert value(registry, "threadlock_locks_held") == 0  # reported, outcome not released
        assert value(registry, "threadlock_hold_seconds_count") == 1
        with pytest.raises(ThreadBusy):  # the lease is still there until its TTL
            await lock.acquire("k", timeout=0)


async def test_a_release_cut_off_by_cancellation_is_reported_as_a_release(
    registry: CollectorRegistry,
) -> None:
    async with StuckRelease(release_timeout=0.05) as lock:
        lock.observer = PrometheusObserver(registry)
        with anyio.CancelScope() as outer:
            async with lock.hold("k", ttl=5):
                outer.cancel()
                await anyio.sleep_forever()
        assert outer.cancelled_caught
        assert value(registry, "threadlock_locks_held") == 0


async def test_recovery_counts_orphaned_runs_cancelled(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    orphans = []
    for _ in range(2):
        thread = fake.add_thread()
        run = fake.add_run(thread, "in_progress", age=900)
        await lock.track_run(RunRecord(thread, "run", run, thread, time.time() - 900, 1, "dead"))
        orphans.append(run)
    conversation = fake.add_conversation()
    response = fake.add_background_response(conversation, "in_progress", age=900)
    record = RunRecord(conversation, "response", response, conversation, time.time() - 900, 1, "x")
    await lock.track_run(record)
    live_thread = fake.add_thread()
    live_run = fake.add_run(live_thread, "in_progress", age=900)
    await lock.track_run(
        RunRecord(live_thread, "run", live_run, live_thread, time.time() - 900, 1, "alive")
    )
    await lock.acquire(live_thread, ttl=60)  # a live worker holds this one

    report = await recover_orphaned_runs(client, lock=lock, max_age=300)

    assert sorted(report.cancelled) == sorted([*orphans, response])
    name = "threadlock_orphaned_runs_cancelled_total"
    assert value(registry, name, kind="run") == 2
    assert value(registry, name, kind="response") == 1
    # recovery probes each conversation with timeout=0: the live one counts as busy
    assert value(registry, "threadlock_busy_total", reason="lock") == 1
    assert value(registry, "threadlock_locks_held") == 1  # only the live worker's lease


async def test_guard_busy_is_labelled_by_reason(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    fake = FakeOpenAI(poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    fake.add_run(thread, "requires_action")
    with pytest.raises(ThreadBusy):
        async with guard_thread(client, thread, lock=lock, timeout=0.2):
            pass
    assert value(registry, "threadlock_busy_total", reason="run") == 1
    assert value(registry, "threadlock_busy_total", reason="lock") == 0
    assert value(registry, "threadlock_locks_held") == 0


async def test_observers_on_one_registry_share_the_metrics(registry: CollectorRegistry) -> None:
    first, second = PrometheusObserver(registry), PrometheusObserver(registry)
    set_default_observer(combine(LoggingObserver(), second))
    async with MemoryThreadLock() as one, MemoryThreadLock() as two:
        one.observer = first
        await one.release(await one.acquire("a"))
        await two.release(await two.acquire("b"))  # through the default
    assert value(registry, "threadlock_acquire_wait_seconds_count", outcome="acquired") == 2
    other = CollectorRegistry()
    PrometheusObserver(other, namespace="bots")
    names = {m.name for m in other.collect()}
    assert "bots_busy" in names
    assert "bots_locks_held" in names


async def test_inbox_batch_sizes_pending_and_dead_letters(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    await burst_with_a_dead_letter(lock)
    assert value(registry, "threadlock_inbox_batch_size_count") == 3
    assert value(registry, "threadlock_inbox_batch_size_sum") == 4  # 1 + 2 on chat, 1 on bad
    assert value(registry, "threadlock_inbox_batch_size_bucket", le="1.0") == 2
    assert value(registry, "threadlock_inbox_dead_letters_total") == 1
    assert value(registry, "threadlock_inbox_pending") == 0  # every key released, empty


async def test_the_pending_gauge_counts_what_waits_on_owned_keys(
    lock: MemoryThreadLock, registry: CollectorRegistry
) -> None:
    inbox = Inbox(lock)
    seen: list[float] = []
    async with inbox.turns("chat", "m0", id="m0") as turns:
        async for batch in turns:
            seen.append(value(registry, "threadlock_inbox_pending"))
            if batch.messages[0].id == "m0":
                for index in (1, 2):
                    async with inbox.turns("chat", f"m{index}", id=f"m{index}") as others:
                        async for _ in others:
                            pytest.fail("the key is owned")
    assert seen == [1, 2]  # read when each batch was taken
    assert value(registry, "threadlock_inbox_pending") == 0


def test_no_key_in_any_label(registry: CollectorRegistry) -> None:
    PrometheusObserver(registry)
    for metric in registry.collect():
        for sample in metric.samples:
            assert "key" not in sample.labels


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"threadlock\[prometheus\]"):
        PrometheusObserver()


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="registry"):
        PrometheusObserver(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace"):
        PrometheusObserver(CollectorRegistry(), namespace=1)  # type: ignore[arg-type]
