"""The OpenAI guards under a lease the caller already holds: an inbox batch's ``batch.lease``.

The borrowed-lease tests run on every backend (``conftest.py``); the inbox tests run where an
inbox store exists (memory and Redis; Postgres's store is built separately).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from tests.guards.conftest import CASES

from threadlock import LeaseLost, ThreadLock
from threadlock.inbox import Batch, Inbox
from threadlock.openai import guard_conversation, guard_thread
from threadlock.testing import FakeOpenAI

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]

_RESPONSES = "POST /responses"


#: The backends with an inbox store on this branch (Postgres's is built separately).
with_inbox = pytest.mark.parametrize(
    "backend_case",
    [c for c in CASES if c.values[0][0] != "postgres"],  # type: ignore[index]
    indirect=True,
)


async def _burst_of_five(
    inbox: Inbox, key: str, answer: Callable[[Batch], Any], **options: Any
) -> list[int]:
    """Post m0, and while its owner is inside its first batch post m1..m4 at once.

    Returns how many batches each of the five ``turns()`` calls got: the owner's count, then
    the four others' (0 each: the owner answers their messages).
    """
    owning, posted = anyio.Event(), anyio.Event()
    counts = [0] * 5

    async def first() -> None:
        async with inbox.turns(key, "m0", id="m0", **options) as turns:
            async for batch in turns:
                counts[0] += 1
                owning.set()
                await posted.wait()
                await answer(batch)

    async def other(index: int) -> None:
        async with inbox.turns(key, f"m{index}", id=f"m{index}", **options) as turns:
            async for _batch in turns:
                counts[index] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await owning.wait()
        async with anyio.create_task_group() as posters:
            for index in range(1, 5):
                posters.start_soon(other, index)
        posted.set()
    return counts


@with_inbox
async def test_a_burst_of_five_through_the_inbox_makes_two_model_calls(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.05)
    client = fake.client()
    conversation = fake.add_conversation()
    inbox = Inbox(lock)
    answered: list[str] = []
    fences: list[bool] = []

    async def answer(batch: Batch) -> None:
        text = "\n".join(str(m.payload) for m in batch.messages)
        async with guard_conversation(client, conversation, lock=lock, lease=batch.lease) as turn:
            info = await lock.inspect(conversation)
            fences.append(info is not None and info.fence == batch.lease.fence)
            await turn.create(model="gpt-4o", input=text)
        answered.extend(m.id for m in batch.messages)

    counts = await _burst_of_five(inbox, conversation, answer, strategy="coalesce")

    assert counts == [2, 0, 0, 0, 0]
    assert fake.calls[_RESPONSES] == 2
    assert fake.concurrency_errors == 0
    assert sorted(answered) == [f"m{i}" for i in range(5)]
    inputs = fake.conversation_inputs(conversation)
    assert inputs[0] == "m0"
    assert sorted("\n".join(inputs[1:]).split("\n")) == ["m1", "m2", "m3", "m4"]
    assert fences == [True, True]  # the turn ran under the batch's own lease
    assert await inbox.pending(conversation) == []
    assert await lock.inspect(conversation) is None  # released by the inbox, once


@with_inbox
async def test_a_chain_moves_its_head_under_the_batch_lease(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = fake.client()
    inbox = Inbox(lock)
    created: list[str] = []

    async def answer(batch: Batch) -> None:
        text = "\n".join(str(m.payload) for m in batch.messages)
        async with guard_conversation(
            client, None, lock=lock, chain="user-7", lease=batch.lease
        ) as turn:
            created.append((await turn.create(model="m", input=text)).id)

    counts = await _burst_of_five(inbox, "user-7", answer, strategy="coalesce")

    assert counts[0] == 2
    assert fake.calls[_RESPONSES] == 2
    head = await lock.chain_head("user-7")  # type: ignore[attr-defined]
    assert head == created[-1]
    assert fake.previous_response_id(created[1]) == created[0]
    assert fake.branches() == {}


@with_inbox
async def test_a_thread_turn_under_the_batch_lease_registers_and_ends_its_run(
    lock: ThreadLock,
) -> None:
    fake = FakeOpenAI(run_duration=0.05)
    client = fake.client()
    thread = fake.add_thread()
    inbox = Inbox(lock)

    async def answer(batch: Batch) -> None:
        async with guard_thread(client, thread, lock=lock, lease=batch.lease) as turn:
            for message in batch.messages:
                await turn.add_message(str(message.payload))
            run = await turn.create_and_poll(assistant_id="asst_1")
            assert run.status == "completed"

    counts = await _burst_of_five(inbox, thread, answer, strategy="coalesce")

    assert counts[0] == 2
    assert fake.calls["POST /threads/{thread_id}/runs"] == 2
    assert fake.concurrency_errors == 0
    texts = fake.thread_messages(thread)
    assert texts[0] == "m0"  # then m1..m4 in the order they reached the inbox
    assert sorted(texts) == [f"m{i}" for i in range(5)]
    assert await lock.tracked_runs(thread) == []  # type: ignore[attr-defined]


async def test_a_borrowed_lease_is_neither_taken_again_nor_released(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.01)
    client = fake.client()
    conversation = fake.add_conversation()
    async with lock.hold(conversation, ttl=10.0) as lease:
        for _ in range(2):  # a second acquire of the key would wait for ever
            with anyio.fail_after(5):
                async with guard_conversation(client, conversation, lock=lock, lease=lease) as turn:
                    assert turn.lease == lease
                    await turn.create(model="m", input="hi")
            info = await lock.inspect(conversation)
            assert info is not None
            assert info.fence == lease.fence
    assert await lock.inspect(conversation) is None
    assert fake.calls[_RESPONSES] == 2


async def test_a_borrowed_lease_waits_for_a_background_response(lock: ThreadLock) -> None:
    fake = FakeOpenAI(background_duration=0.2)
    client = fake.client()
    conversation = fake.add_conversation()
    async with lock.hold(conversation, ttl=10.0) as lease:
        async with guard_conversation(client, conversation, lock=lock, lease=lease) as turn:
            background = await turn.create(model="m", input="long", background=True)
        async with guard_conversation(client, conversation, lock=lock, lease=lease) as turn:
            assert fake.response_status(background.id) == "completed"
            await turn.create(model="m", input="next")
    assert fake.concurrency_errors == 0


async def test_a_lease_no_longer_held_is_refused(lock: ThreadLock) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    lease = await lock.acquire(conversation, ttl=10.0)
    await lock.release(lease)
    with pytest.raises(LeaseLost):
        async with guard_conversation(client, conversation, lock=lock, lease=lease):
            pytest.fail("the body ran without the lease")
    assert fake.calls[_RESPONSES] == 0


async def test_a_lease_on_another_key_or_not_a_lease_is_refused(lock: ThreadLock) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    conversation, thread = fake.add_conversation(), fake.add_thread()
    lease = await lock.acquire("elsewhere", ttl=10.0)
    try:
        with pytest.raises(ValueError, match="lease"):
            guard_conversation(client, conversation, lock=lock, lease=lease)
        with pytest.raises(ValueError, match="lease"):
            guard_thread(client, thread, lock=lock, lease=lease)
        with pytest.raises(TypeError, match="lease"):
            guard_conversation(client, conversation, lock=lock, lease="token")  # type: ignore[arg-type]
    finally:
        await lock.release(lease)
