"""``turn.run_agent_streamed``: ``Runner.run_streamed`` inside a guarded turn, on FakeOpenAI's
real SSE streams."""

from __future__ import annotations

from typing import Any

import agents
import anyio
import pytest

from threadlock import ThreadLock
from threadlock.openai import guard_conversation
from threadlock.openai.streaming import StreamOutsideTurn
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio


def _agent() -> agents.Agent[Any]:
    return agents.Agent(name="bot", instructions="Answer briefly.", model="gpt-4o")


async def test_a_streamed_run_passes_events_and_holds_the_lease_until_they_end(
    lock: ThreadLock,
) -> None:
    fake = FakeOpenAI(response_duration=0.2)
    client = fake.client()
    conversation = fake.add_conversation()
    order: list[str] = []

    async def turn_of(text: str) -> None:
        async with guard_conversation(client, conversation, lock=lock, timeout=30) as turn:
            order.append(f"start {text}")
            run = await turn.run_agent_streamed(_agent(), text)
            kinds = [event.type async for event in run.stream_events()]
            assert "raw_response_event" in kinds
            assert run.final_output == f"Reply to: {text}"
            assert run.result.is_complete
            order.append(f"end {text}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn_of, "first")
        await anyio.sleep(0.05)  # let the first take the lease
        tg.start_soon(turn_of, "second")
    assert order == ["start first", "end first", "start second", "end second"]
    assert fake.conversation_inputs(conversation) == ["first", "second"]
    assert fake.concurrency_errors == 0
    assert await lock.held() == []


async def test_leaving_the_block_mid_stream_cancels_the_run_before_the_release(
    lock: ThreadLock,
) -> None:
    fake = FakeOpenAI(response_duration=5.0)
    client = fake.client()
    conversation = fake.add_conversation()
    with pytest.raises(RuntimeError, match="the client went away"):
        async with guard_conversation(client, conversation, lock=lock) as turn:
            run = await turn.run_agent_streamed(_agent(), "a long answer please")
            async for event in run.stream_events():
                if event.type == "raw_response_event" and event.data.type.endswith(".delta"):
                    raise RuntimeError("the client went away")
    task = run.result.run_loop_task
    assert task is not None
    assert task.done()  # the run stopped before the lease was released
    assert await lock.held() == []
    assert fake.active_response(conversation) is None  # the streamed response was closed
    with pytest.raises(StreamOutsideTurn):
        async for _ in run.stream_events():
            pass
    async with guard_conversation(client, conversation, lock=lock, timeout=0) as turn:
        fake.response_duration = 0.0
        result = await turn.run_agent(_agent(), "next")
    assert result.final_output == "Reply to: next"
    assert fake.concurrency_errors == 0


async def test_a_streamed_run_on_a_chain_moves_the_head_when_it_ends(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.02)
    client = fake.client()
    heads = []
    for text in ("first", "second"):
        async with guard_conversation(client, None, lock=lock, chain="user-9") as turn:
            run = await turn.run_agent_streamed(_agent(), text)
            async for _ in run.stream_events():
                pass
            heads.append(run.last_response_id)
            assert await lock.chain_head("user-9") == run.last_response_id  # type: ignore[attr-defined]
    assert fake.previous_response_id(heads[1]) == heads[0]
    assert fake.response_chain(heads[-1]) == ["first", "second"]


async def test_a_streamed_run_left_unread_is_cancelled_at_exit(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=5.0)
    client = fake.client()
    async with guard_conversation(client, None, lock=lock, chain="user-10") as turn:
        run = await turn.run_agent_streamed(_agent(), "never read")
    task = run.result.run_loop_task
    assert task is not None
    assert task.done()
    assert await lock.held() == []
    assert await lock.chain_head("user-10") is None  # type: ignore[attr-defined]
