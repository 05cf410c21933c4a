"""threadlock.sync: the blocking lock, its hold(), the sync guards, threads and forks.

Redis is a private server (tests/_servers); the OpenAI side is FakeOpenAI behind a real sync
``openai.OpenAI`` client (threadlock.sync.testing).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import threadlock
import threadlock.sync
from threadlock import LeaseLost, Observer, ThreadBusy
from threadlock.sync import SyncThreadLock, guard_conversation, guard_thread
from threadlock.sync.testing import sync_client
from threadlock.testing import FakeOpenAI


class LossSignal(Observer):
    """Sets a threading.Event when a lease is found lost (the hold's renewal saw it)."""

    def __init__(self) -> None:
        self.lost_event = threading.Event()

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self.lost_event.set()


@pytest.fixture(params=["memory", "redis"])
def lock(request: pytest.FixtureRequest, prefix: str) -> Iterator[SyncThreadLock]:
    if request.param == "memory":
        sync_lock = threadlock.sync.from_url("memory://")
    else:
        url = request.getfixturevalue("redis_url")
        sync_lock = threadlock.sync.from_url(url, prefix=prefix)
    with sync_lock:
        yield sync_lock


def test_primitives_block_and_keep_the_async_semantics(lock: SyncThreadLock) -> None:
    lease = lock.acquire("conv-1", ttl=5, timeout=0)
    info = lock.inspect("conv-1")
    assert info is not None
    assert info.fence == lease.fence
    assert info.owner.endswith(f":{os.getpid()}:{threading.current_thread().name}")
    assert [i.key for i in lock.held()] == ["conv-1"]
    with pytest.raises(ThreadBusy):
        lock.acquire("conv-1", ttl=5, timeout=0)
    longer = lock.extend(lease, ttl=9)
    assert (longer.fence, longer.token) == (lease.fence, lease.token)
    assert longer.ttl == 9
    assert lock.release(longer) is True
    assert lock.release(longer) is False
    with pytest.raises(LeaseLost):
        lock.extend(longer)
    assert lock.inspect("conv-1") is None
    again = lock.acquire("conv-1", ttl=5)
    assert again.fence > lease.fence
    lock.release(again)


def test_bad_input_gets_the_async_cores_errors(lock: SyncThreadLock) -> None:
    async_lock = threadlock.MemoryThreadLock()
    for call in (
        lambda target: target.hold("", ttl=1),
        lambda target: target.hold("k", ttl=-1),
        lambda target: target.hold("k", ttl=1, renew_every=2),
    ):
        with pytest.raises(ValueError) as expected:
            call(async_lock)
        with pytest.raises(ValueError) as got:
            call(lock)
        assert str(got.value) == str(expected.value)
    with pytest.raises(TypeError, match="lease must be a threadlock.Lease"):
        lock.release("not a lease")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire("k", timeout=-1)
    with pytest.raises(ValueError, match="unknown scheme 'nope'"):
        threadlock.sync.from_url("nope://x")
    with pytest.raises(TypeError, match="url must be a str"):
        threadlock.sync.from_url(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="client must be an openai.OpenAI, not AsyncOpenAI"):
        guard_conversation(FakeOpenAI().client(), "conv", lock=lock)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lock must be a threadlock.sync.SyncThreadLock"):
        guard_thread(openai.OpenAI(api_key="sk-x"), "thread", lock=async_lock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conversation_id must not be empty"):
        guard_conversation(openai.OpenAI(api_key="sk-x"), "", lock=lock)


def test_threads_sharing_one_lock_are_excluded_and_served_first_come(
    lock: SyncThreadLock,
) -> None:
    inside: list[str] = []
    overlaps: list[tuple[str, str]] = []
    fences: list[int] = []
    mutex = threading.Lock()
    gate = threading.Event()
    queued = threading.Barrier(9)

    def worker(name: str) -> None:
        queued.wait()
        for _ in range(5):
            with lock.hold("shared", ttl=10) as lease:
                with mutex:
                    if inside:
                        overlaps.append((inside[0], name))
                    inside.append(name)
                    fences.append(lease.fence)
                gate.wait()
                with mutex:
                    inside.remove(name)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    queued.wait()
    gate.set()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []
    assert len(fences) == 40
    assert fences == sorted(fences)
    assert len(set(fences)) == 40
    assert lock.held() == []


def test_waiters_from_threads_are_granted_in_arrival_order(lock: SyncThreadLock) -> None:
    first = lock.acquire("fifo", ttl=10)
    order: list[int] = []
    threads = []
    for i in range(4):
        thread = threading.Thread(target=lambda i=i: _take(lock, "fifo", order, i))
        thread.start()
        threads.append(thread)
        _wait_waiters(lock, "fifo", i + 1)  # each one queued before the next starts
    lock.release(first)
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2, 3]


def _take(lock: SyncThreadLock, key: str, order: list[int], i: int) -> None:
    with lock.hold(key, ttl=10):
        order.append(i)


def _wait_waiters(lock: SyncThreadLock, key: str, count: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while True:
        info = lock.inspect(key)
        if info is not None and info.waiters >= count:
            return
        assert time.monotonic() < deadline, f"{count} waiters never queued on {key}"
        time.sleep(0.005)


def test_lost_lease_is_raised_at_the_end_of_the_block(lock: SyncThreadLock) -> None:
    signal = LossSignal()
    lock.backend.observer = signal  # type: ignore[attr-defined]
    body_ran_on = False
    with pytest.raises(LeaseLost) as lost, lock.hold("lose-me", ttl=0.6) as lease:
        lock.release(lease)  # someone else's release: the next renewal is refused
        assert signal.lost_event.wait(10)
        body_ran_on = True  # sync code is not interrupted; the loss comes at exit
    assert body_ran_on
    assert lost.value.key == "lose-me"
    assert lost.value.fence == lease.fence
    assert lock.held() == []


def test_body_exception_comes_out_as_itself_and_the_lease_is_released(
    lock: SyncThreadLock,
) -> None:
    with pytest.raises(KeyError, match="boom"), lock.hold("raises", ttl=5):
        raise KeyError("boom")
    assert lock.inspect("raises") is None


def test_max_hold_raises_timeout_error_at_exit(lock: SyncThreadLock) -> None:
    import time

    with pytest.raises(TimeoutError, match="max_hold"), lock.hold("slow", ttl=5, max_hold=0.2):
        # The hold releases when max_hold runs out, while this thread's code still runs.
        deadline = time.monotonic() + 10
        while lock.inspect("slow") is not None:
            assert time.monotonic() < deadline, "max_hold never ended the hold"
            time.sleep(0.01)
    assert lock.inspect("slow") is None


# -- the sync OpenAI guards --------------------------------------------------------------------


def test_guard_serialises_threads_on_one_conversation(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.05)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    replies: list[str] = []
    errors: list[BaseException] = []

    def turn(text: str) -> None:
        try:
            with guard_conversation(client, conversation_id, lock=lock, ttl=5) as guarded:
                assert guarded.conversation_id == conversation_id
                replies.append(guarded.create(model="gpt-test", input=text).output_text)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=turn, args=(f"m{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert fake.concurrency_errors == 0
    assert sorted(replies) == sorted(f"Reply to: m{i}" for i in range(6))
    assert sorted(fake.conversation_inputs(conversation_id)) == [f"m{i}" for i in range(6)]
    assert lock.held() == []


def test_guard_retries_conversation_locked_from_outside_the_lock(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.4)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    outside = threading.Thread(
        target=lambda: client.responses.create(
            model="gpt-test", conversation=conversation_id, input="unguarded"
        )
    )
    outside.start()
    _wait_in_flight(fake)
    with guard_conversation(client, conversation_id, lock=lock, ttl=5) as turn:
        reply = turn.create(model="gpt-test", input="guarded")
    outside.join(30)
    assert reply.output_text == "Reply to: guarded"
    assert fake.concurrency_errors_by_kind["conversation_locked"] >= 1  # retried, not raised
    assert fake.conversation_inputs(conversation_id) == ["unguarded", "guarded"]


def test_sync_guard_refuses_stream(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    with guard_conversation(client, conversation_id, lock=lock, ttl=5) as turn:
        with pytest.raises(ValueError, match="stream=True is not supported by the blocking"):
            turn.create(model="gpt-test", input="x", stream=True)
    assert fake.conversation_inputs(conversation_id) == []
    assert lock.held() == []


def _wait_in_flight(fake: FakeOpenAI) -> None:
    import time

    deadline = time.monotonic() + 10
    while fake.in_flight == 0:
        assert time.monotonic() < deadline, "the request never reached the fake"
        time.sleep(0.005)


def test_lost_lease_is_raised_at_the_next_guarded_call(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    signal = LossSignal()
    lock.backend.observer = signal  # type: ignore[attr-defined]
    with pytest.raises(LeaseLost) as lost:
        with guard_conversation(client, conversation_id, lock=lock, ttl=0.6) as turn:
            turn.create(model="gpt-test", input="first")
            lock.release(turn.lease)  # taken from under the turn
            assert signal.lost_event.wait(10)
            turn.create(model="gpt-test", input="second")
    assert lost.value.key == conversation_id
    assert fake.conversation_inputs(conversation_id) == ["first"]  # nothing sent after the loss
    assert lock.held() == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's: Assistants is sunset
def test_thread_guard_and_recovery_drive_a_sync_client(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(run_duration=0.05)
    client = sync_client(fake)
    assistant = client.beta.assistants.create(model="gpt-test")
    thread = client.beta.threads.create()
    with guard_thread(client, thread.id, lock=lock, ttl=5) as turn:
        assert turn.thread_id == thread.id
        turn.add_message("hello")
        run = turn.create_and_poll(assistant_id=assistant.id)
    assert run.status == "completed"
    assert fake.concurrency_errors == 0
    report = threadlock.sync.recover_orphaned_runs(client, lock=lock, max_age=0)
    assert report.errors == []
    assert lock.held() == []


# -- fork safety ---------------------------------------------------------------------------


def _child_holds(lock: SyncThreadLock, key: str, out: Any, release: Any) -> None:
    with lock.hold(key, ttl=10) as lease:
        out.put((os.getpid(), lease.fence))
        release.wait(30)
    out.put(("done", lock.inspect(key) is None))


def test_a_lock_used_before_a_fork_works_in_the_child(redis_url: str, prefix: str) -> None:
    with threadlock.sync.from_url(redis_url, prefix=prefix) as lock:
        before = lock.acquire("forked", ttl=10)  # the loop thread and connections exist now
        lock.release(before)
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        release = context.Event()
        child = context.Process(target=_child_holds, args=(lock, "forked", out, release))
        child.start()
        try:
            pid, fence = out.get(timeout=30)
            assert pid == child.pid
            assert fence > before.fence
            info = lock.inspect("forked")  # the parent's connections still work
            assert info is not None
            assert info.fence == fence
            assert f":{child.pid}:" in info.owner
            with pytest.raises(ThreadBusy):  # exclusion across processes
                lock.acquire("forked", ttl=10, timeout=0)
            release.set()
            assert out.get(timeout=30) == ("done", True)
        finally:
            release.set()
            child.join(30)
        assert child.exitcode == 0
        after = lock.acquire("forked", ttl=10, timeout=5)
        assert after.fence > fence
        lock.release(after)


def _child_collects_then_holds(lock: SyncThreadLock, key: str, out: Any, release: Any) -> None:
    gc.collect()  # whatever the child dropped of its parent's is finalised now, not by chance
    _child_holds(lock, key, out, release)


def test_a_child_that_collects_garbage_leaves_the_parents_connections_working(
    redis_url: str, prefix: str
) -> None:
    """The parent's sockets and event loop are shared with the child by the fork: whatever
    the child drops of them must never be finalised there (a StreamWriter's finaliser would
    unregister the socket from the epoll set both processes share, and the parent would
    wait for a reply it is no longer told about)."""
    with threadlock.sync.from_url(redis_url, prefix=prefix, socket_timeout=5) as lock:
        before = lock.acquire("forked", ttl=10)  # a pooled connection, registered in epoll
        lock.release(before)
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        release = context.Event()
        child = context.Process(
            target=_child_collects_then_holds, args=(lock, "forked", out, release)
        )
        child.start()
        try:
            pid, fence = out.get(timeout=30)
            info = lock.inspect("forked")  # on the connection the parent used before
            assert info is not None
            assert (info.fence, f":{pid}:" in info.owner) == (fence, True)
            release.set()
            assert out.get(timeout=30) == ("done", True)
        finally:
            release.set()
            child.join(30)
        assert child.exitcode == 0
        assert lock.inspect("forked") is None
