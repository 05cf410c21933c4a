"""The observer hooks and the stable log events (SPEC §5), on the memory backend."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import anyio
import pytest
from tests._inbox_burst import burst_with_a_dead_letter

import threadlock
import threadlock.backends.base as base_module
from threadlock import (
    BackendError,
    BaseThreadLock,
    Lease,
    LeaseLost,
    LockInfo,
    LoggingObserver,
    MemoryThreadLock,
    Observer,
    ThreadBusy,
    combine,
    get_default_observer,
    set_default_observer,
)
from threadlock.observe import CombinedObserver, backend_kind, observer_of
from threadlock.openai import guard_conversation, guard_thread, recover_orphaned_runs
from threadlock.protocol import RunRecord
from threadlock.testing import FakeOpenAI

pytestmark = [
    pytest.mark.anyio,
    # the thread guard and recovery drive the SDK's Assistants API, which warns on every call
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _restore_default_observer() -> Iterator[None]:
    yield
    set_default_observer(None)


@pytest.fixture
async def lock() -> AsyncIterator[MemoryThreadLock]:
    async with MemoryThreadLock() as backend:
        yield backend


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[Any]:
    """The ``name`` events this test logged. caplog sees every thread of the process, and
    under xdist a worker's earlier tests may leave a thread at work (the sync face's loop,
    a pool): only the test's own thread's records are its own."""
    me = threading.get_ident()
    return [r for r in caplog.records if getattr(r, "event", None) == name and r.thread == me]


class Recorder(Observer):
    """Records every hook call as a tuple."""

    def __init__(self, waiting_interval: float | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._every = waiting_interval

    @property
    def waiting_interval(self) -> float | None:
        return self._every

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        self.calls.append(("acquired", backend, key, fence, waited))

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        self.calls.append(("busy", backend, key, waited, reason))

    def waiting(self, backend: str, key: str, waited: float) -> None:
        self.calls.append(("waiting", backend, key, waited))

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        self.calls.append(("released", backend, key, fence, held_for, released))

    def renewed(self, backend: str, key: str, fence: int) -> None:
        self.calls.append(("renewed", backend, key, fence))

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self.calls.append(("lost", backend, key, fence, detail))

    def renew_failed(
        self, backend: str, key: str, fence: int, error: BaseException, left: float
    ) -> None:
        self.calls.append(("renew_failed", backend, key, fence))

    def release_failed(
        self, backend: str, key: str, fence: int, error: BaseException | None, timeout: float
    ) -> None:
        self.calls.append(("release_failed", backend, key, fence, error))

    def hold_scope(self, backend: str, key: str) -> Any:
        return _RecordedScope(self, "hold", key)

    def inbox_posted(self, backend: str, key: str, message_id: str, stored: bool) -> None:
        self.calls.append(("inbox_posted", backend, key, message_id, stored))

    def inbox_batch(
        self, backend: str, key: str, fence: int, size: int, skipped: int, attempt: int
    ) -> None:
        self.calls.append(("inbox_batch", backend, key, fence, size, skipped, attempt))

    def inbox_pending(self, backend: str, key: str, pending: int) -> None:
        self.calls.append(("inbox_pending", backend, key, pending))

    def inbox_superseded(self, backend: str, key: str, fence: int) -> None:
        self.calls.append(("inbox_superseded", backend, key, fence))

    def inbox_dead_letter(self, backend: str, key: str, message_id: str, attempts: int) -> None:
        self.calls.append(("inbox_dead_letter", backend, key, message_id, attempts))

    def turn_scope(self, api: str, backend: str, key: str) -> Any:
        return _RecordedScope(self, f"turn:{api}", key)

    def orphan_cancelled(self, backend: str, key: str, kind: str, run_id: str) -> None:
        self.calls.append(("orphan_cancelled", backend, key, kind, run_id))


class _RecordedScope:
    def __init__(self, recorder: Recorder, name: str, key: str) -> None:
        self.recorder = recorder
        self.name = name
        self.key = key

    def __enter__(self) -> None:
        self.recorder.calls.append((f"{self.name}.enter", self.key))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.recorder.calls.append((f"{self.name}.exit", self.key, exc_type))
        return True  # must be ignored: a scope never swallows an exception


class Exploding(Observer):
    """Every hook raises; so do its scopes."""

    @property
    def waiting_interval(self) -> float | None:
        raise RuntimeError("waiting_interval")

    def acquired(self, backend: str, key: str, fence: int, waited: float) -> None:
        raise RuntimeError("acquired")

    def busy(self, backend: str, key: str, waited: float, reason: str) -> None:
        raise RuntimeError("busy")

    def released(self, backend: str, key: str, fence: int, held_for: float, released: bool) -> None:
        raise RuntimeError("released")

    def renewed(self, backend: str, key: str, fence: int) -> None:
        raise RuntimeError("renewed")

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        raise RuntimeError("lost")

    def hold_scope(self, backend: str, key: str) -> Any:
        raise RuntimeError("hold_scope")

    def turn_scope(self, api: str, backend: str, key: str) -> Any:
        return _ExplodingScope()


class _ExplodingScope:
    def __enter__(self) -> None:
        raise RuntimeError("enter")

    def __exit__(self, *exc: object) -> None:
        raise RuntimeError("exit")


class FlakyRenewals(MemoryThreadLock):
    """Renewals fail as if the backend were unreachable."""

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        raise BackendError("backend unreachable (test)")


class FailingRelease(MemoryThreadLock):
    async def _release(self, lease: Lease) -> bool:
        raise BackendError("backend unreachable (test)")


# -- the log events --------------------------------------------------------------------------


async def test_acquired_and_released_are_debug_events_with_their_fields(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="threadlock")
    lease = await lock.acquire("conv-1", ttl=10)
    assert await lock.release(lease) is True
    assert await lock.release(lease) is False
    (acquired,) = events(caplog, "lock.acquired")
    assert acquired.levelno == logging.DEBUG
    assert acquired.name == "threadlock"
    assert (acquired.key, acquired.fence, acquired.backend) == ("conv-1", lease.fence, "memory")
    assert 0 <= acquired.waited < 1
    first, second = events(caplog, "lock.released")
    assert first.levelno == logging.DEBUG
    assert (first.key, first.fence, first.released) == ("conv-1", lease.fence, True)
    assert second.released is False
    assert 0 <= first.held_for < 1


async def test_busy_is_an_info_event(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    await lock.acquire("k", ttl=10)
    with pytest.raises(ThreadBusy):
        await lock.acquire("k", timeout=0)
    with pytest.raises(ThreadBusy):
        await lock.acquire("k", timeout=0.05)
    busy = events(caplog, "lock.busy")
    assert [(r.levelno, r.key, r.reason, r.backend) for r in busy] == [
        (logging.INFO, "k", "lock", "memory")
    ] * 2
    assert busy[1].waited >= 0.04
    assert events(caplog, "lock.acquired") == []  # DEBUG is off


async def test_waiting_is_reported_at_most_once_per_interval_while_queued(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    lock.observer = LoggingObserver(waiting_interval=0.1)
    first = await lock.acquire("k", ttl=10)

    async def release_later() -> None:
        await anyio.sleep(0.55)
        await lock.release(first)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(release_later)
        second = await lock.acquire("k", timeout=5)
    took = time.monotonic() - started
    waiting = events(caplog, "lock.waiting")
    assert 2 <= len(waiting) <= int(took / 0.1)
    assert all((r.key, r.backend, r.levelno) == ("k", "memory", logging.INFO) for r in waiting)
    waited = [r.waited for r in waiting]
    assert waited[0] >= 0.1
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(waited))
    await anyio.sleep(0.25)  # the report stopped with the acquire
    assert len(events(caplog, "lock.waiting")) == len(waiting)
    await lock.release(second)


async def test_default_interval_keeps_short_waits_quiet(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    first = await lock.acquire("k", ttl=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _release_after(lock, first, 0.3))
        await lock.acquire("k", timeout=5)
    assert events(caplog, "lock.waiting") == []  # 5 s by default


async def _release_after(lock: MemoryThreadLock, lease: Lease, delay: float) -> None:
    await anyio.sleep(delay)
    await lock.release(lease)


async def test_a_cancelled_waiter_stops_reporting_and_leaves_the_queue(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    lock.observer = LoggingObserver(waiting_interval=0.05)
    await lock.acquire("k", ttl=10)
    with anyio.move_on_after(0.2) as scope:
        await lock.acquire("k", timeout=None)
    assert scope.cancelled_caught
    count = len(events(caplog, "lock.waiting"))
    assert count >= 1
    await anyio.sleep(0.2)
    assert len(events(caplog, "lock.waiting")) == count
    info = await lock.inspect("k")
    assert info is not None
    assert info.waiters == 0


async def test_the_fast_path_arms_no_timer(
    lock: MemoryThreadLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    armed: list[object] = []
    original_init = base_module._WaitReport.__init__
    original_arm = base_module._WaitReport.arm

    # The patched class is the process's: record only the reports of this test's own
    # thread and lock (an earlier test of this xdist worker may leave a thread acquiring).
    me = threading.get_ident()
    keys = {"k", "free"}

    def init(self: Any, *args: Any) -> None:
        original_init(self, *args)
        if threading.get_ident() == me and self._key in keys:
            built.append(self)

    def arm(self: Any) -> None:
        if threading.get_ident() == me and self._key in keys:
            armed.append(self)
        original_arm(self)

    monkeypatch.setattr(base_module._WaitReport, "__init__", init)
    monkeypatch.setattr(base_module._WaitReport, "arm", arm)

    # The lock reports to a logger of this test's own: the shared "threadlock" logger's
    # enabled-level cache can be refilled by another thread of the worker (a sync face's loop
    # left by an earlier test) between caplog's set_level and the acquire.
    own = logging.getLogger(f"threadlock.test.fast_path.{id(lock)}")
    lock.observer = LoggingObserver(own)
    own.setLevel(logging.WARNING)  # lock.waiting is off: no timing
    first = await lock.acquire("k", ttl=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _release_after(lock, first, 0.05))
        second = await lock.acquire("k", timeout=5)
    await lock.release(second)
    assert built == []

    own.setLevel(logging.INFO)
    lease = await lock.acquire("free", ttl=10)  # completes without suspending: none built
    assert built == []
    assert armed == []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _release_after(lock, lease, 0.05))
        await lock.acquire("free", timeout=5)  # waits: one report, its timer armed once
    assert len(built) == 1
    assert len(armed) == 1
    with pytest.raises(ThreadBusy):
        await lock.acquire("free", timeout=0)  # fail-fast never waits: nothing built
    assert len(built) == 1


async def test_hold_reports_lost_when_renewal_is_refused(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="threadlock")
    recorder = Recorder()
    lock.observer = combine(LoggingObserver(), recorder)
    with pytest.raises(LeaseLost):
        async with lock.hold("k", ttl=0.3, renew_every=0.05) as lease:
            await anyio.sleep(0.12)  # at least one renewal
            assert await lock.release(lease)  # someone frees it under us
            await anyio.sleep(5)
    (lost,) = events(caplog, "lock.lost")
    assert lost.levelno == logging.WARNING
    assert (lost.key, lost.fence, lost.backend) == ("k", lease.fence, "memory")
    assert events(caplog, "lock.renewed")[0].fence == lease.fence
    names = recorder.names()
    assert names[0] == "hold.enter"
    assert names[1] == "acquired"
    assert "renewed" in names
    assert names.count("lost") == 1  # reported by the lock, not again by hold()
    assert names[-2:] == ["released", "hold.exit"]
    assert recorder.calls[-2][-1] is False  # the final release found it gone
    assert recorder.calls[-1][2] is LeaseLost  # the scope saw the block's outcome


async def test_hold_reports_a_lease_that_expired_while_renewals_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    async with FlakyRenewals() as lock:
        with pytest.raises(LeaseLost):
            async with lock.hold("k", ttl=0.3, renew_every=0.1):
                await anyio.sleep(5)
    assert len(events(caplog, "lock.renew_failed")) >= 1
    (lost,) = events(caplog, "lock.lost")
    assert "not renewed before it expired" in lost.getMessage()
    assert lost.backend == "memory"  # a subclass of a backend keeps its kind


async def test_a_failed_release_is_a_warning_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    async with FailingRelease() as lock:
        async with lock.hold("k", ttl=5) as lease:
            pass
    (failed,) = events(caplog, "lock.release_failed")
    assert failed.levelno == logging.WARNING
    assert (failed.key, failed.fence) == ("k", lease.fence)
    assert failed.exc_info is not None
    assert isinstance(failed.exc_info[1], BackendError)


async def test_guard_events(lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="threadlock")
    fake = FakeOpenAI(poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    other = fake.add_run(thread, "in_progress", completes_in=1.5)
    async with guard_thread(client, thread, lock=lock):
        pass
    (waiting,) = events(caplog, "run.waiting")
    assert waiting.levelno == logging.INFO
    assert (waiting.key, waiting.run_id, waiting.kind, waiting.status) == (
        thread,
        other,
        "run",
        "in_progress",
    )
    started, ended = events(caplog, "turn.started"), events(caplog, "turn.ended")
    assert [(r.api, r.key) for r in started] == [("thread", thread)]
    assert ended[0].outcome == "ok"


async def test_inbox_events(lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="threadlock")
    await burst_with_a_dead_letter(lock)
    posted = events(caplog, "inbox.posted")
    assert [(r.key, r.message_id, r.stored) for r in posted] == [
        ("chat", "m0", True),
        ("chat", "m1", True),
        ("chat", "m2", True),
        ("chat", "m1", False),
        ("bad", "x", True),
    ]
    assert {r.backend for r in posted} == {"memory"}
    batches = events(caplog, "inbox.batch")
    assert [(r.key, r.size, r.skipped, r.attempt) for r in batches] == [
        ("chat", 1, 0, 1),
        ("chat", 2, 0, 1),
        ("bad", 1, 0, 1),
    ]
    assert batches[0].fence == batches[1].fence  # one owner, one lease, two batches
    (superseded,) = events(caplog, "inbox.superseded")
    assert (superseded.key, superseded.fence) == ("chat", batches[0].fence)
    (dead,) = events(caplog, "inbox.dead_letter")
    assert dead.levelno == logging.WARNING
    assert (dead.key, dead.message_id, dead.attempts) == ("bad", "x", 1)


async def test_inbox_hooks_reach_every_combined_member(lock: MemoryThreadLock) -> None:
    first, second = Recorder(), Recorder()
    lock.observer = combine(first, second)
    await burst_with_a_dead_letter(lock)
    for recorder in (first, second):
        hooks = [call[0] for call in recorder.calls if call[0].startswith("inbox_")]
        assert hooks.count("inbox_posted") == 5
        assert hooks.count("inbox_batch") == 3
        assert hooks.count("inbox_superseded") == 1
        assert hooks.count("inbox_dead_letter") == 1
        pending = [c[1:] for c in recorder.calls if c[0] == "inbox_pending"]
        assert pending[-1] == ("memory", "bad", 0)


async def test_conversation_locked_then_busy(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    fake.add_background_response(conversation, "in_progress")  # started outside the lock
    with pytest.raises(ThreadBusy):
        async with guard_conversation(client, conversation, lock=lock, timeout=0.4) as turn:
            await turn.create(model="m", input="x")
    assert len(events(caplog, "run.conversation_locked")) >= 1
    (busy,) = events(caplog, "lock.busy")
    assert (busy.key, busy.reason) == (conversation, "conversation_locked")


async def test_recovery_events(lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="threadlock")
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    thread = fake.add_thread()
    run = fake.add_run(thread, "in_progress", age=900)
    await lock.track_run(RunRecord(thread, "run", run, thread, time.time() - 900, 1, "dead"))
    fake.inject("POST", "/threads/{thread_id}/runs/{run_id}/cancel", status=429, count=1)
    report = await recover_orphaned_runs(client, lock=lock)
    assert report.cancelled == [run]
    (retry,) = events(caplog, "recovery.retry")
    assert retry.error == "RateLimitError"
    (cancelled,) = events(caplog, "run.orphan_cancelled")
    assert cancelled.levelno == logging.WARNING
    assert (cancelled.run_id, cancelled.kind, cancelled.key, cancelled.backend) == (
        run,
        "run",
        thread,
        "memory",
    )


# -- the observer API ------------------------------------------------------------------------


async def test_observer_property_setter_and_default(lock: MemoryThreadLock) -> None:
    initial: Observer = lock.observer
    assert type(initial) is LoggingObserver
    assert initial is get_default_observer()
    recorder = Recorder()
    set_default_observer(recorder)
    assert lock.observer is recorder
    await lock.release(await lock.acquire("k"))  # existing locks follow the default
    assert recorder.names() == ["acquired", "released"]
    mine = Recorder()
    lock.observer = mine
    assert lock.observer is mine
    await lock.release(await lock.acquire("k"))
    assert mine.names() == ["acquired", "released"]
    assert recorder.names() == ["acquired", "released"]
    lock.observer = None
    assert lock.observer is recorder
    with pytest.raises(TypeError, match="observer"):
        lock.observer = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="observer"):
        set_default_observer(print)  # type: ignore[arg-type]
    set_default_observer(None)
    assert isinstance(get_default_observer(), LoggingObserver)


class TinyThreadLock(BaseThreadLock):
    """A user backend taking ``observer=`` through to the base class."""

    def __init__(self, *, observer: Observer | None = None) -> None:
        super().__init__(observer=observer)
        self.memory = MemoryThreadLock()

    async def _acquire(self, key: str, ttl: float, timeout: float | None) -> Lease:
        return await self.memory.acquire(key, ttl=ttl, timeout=timeout)

    async def _release(self, lease: Lease) -> bool:
        return await self.memory.release(lease)

    async def _extend(self, lease: Lease, ttl: float) -> Lease:
        return await self.memory.extend(lease, ttl=ttl)

    async def _inspect(self, key: str) -> LockInfo | None:
        return await self.memory.inspect(key)

    async def _held(self) -> list[LockInfo]:
        return await self.memory.held()


async def test_constructor_argument_and_backend_kind() -> None:
    recorder = Recorder()
    lock = TinyThreadLock(observer=recorder)
    assert lock.observer is recorder
    await lock.release(await lock.acquire("k"))
    assert [c[:2] for c in recorder.calls] == [("acquired", "tiny"), ("released", "tiny")]
    assert MemoryThreadLock.backend_kind == "memory"
    assert FlakyRenewals.backend_kind == "memory"  # a backend's subclass keeps its kind

    class Custom(MemoryThreadLock):
        backend_kind = "custom"

    class CustomChild(Custom):
        pass

    assert CustomChild.backend_kind == "custom"
    assert backend_kind(CustomChild()) == "custom"
    assert backend_kind(object()) == "object"
    assert observer_of(object()) is get_default_observer()


async def test_a_failing_observer_never_breaks_locking(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="threadlock")
    recorder = Recorder()
    lock.observer = combine(Exploding(), recorder)
    for _ in range(2):
        async with lock.hold("k", ttl=0.3, renew_every=0.05) as lease:
            await anyio.sleep(0.12)
        first = await lock.acquire("k")
        with pytest.raises(ThreadBusy):
            await lock.acquire("k", timeout=0.05)
        await lock.release(first)
    assert await lock.inspect("k") is None
    assert recorder.names().count("acquired") == 4  # the other observer still hears all
    assert recorder.names().count("busy") == 2
    failed = events(caplog, "observer.failed")
    hooks = sorted(r.hook for r in failed)
    assert hooks == sorted(
        ["waiting_interval", "acquired", "busy", "released", "renewed", "hold_scope"]
    )  # each failing hook is logged once, however often it fails
    assert all(r.observer == "Exploding" and r.exc_info for r in failed)
    assert lease.key == "k"


async def test_a_failing_observer_set_alone_is_shielded(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="threadlock")
    exploding = Exploding()
    lock.observer = exploding
    assert lock.observer is exploding
    with pytest.raises(LookupError):  # the body's own error comes out as itself
        async with lock.hold("k"):
            raise LookupError("body")
    assert await lock.inspect("k") is None
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        await turn.create(model="m", input="hi")
    hooks = {r.hook for r in events(caplog, "observer.failed")}
    assert {"scope.__enter__", "hold_scope", "acquired", "released"} <= hooks
    assert "scope.__exit__" not in hooks  # a scope that failed to enter is not exited


async def test_a_failing_log_filter_never_breaks_locking(
    lock: MemoryThreadLock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadlock.observe import log_events

    monkeypatch.setattr(log_events, "_emit_failed", [])

    def explode(record: logging.LogRecord) -> bool:
        raise RuntimeError("filter")

    caplog.set_level(logging.DEBUG, logger="threadlock")
    logging.getLogger("threadlock").addFilter(explode)
    try:
        for _ in range(2):
            async with lock.hold("k", ttl=0.3, renew_every=0.05):
                await anyio.sleep(0.08)
    finally:
        logging.getLogger("threadlock").removeFilter(explode)
    assert await lock.inspect("k") is None
    errors = [r for r in caplog.records if r.name == "threadlock.observe"]
    assert len(errors) == 1  # said once


async def test_combined_scopes_exit_in_reverse_order_and_never_swallow(
    lock: MemoryThreadLock,
) -> None:
    one, two = Recorder(), Recorder()
    shared: list[tuple[Any, ...]] = []
    one.calls = two.calls = shared
    lock.observer = combine(one, combine(two))
    assert isinstance(lock.observer, CombinedObserver)
    assert len(lock.observer.members) == 2
    with pytest.raises(KeyError):
        async with lock.hold("k"):
            raise KeyError("body")  # both scopes return True from __exit__: ignored
    scope_calls = [c for c in shared if c[0].startswith("hold")]
    assert [c[0] for c in scope_calls] == ["hold.enter", "hold.enter", "hold.exit", "hold.exit"]
    assert scope_calls[-1][2] is KeyError


async def test_turn_scope_wraps_the_hold(lock: MemoryThreadLock) -> None:
    recorder = Recorder()
    lock.observer = recorder
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        await turn.create(model="m", input="hi")
    names = recorder.names()
    assert names[:3] == ["turn:conversation.enter", "hold.enter", "acquired"]
    assert names[-3:] == ["released", "hold.exit", "turn:conversation.exit"]


async def test_guard_busy_on_an_active_run_is_reported(lock: MemoryThreadLock) -> None:
    recorder = Recorder()
    lock.observer = recorder
    fake = FakeOpenAI(poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    fake.add_run(thread, "requires_action")
    with pytest.raises(ThreadBusy):
        async with guard_thread(client, thread, lock=lock, timeout=0.2):
            pass
    (busy,) = [c for c in recorder.calls if c[0] == "busy"]
    assert busy[1:3] == ("memory", thread)
    assert busy[3] >= 0.15
    assert busy[4] == "run"
    assert recorder.calls[-1][0] == "turn:thread.exit"
    assert recorder.calls[-1][2] is ThreadBusy


async def test_waiting_goes_only_to_members_that_ask(lock: MemoryThreadLock) -> None:
    asks, quiet = Recorder(waiting_interval=0.05), Recorder()
    lock.observer = combine(quiet, asks)
    first = await lock.acquire("k", ttl=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _release_after(lock, first, 0.2))
        await lock.acquire("k", timeout=5)
    assert asks.names().count("waiting") >= 2
    assert "waiting" not in quiet.names()


def test_logging_observer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="waiting_interval"):
        LoggingObserver(waiting_interval=0)
    with pytest.raises(TypeError, match="logger"):
        LoggingObserver("threadlock")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="observers"):
        combine(object())  # type: ignore[arg-type]
    custom = logging.getLogger("myapp.locks")
    assert LoggingObserver(custom).logger is custom


def test_importing_threadlock_imports_no_optional_dependency() -> None:
    code = (
        "import sys, threadlock, threadlock.observe, threadlock.openai\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'prometheus_client', 'opentelemetry'})\n"
        "print(bad)\n"
        "import threadlock.prometheus, threadlock.otel\n"  # importable without building
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'prometheus_client', 'opentelemetry'})\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "[]"


def test_top_level_exports() -> None:
    for name in ("Observer", "LoggingObserver", "combine", "set_default_observer"):
        assert name in threadlock.__all__
