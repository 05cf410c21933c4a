"""The OpenAI guards, through the real AsyncOpenAI against FakeOpenAI, on every backend.

The ``lock`` fixture (``conftest.py``) runs each test on memory, Redis and Postgres.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import openai
import pytest

from threadlock import LeaseLost, MemoryThreadLock, ThreadBusy, ThreadLock
from threadlock.openai import guard_conversation, guard_thread
from threadlock.openai.guard import RUN_TOKEN_METADATA
from threadlock.testing import FakeOpenAI

if TYPE_CHECKING:
    from threadlock.backends.postgres import PostgresThreadLock
    from threadlock.backends.redis import RedisThreadLock

    Backend = MemoryThreadLock | RedisThreadLock | PostgresThreadLock

pytestmark = [
    pytest.mark.anyio,
    # the thread guard and recovery drive the SDK's Assistants API, which warns on every call
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]


def _assert_served(accepted: list[str], count: int, lock: ThreadLock) -> None:
    """Every message once; in send order where the lock sees them in that order.

    Waiters are served in the order they reach the lock. The memory backend (and Redis, which
    keeps one process's calls per key in call order) sees them in the order the workers
    called; Postgres sees the order its statements arrive over several pooled connections.
    """
    expected = [f"m{i}" for i in range(count)]
    if type(lock).__name__ == "PostgresThreadLock":
        assert sorted(accepted) == expected
    else:
        assert accepted == expected


async def _burst(
    conversations: list[str],
    per_conversation: int,
    workers: int,
    handle: Callable[[str, int], Any],
) -> None:
    """Send messages round-robin over the conversations; ``workers`` tasks serve them."""
    send, receive = anyio.create_memory_object_stream[tuple[str, int]](1000)
    for seq in range(per_conversation):
        for conversation in conversations:
            send.send_nowait((conversation, seq))
    send.close()

    async def worker() -> None:
        async for conversation, seq in receive:
            await handle(conversation, seq)

    with receive:
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)


async def test_conversations_burst_without_and_with_the_lock(lock: ThreadLock) -> None:
    # Unguarded, each response takes long enough that a second worker on the same
    # conversation always arrives while it is in progress, however loaded the machine.
    fake = FakeOpenAI(response_duration=1.0)
    client = fake.client()
    conversations = [fake.add_conversation() for _ in range(5)]
    errors = 0

    async def unguarded(conversation: str, seq: int) -> None:
        nonlocal errors
        try:
            await client.responses.create(
                model="gpt-4o", conversation=conversation, input=f"m{seq}"
            )
        except openai.BadRequestError as error:
            assert error.code == "conversation_locked"
            errors += 1

    await _burst(conversations, 6, 8, unguarded)
    assert errors > 0
    assert fake.concurrency_errors == errors

    fake.reset_counters()
    fake.response_duration = 0.02
    guarded_conversations = [fake.add_conversation() for _ in range(5)]

    async def guarded(conversation: str, seq: int) -> None:
        async with guard_conversation(client, conversation, lock=lock) as turn:
            await turn.create(model="gpt-4o", input=f"m{seq}")

    await _burst(guarded_conversations, 6, 8, guarded)
    assert fake.concurrency_errors == 0
    for conversation in guarded_conversations:
        _assert_served(fake.conversation_inputs(conversation), 6, lock)
    # Conversations cost no call beyond the user's own when nothing is tracked.
    assert fake.requests == 30
    assert await lock.held() == []


async def test_threads_burst_without_and_with_the_lock(lock: ThreadLock) -> None:
    # Unguarded, each run lasts long enough that a second worker on the same thread always
    # arrives while it is active, however loaded the machine.
    fake = FakeOpenAI(run_duration=1.0, poll_after_ms=5)
    client = fake.client()
    threads = [fake.add_thread() for _ in range(5)]
    errors = 0

    async def unguarded(thread: str, seq: int) -> None:
        nonlocal errors
        try:
            await client.beta.threads.messages.create(thread, role="user", content=f"m{seq}")
            await client.beta.threads.runs.create_and_poll(
                thread_id=thread, assistant_id="asst_1", poll_interval_ms=5
            )
        except openai.BadRequestError:
            errors += 1

    await _burst(threads, 4, 8, unguarded)
    assert errors > 0
    assert fake.concurrency_errors == errors

    fake.reset_counters()
    fake.run_duration = 0.03
    guarded_threads = [fake.add_thread() for _ in range(5)]

    async def guarded(thread: str, seq: int) -> None:
        async with guard_thread(client, thread, lock=lock) as turn:
            await turn.add_message(f"m{seq}")
            run = await turn.create_and_poll(assistant_id="asst_1")
            assert run.status == "completed"

    await _burst(guarded_threads, 4, 8, guarded)
    assert fake.concurrency_errors == 0
    for thread in guarded_threads:
        _assert_served(fake.thread_messages(thread), 4, lock)
    # One runs.list(limit=1) per turn on entry, nothing else beyond the user's calls + polls.
    assert fake.calls["GET /threads/{thread_id}/runs"] == 20
    assert await lock.held() == []
    assert await lock.tracked_runs() == []  # type: ignore[attr-defined]


async def test_thread_waits_for_a_run_left_by_another_process(lock: Backend) -> None:
    fake = FakeOpenAI(poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    other = fake.add_run(thread, "in_progress", completes_in=0.3)
    async with guard_thread(client, thread, lock=lock) as turn:
        assert fake.run_status(other) == "completed"  # waited before the body ran
        await turn.add_message("hello")
        run = await turn.create_and_poll(assistant_id="asst_1")
        assert run.status == "completed"
    assert fake.concurrency_errors == 0


async def test_requires_action_is_not_free(lock: Backend) -> None:
    fake = FakeOpenAI(poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    stuck = fake.add_run(thread, "requires_action")
    with pytest.raises(ThreadBusy) as busy:
        async with guard_thread(client, thread, lock=lock, timeout=0.3):
            pytest.fail("the body ran while a run was in requires_action")
    assert busy.value.key == thread
    assert await lock.inspect(thread) is None  # the guard released on its way out
    assert fake.run_status(stuck) == "requires_action"


async def test_requires_action_inside_the_turn_submits_tool_outputs(
    lock: Backend,
) -> None:
    fake = FakeOpenAI(run_duration=0.05, poll_after_ms=5)
    client = fake.client()
    thread = fake.add_thread()
    fake.require_action_next_run(thread)
    async with guard_thread(client, thread, lock=lock) as turn:
        run = await turn.create_and_poll(assistant_id="asst_1")
        assert run.status == "requires_action"
        assert run.id in {r.run_id for r in await lock.tracked_runs(thread)}
        calls = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
        outputs = [{"tool_call_id": call.id, "output": "42"} for call in calls]
        run = await turn.submit_tool_outputs(run, outputs)
        assert run.status == "completed"
    assert await lock.tracked_runs(thread) == []


async def test_conversation_locked_from_outside_is_retried_once_per_input(
    lock: Backend,
) -> None:
    fake = FakeOpenAI(response_duration=0.4)
    client = fake.client()
    conversation = fake.add_conversation()
    outside_result: list[Any] = []

    async def outside() -> None:  # a process that does not use the lock
        outside_result.append(
            await client.responses.create(model="m", conversation=conversation, input="outside")
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(outside)
        with anyio.fail_after(5):
            while fake.active_response(conversation) is None:
                await anyio.sleep(0.005)
        async with guard_conversation(client, conversation, lock=lock) as turn:
            await turn.create(model="m", input="inside")
    assert fake.concurrency_errors_by_kind["conversation_locked"] >= 1
    assert sorted(fake.conversation_inputs(conversation)) == ["inside", "outside"]


async def test_conversation_locked_retries_end_in_thread_busy(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    fake.add_background_response(conversation, "in_progress")  # started outside the lock
    with pytest.raises(ThreadBusy):
        async with guard_conversation(client, conversation, lock=lock, timeout=0.5) as turn:
            await turn.create(model="m", input="never sent twice")
    assert fake.conversation_inputs(conversation) == []
    assert await lock.inspect(conversation) is None


async def test_lost_run_create_is_reconciled_without_a_duplicate(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=0.05, poll_after_ms=5)
    client = fake.client()
    thread = fake.add_thread()
    fake.inject("POST", "/threads/{thread_id}/runs", status=500, apply_effect=True)
    async with guard_thread(client, thread, lock=lock) as turn:
        run = await turn.create_and_poll(assistant_id="asst_1")
    assert run.status == "completed"
    runs = await client.beta.threads.runs.list(thread)
    assert [r.id for r in runs.data] == [run.id]
    assert run.metadata is not None
    assert RUN_TOKEN_METADATA in run.metadata
    assert fake.calls["POST /threads/{thread_id}/runs"] == 1


async def test_failed_run_create_without_effect_is_retried(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=0.05, poll_after_ms=5)
    client = fake.client()
    thread = fake.add_thread()
    fake.inject("POST", "/threads/{thread_id}/runs", status=429)
    async with guard_thread(client, thread, lock=lock) as turn:
        run = await turn.create_and_poll(assistant_id="asst_1")
    assert run.status == "completed"
    runs = await client.beta.threads.runs.list(thread)
    assert [r.id for r in runs.data] == [run.id]
    assert fake.calls["POST /threads/{thread_id}/runs"] == 2


async def test_previous_response_chain_never_branches(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = fake.client()

    async def turn_(index: int) -> None:
        async with guard_conversation(client, None, lock=lock, chain="user-42") as turn:
            await turn.create(model="m", input=f"t{index}")

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(turn_, index)
    assert fake.branches() == {}
    head = await lock.chain_head("user-42")
    assert head is not None
    assert len(fake.response_chain(head)) == 8


async def test_background_responses_are_tracked_and_waited_for(lock: Backend) -> None:
    fake = FakeOpenAI(background_duration=0.3)
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        response = await turn.create(model="m", input="slow", background=True)
        assert response.status in {"queued", "in_progress"}
        records = await lock.tracked_runs(conversation)
        assert [(r.kind, r.run_id) for r in records] == [("response", response.id)]
        info = await lock.inspect(conversation)
        assert info is not None
        assert info.run_id == response.id
    # Still running after the block: the next turn waits for it before its body runs.
    assert fake.response_status(response.id) in {"queued", "in_progress"}
    async with guard_conversation(client, conversation, lock=lock) as turn:
        assert fake.response_status(response.id) == "completed"
        assert await lock.tracked_runs(conversation) == []
        await turn.create(model="m", input="next")
    assert fake.concurrency_errors == 0

    async with guard_conversation(client, conversation, lock=lock) as turn:
        response = await turn.create(model="m", input="wait here", background=True)
        done = await turn.wait(response)
        assert done.status == "completed"
        assert await lock.tracked_runs(conversation) == []


async def test_lease_is_renewed_through_a_long_run(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=1.2, poll_after_ms=20)
    client = fake.client()
    thread = fake.add_thread()
    async with guard_thread(client, thread, lock=lock, ttl=0.3) as turn:
        fence = turn.lease.fence
        run = await turn.create_and_poll(assistant_id="asst_1")
        assert run.status == "completed"
        info = await lock.inspect(thread)
        assert info is not None
        assert info.fence == fence


async def test_cancelling_mid_run_releases_the_lock(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=5.0, poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    started: list[str] = []
    scope = anyio.CancelScope()

    async def worker() -> None:
        with scope:
            async with guard_thread(client, thread, lock=lock) as turn:
                run = await turn.create(assistant_id="asst_1")
                started.append(run.id)
                await turn.wait(run)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        with anyio.fail_after(10):
            while not started:  # cancel only once the run is under way
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        scope.cancel()
    assert scope.cancelled_caught
    assert await lock.inspect(thread) is None
    # The run is still active: it stays in the registry for recovery.
    assert [r.run_id for r in await lock.tracked_runs(thread)] == started


async def test_guard_checks_its_arguments(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    with pytest.raises(TypeError, match="client"):
        guard_conversation(object(), "conv_1", lock=lock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="conversation_id"):
        guard_conversation(client, "", lock=lock)
    with pytest.raises(ValueError, match="conversation_id or chain"):
        guard_conversation(client, None, lock=lock)
    with pytest.raises(TypeError, match="thread_id"):
        guard_thread(client, 42, lock=lock)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lock must be a threadlock.ThreadLock"):
        guard_thread(client, "thread_1", lock=object())  # type: ignore[arg-type]

    class PlainLock(MemoryThreadLock):  # a ThreadLock without the run registry
        track_run = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="RunRegistry"):
        guard_thread(client, "thread_1", lock=PlainLock())
    with pytest.raises(ValueError, match="ttl"):
        guard_thread(client, "thread_1", lock=lock, ttl=0)
    async with guard_conversation(client, fake.add_conversation(), lock=lock) as turn:
        with pytest.raises(ValueError, match="conversation"):
            await turn.create(model="m", input="x", conversation="conv_other")
    async with guard_conversation(client, None, lock=lock, chain="c1") as turn:
        with pytest.raises(ValueError, match="previous_response_id"):
            await turn.create(model="m", input="x", previous_response_id="resp_1")
        with pytest.raises(ValueError, match="background"):
            await turn.create(model="m", input="x", stream=True, background=True)
    assert await lock.held() == []


async def test_lost_lease_inside_a_guard_raises_lease_lost(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=2.0, poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    with pytest.raises(LeaseLost):
        async with guard_thread(client, thread, lock=lock, ttl=0.3) as turn:
            await lock.release(turn.lease)  # as if it had expired during a stall
            await lock.acquire(thread, ttl=30, timeout=0)
            await turn.create_and_poll(assistant_id="asst_1")
