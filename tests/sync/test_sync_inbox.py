"""threadlock.sync.Inbox: the async inbox driven from blocking code, on memory, Redis and
Postgres, plus the sync guards under a batch's lease.

Every test checks what was acknowledged, left pending or dead-lettered, and that the key is
free afterwards (``lock.inspect(key) is None``); none depends on timing.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import threadlock
import threadlock.sync
from threadlock import LeaseLost
from threadlock.sync import Inbox, SyncBatch, SyncThreadLock, guard_conversation, guard_thread
from threadlock.sync.testing import sync_client
from threadlock.testing import FakeOpenAI


async def _create_schema(dsn: str, table: str) -> None:
    from threadlock.backends.postgres import PostgresThreadLock

    async with PostgresThreadLock.from_url(dsn, table=table) as backend:
        await backend.create_schema()


def _sync_lock(request: pytest.FixtureRequest) -> Iterator[SyncThreadLock]:
    if request.param == "memory":
        sync_lock = threadlock.sync.from_url("memory://")
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        sync_lock = threadlock.sync.from_url(url, prefix=request.getfixturevalue("prefix"))
    else:
        dsn = request.getfixturevalue("pg_dsn")
        table = request.getfixturevalue("pg_table")
        anyio.run(_create_schema, dsn, table)
        sync_lock = threadlock.sync.from_url(dsn, table=table)
    with sync_lock:
        yield sync_lock


@pytest.fixture(params=["memory", "redis", "postgres"])
def lock(request: pytest.FixtureRequest) -> Iterator[SyncThreadLock]:
    yield from _sync_lock(request)


def payloads(batch: SyncBatch) -> list[object]:
    return [m.payload for m in batch.messages]


def test_a_burst_folds_into_batches_and_is_acknowledged(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    answered: list[list[object]] = []
    superseded: list[bool] = []
    with inbox.turns("chat", "m0", id="m0") as turns:
        for batch in turns:
            assert lock.inspect("chat") is not None
            info = lock.inspect("chat")
            assert info is not None
            assert info.fence == batch.lease.fence
            if batch.messages[0].id == "m0":
                for index in (1, 2, 1):  # m1 twice: the second is a duplicate id
                    with inbox.turns("chat", f"m{index}", id=f"m{index}") as others:
                        assert list(others) == []  # the key is owned: nothing to yield
            superseded.append(batch.superseded())
            answered.append(payloads(batch))
    assert answered == [["m0"], ["m1", "m2"]]
    assert superseded == [True, False]
    assert inbox.pending("chat") == []
    assert lock.inspect("chat") is None


def test_latest_answers_the_newest_and_acknowledges_the_skipped(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    batches: list[tuple[list[object], list[object]]] = []
    with inbox.turns("latest", "v0", strategy="latest") as turns:
        for batch in turns:
            if not batches:
                for version in ("v1", "v2", "v3"):
                    with inbox.turns("latest", version, strategy="latest") as others:
                        assert list(others) == []
            batches.append((payloads(batch), [m.payload for m in batch.skipped]))
    assert batches == [(["v0"], []), (["v3"], ["v1", "v2"])]
    assert inbox.pending("latest") == []
    assert lock.inspect("latest") is None


def test_break_leaves_the_batch_pending_and_the_key_free(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    for batch in inbox.turns("bare", "b1", id="b1"):  # a bare for, left by break
        assert payloads(batch) == ["b1"]
        break
    assert lock.inspect("bare") is None
    assert [m.id for m in inbox.pending("bare")] == ["b1"]
    with inbox.turns("bare", "b2", id="b2") as turns:  # the with form, left by break
        for batch in turns:
            assert payloads(batch) == ["b1", "b2"]
            assert batch.attempt == 1  # break counts no attempt
            break
    assert lock.inspect("bare") is None
    assert [m.id for m in inbox.pending("bare")] == ["b1", "b2"]
    with inbox.turns("bare", "b3", id="b3") as turns:
        assert [payloads(b) for b in turns] == [["b1", "b2", "b3"]]
    assert inbox.pending("bare") == []
    assert lock.inspect("bare") is None


def test_an_exception_counts_an_attempt_then_dead_letters(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    attempts: list[int] = []
    for _ in range(2):
        with (
            pytest.raises(ValueError, match="model failed"),
            inbox.turns("bad", "x", id="x", max_attempts=2) as turns,
        ):
            for batch in turns:
                attempts.append(batch.attempt)
                raise ValueError("model failed")
        assert lock.inspect("bad") is None
    assert attempts == [1, 2]
    assert inbox.pending("bad") == []
    assert [(d.message.id, d.attempts) for d in inbox.dead_letters("bad")] == [("x", 2)]


def test_an_exception_out_of_a_bare_for_counts_no_attempt(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    with pytest.raises(KeyError):
        for _batch in inbox.turns("plain", "p", id="p"):
            raise KeyError("boom")
    assert lock.inspect("plain") is None
    with inbox.turns("plain", "q", id="q") as turns:
        batches = list(turns)
    assert [(payloads(b), b.attempt) for b in batches] == [(["p", "q"], 1)]
    assert inbox.dead_letters("plain") == []


class LossSignal(threadlock.Observer):
    """Sets a threading.Event when a lease is found lost (the hold's renewal saw it)."""

    def __init__(self) -> None:
        self.lost_event = threading.Event()

    def lost(self, backend: str, key: str, fence: int, detail: str) -> None:
        self.lost_event.set()


def test_a_lease_lost_mid_batch_raises_and_leaves_the_batch_pending(
    lock: SyncThreadLock,
) -> None:
    signal = LossSignal()
    lock.backend.observer = signal  # type: ignore[attr-defined]
    inbox = Inbox(lock)
    body_ran_on = False
    with pytest.raises(LeaseLost) as lost, inbox.turns("lose", "l", id="l", ttl=0.6) as turns:
        for batch in turns:
            lock.release(batch.lease)  # someone else's release: the next renewal is refused
            assert signal.lost_event.wait(10)
            body_ran_on = True  # sync code is not interrupted; the loss comes after the body
    assert body_ran_on
    assert lost.value.key == "lose"
    assert [m.id for m in inbox.pending("lose")] == ["l"]  # not acknowledged
    assert lock.inspect("lose") is None


def test_turns_checks_its_arguments_before_storing(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    with pytest.raises(ValueError, match="strategy"):
        inbox.turns("k", "m", strategy="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_wait"):
        inbox.turns("k", "m", debounce=2, max_wait=1)
    with pytest.raises(TypeError, match="message"):
        inbox.turns("k", object())
    with pytest.raises(TypeError, match="SyncThreadLock"):
        Inbox(threadlock.MemoryThreadLock())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending"):
        Inbox(lock, max_pending=0)
    assert inbox.pending("k") == []


def test_inbox_full_is_raised_and_the_key_stays_free(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock, max_pending=1)
    for _ in inbox.turns("full", "first", id="first"):
        break  # leaves "first" pending
    with pytest.raises(threadlock.InboxFull), inbox.turns("full", "second") as turns:
        list(turns)
    assert [m.id for m in inbox.pending("full")] == ["first"]
    assert lock.inspect("full") is None


@pytest.mark.parametrize("strategy", ["queue", "coalesce"])
def test_a_threaded_burst_is_answered_once_in_order(
    lock: SyncThreadLock, strategy: threadlock.Strategy
) -> None:
    """N threads each post M messages in their own order to one key: every message is
    answered exactly once, each thread's in its order, and nothing is left pending."""
    inbox = Inbox(lock)
    threads_n, messages_m = 6, 5
    answered: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def poster(t: int) -> None:
        try:
            start.wait(30)
            for i in range(messages_m):
                with inbox.turns("burst", f"t{t}-{i}", id=f"t{t}-{i}", strategy=strategy) as turns:
                    for batch in turns:
                        if strategy == "queue":
                            assert len(batch.messages) == 1
                        answered.extend(m.id for m in batch.messages)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=poster, args=(t,)) for t in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    expected = {f"t{t}-{i}" for t in range(threads_n) for i in range(messages_m)}
    assert len(answered) == len(expected)
    assert set(answered) == expected
    for t in range(threads_n):
        mine = [m for m in answered if m.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{i}" for i in range(messages_m)]
    assert inbox.pending("burst") == []  # nothing stranded
    assert lock.inspect("burst") is None


def test_sweep_answers_a_stranded_key_with_a_blocking_handler(
    lock: SyncThreadLock,
) -> None:
    inbox = Inbox(lock)
    for _ in inbox.turns("lost", "s1", id="s1"):
        break  # the owner went away mid-batch: pending, no lease
    assert inbox.stranded() == ["lost"]
    seen: list[tuple[list[object], bool, str]] = []

    def handler(batch: SyncBatch) -> None:
        info = lock.inspect("lost")
        assert info is not None
        assert info.fence == batch.lease.fence
        seen.append((payloads(batch), batch.superseded(), threading.current_thread().name))

    assert inbox.sweep(handler) == 1
    assert [(p, s) for p, s, _ in seen] == [(["s1"], False)]
    assert seen[0][2] != threading.current_thread().name  # it ran in a worker thread
    assert inbox.pending("lost") == []
    assert inbox.stranded() == []
    assert lock.inspect("lost") is None


def test_sweep_handler_runs_a_guarded_turn_under_the_batch_lease(
    lock: SyncThreadLock,
) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    inbox = Inbox(lock)
    for _ in inbox.turns(conversation_id, "left behind"):
        break

    def handler(batch: SyncBatch) -> None:
        with guard_conversation(client, conversation_id, lock=lock, lease=batch.lease) as turn:
            turn.create(model="gpt-test", input=str(batch.messages[0].payload))

    assert inbox.sweep(handler) == 1
    assert fake.conversation_inputs(conversation_id) == ["left behind"]
    assert inbox.pending(conversation_id) == []
    assert lock.inspect(conversation_id) is None


def test_serve_sweeps_until_stopped(lock: SyncThreadLock) -> None:
    inbox = Inbox(lock)
    for _ in inbox.turns("later", "l1", id="l1"):
        break
    stop = threading.Event()

    def handler(batch: SyncBatch) -> None:
        assert payloads(batch) == ["l1"]
        stop.set()

    server = threading.Thread(target=inbox.serve, args=(handler,), kwargs={"stop": stop})
    server.start()
    server.join(60)
    assert not server.is_alive()
    assert inbox.pending("later") == []
    assert lock.inspect("later") is None


BAD_SWEEP_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"strategy": "fifo"}, ValueError, "strategy"),
    ({"debounce": -1}, ValueError, "debounce"),
    ({"debounce": 2, "max_wait": 1}, ValueError, "max_wait"),
    ({"max_batch": 0}, ValueError, "max_batch"),
    ({"max_batch": "20"}, TypeError, "max_batch"),
    ({"ttl": 0}, ValueError, "ttl"),
    ({"max_attempts": 0}, ValueError, "max_attempts"),
    ({"interval": 0}, ValueError, "interval"),
    ({"handler": "not callable"}, TypeError, "handler"),
    ({"stop": True}, TypeError, "stop"),
]


@pytest.mark.parametrize(("bad", "error", "name"), BAD_SWEEP_ARGUMENTS)
def test_serve_checks_every_argument_before_it_starts(
    lock: SyncThreadLock, bad: dict[str, Any], error: type[Exception], name: str
) -> None:
    # With ``stop`` already set, serve() runs no pass: a bad argument must still be refused,
    # naming itself, and nothing is answered.
    inbox = Inbox(lock)
    for _ in inbox.turns("checked", "c1", id="c1"):
        break  # pending, no lease: a pass would answer it
    answered: list[object] = []
    stop = threading.Event()
    stop.set()
    arguments: dict[str, Any] = {"handler": answered.append, "stop": stop, **bad}
    with pytest.raises(error, match=name):
        inbox.serve(**arguments)
    if "stop" not in bad and "interval" not in bad:
        sweep_arguments = {k: v for k, v in arguments.items() if k != "stop"}
        with pytest.raises(error, match=name):
            inbox.sweep(**sweep_arguments)
    assert answered == []
    assert [m.id for m in inbox.pending("checked")] == ["c1"]


# -- the sync guards under a batch's lease ----------------------------------------------------


def test_guard_conversation_runs_under_the_batch_lease(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    inbox = Inbox(lock)
    fences: list[int] = []
    with inbox.turns(conversation_id, "hello") as turns:
        for batch in turns:
            with guard_conversation(
                client, conversation_id, lock=lock, lease=batch.lease, timeout=5
            ) as turn:
                assert turn.lease.fence == batch.lease.fence
                turn.create(model="gpt-test", input=payloads(batch)[0])
            info = lock.inspect(conversation_id)  # the guard did not release the batch's lease
            assert info is not None
            fences.append(info.fence)
            assert info.fence == batch.lease.fence
    assert len(fences) == 1
    assert fake.conversation_inputs(conversation_id) == ["hello"]
    assert fake.concurrency_errors == 0
    assert inbox.pending(conversation_id) == []
    assert lock.inspect(conversation_id) is None


def test_guard_refuses_a_lease_that_is_no_longer_held(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI()
    client = sync_client(fake)
    conversation_id = fake.add_conversation()
    lease = lock.acquire(conversation_id, ttl=5)
    lock.release(lease)
    with (
        pytest.raises(LeaseLost),
        guard_conversation(client, conversation_id, lock=lock, lease=lease),
    ):
        pytest.fail("the block must not run")
    with pytest.raises(ValueError, match="lease on"):
        guard_conversation(client, "another", lock=lock, lease=lease)
    assert fake.conversation_inputs(conversation_id) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's: Assistants is sunset
def test_guard_thread_runs_under_the_batch_lease(lock: SyncThreadLock) -> None:
    fake = FakeOpenAI(run_duration=0.01)
    client = sync_client(fake)
    assistant = client.beta.assistants.create(model="gpt-test")
    thread = client.beta.threads.create()
    inbox = Inbox(lock)
    with inbox.turns(thread.id, "question") as turns:
        for batch in turns:
            with guard_thread(client, thread.id, lock=lock, lease=batch.lease, timeout=5) as turn:
                assert turn.lease.fence == batch.lease.fence
                turn.add_message(payloads(batch)[0])
                run = turn.create_and_poll(assistant_id=assistant.id)
            info = lock.inspect(thread.id)
            assert info is not None
            assert info.fence == batch.lease.fence
    assert run.status == "completed"
    assert fake.concurrency_errors == 0
    assert inbox.pending(thread.id) == []
    assert lock.inspect(thread.id) is None


# -- fork safety ---------------------------------------------------------------------------


def _child_answers(inbox: Inbox, out: Any) -> None:
    with inbox.turns("forked", "from the child", id="child") as turns:
        out.put([[m.id for m in batch.messages] for batch in turns])


def test_an_inbox_used_before_a_fork_works_in_the_child(redis_url: str, prefix: str) -> None:
    with threadlock.sync.from_url(redis_url, prefix=prefix) as lock:
        inbox = Inbox(lock)
        with inbox.turns("forked", "from the parent", id="parent") as turns:
            assert [[m.id for m in b.messages] for b in turns] == [["parent"]]
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        child = context.Process(target=_child_answers, args=(inbox, out))
        child.start()
        try:
            assert out.get(timeout=30) == [["child"]]
        finally:
            child.join(30)
        assert child.exitcode == 0
        assert inbox.pending("forked") == []  # the parent's connections still work
        assert lock.inspect("forked") is None
