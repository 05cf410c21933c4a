"""Streaming inside a guard, through the real AsyncOpenAI against FakeOpenAI's SSE streams.

The ``lock`` fixture (``conftest.py``) runs each test on memory (asyncio and trio), Redis and
Postgres.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
import pytest

from threadlock import MemoryThreadLock
from threadlock.openai import StreamOutsideTurn, guard_conversation
from threadlock.testing import FakeOpenAI

if TYPE_CHECKING:
    from threadlock.backends.postgres import PostgresThreadLock
    from threadlock.backends.redis import RedisThreadLock

    Backend = MemoryThreadLock | RedisThreadLock | PostgresThreadLock

pytestmark = pytest.mark.anyio


async def _wait_for_response(fake: FakeOpenAI, conversation: str) -> str:
    with anyio.fail_after(5):
        while (active := fake.active_response(conversation)) is None:
            await anyio.sleep(0.005)
    return active


async def test_stream_holds_lease_and_conversation_until_consumed(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.1)
    client = fake.client()
    conversation = fake.add_conversation()
    deltas: list[str] = []
    async with guard_conversation(client, conversation, lock=lock) as turn:
        async with turn.stream(model="m", input="hello there") as stream:
            async for event in stream:
                assert await lock.inspect(conversation) is not None
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                    assert fake.active_response(conversation) is not None
            final = await stream.get_final_response()
        assert fake.active_response(conversation) is None
        raw = await turn.create(model="m", input="again", stream=True)
        types = [event.type async for event in raw]
    assert "".join(deltas) == final.output_text == "Reply to: hello there"
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert fake.conversation_inputs(conversation) == ["hello there", "again"]
    assert fake.concurrency_errors == 0
    assert await lock.held() == []


async def test_disconnect_mid_stream_releases_the_lease_at_once(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=5.0)
    client = fake.client()
    conversation = fake.add_conversation()

    async def body() -> AsyncIterator[str]:  # a Starlette StreamingResponse body
        async with guard_conversation(client, conversation, lock=lock) as turn:
            async with turn.stream(model="m", input="a long answer please") as stream:
                async for event in stream:
                    if event.type == "response.output_text.delta":
                        yield event.delta

    deltas = body()
    assert await deltas.__anext__() == "Reply "
    streamed = fake.active_response(conversation)
    assert streamed is not None
    assert await lock.inspect(conversation) is not None
    await deltas.aclose()  # the client went away
    assert await lock.held() == []
    assert fake.active_response(conversation) is None
    assert fake.response_status(streamed) == "cancelled"
    # The next turn gets the conversation at once.
    async with guard_conversation(client, conversation, lock=lock, timeout=0) as turn:
        fake.response_duration = 0.0
        await turn.create(model="m", input="next")
    assert fake.concurrency_errors == 0


async def test_chain_head_moves_to_the_streamed_response_on_completion(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.02)
    client = fake.client()
    async with guard_conversation(client, None, lock=lock, chain="chat-1") as turn:
        async with turn.stream(model="m", input="t0") as stream:
            first = await stream.get_final_response()
        assert await lock.chain_head("chat-1") == first.id
        raw = await turn.create(model="m", input="t1", stream=True)
        completed = [event async for event in raw if event.type == "response.completed"]
    second = completed[0].response.id
    assert fake.previous_response_id(first.id) is None
    assert fake.previous_response_id(second) == first.id
    assert await lock.chain_head("chat-1") == second
    assert fake.response_chain(second) == ["t0", "t1"]


async def test_interrupted_stream_leaves_the_chain_head(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=2.0)
    client = fake.client()
    async with guard_conversation(client, None, lock=lock, chain="chat-2") as turn:
        fake.response_duration = 0.0
        head = (await turn.create(model="m", input="t0")).id
    fake.response_duration = 2.0
    interrupted: str | None = None
    async with guard_conversation(client, None, lock=lock, chain="chat-2") as turn:
        async with turn.stream(model="m", input="t1") as stream:
            async for event in stream:
                if event.type == "response.created":
                    interrupted = event.response.id
                if event.type == "response.output_text.delta":
                    break
    assert interrupted is not None
    assert fake.response_status(interrupted) == "cancelled"
    assert await lock.chain_head("chat-2") == head
    fake.response_duration = 0.0
    async with guard_conversation(client, None, lock=lock, chain="chat-2") as turn:
        third = await turn.create(model="m", input="t2")
    assert fake.previous_response_id(third.id) == head
    assert fake.response_chain(third.id) == ["t0", "t2"]


class Answer(pydantic.BaseModel):
    answer: str


async def test_parse_works_like_create(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.01, reply=lambda text: json.dumps({"answer": text}))
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        parsed = await turn.parse(model="m", input="forty-two", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="forty-two")
    async with guard_conversation(client, None, lock=lock, chain="chat-3") as turn:
        chained = await turn.parse(model="m", input="x", text_format=Answer)
        with pytest.raises(ValueError, match="previous_response_id"):
            await turn.parse(model="m", input="x", previous_response_id="resp_1")
    assert await lock.chain_head("chat-3") == chained.id
    assert fake.conversation_inputs(conversation) == ["forty-two"]


async def test_a_stream_read_after_its_block_fails(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=1.0)
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        escaped = await turn.create(model="m", input="hi", stream=True)
        manager = turn.stream(model="m", input="later")
    # The guard closed the stream before it released the lease: nothing runs unguarded.
    assert fake.active_response(conversation) is None
    assert await lock.held() == []
    with pytest.raises(StreamOutsideTurn, match="inside the `async with` block"):
        async for _ in escaped:
            pass
    with pytest.raises(RuntimeError, match="turn has ended"):
        async with manager:
            pass
    assert fake.conversation_inputs(conversation) == ["hi"]


async def test_conversation_locked_at_stream_open_is_retried(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.4)
    client = fake.client()
    conversation = fake.add_conversation()
    texts: list[str] = []

    async def outside() -> None:  # a process that does not use the lock
        await client.responses.create(model="m", conversation=conversation, input="outside")

    async with anyio.create_task_group() as tg:
        tg.start_soon(outside)
        await _wait_for_response(fake, conversation)
        async with guard_conversation(client, conversation, lock=lock) as turn:
            async with turn.stream(model="m", input="inside") as stream:
                texts.append((await stream.get_final_response()).output_text)
    assert fake.concurrency_errors_by_kind["conversation_locked"] >= 1
    assert sorted(fake.conversation_inputs(conversation)) == ["inside", "outside"]
    assert texts == ["Reply to: inside"]


async def test_cancelled_body_releases_lease_and_conversation(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=30.0)
    client = fake.client()
    conversation = fake.add_conversation()
    streaming = anyio.Event()

    async def handler() -> None:
        async with guard_conversation(client, conversation, lock=lock) as turn:
            raw = await turn.create(model="m", input="slow", stream=True)
            async for event in raw:
                if event.type == "response.output_text.delta":
                    streaming.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(handler)
        with anyio.fail_after(10):
            await streaming.wait()
        assert await lock.inspect(conversation) is not None
        tg.cancel_scope.cancel()
    assert await lock.held() == []
    assert fake.active_response(conversation) is None


async def test_tool_call_turn_spans_responses_under_one_lease(lock: Backend) -> None:
    fake = FakeOpenAI(response_duration=0.02)
    client = fake.client()
    conversation = fake.add_conversation()
    fake.call_function_next_response(conversation, function_name="weather", arguments='{"c":1}')
    fences: list[int] = []
    argument_deltas: list[str] = []
    async with guard_conversation(client, conversation, lock=lock) as turn:
        async with turn.stream(model="m", input="weather?") as stream:
            async for event in stream:
                if event.type == "response.function_call_arguments.delta":
                    argument_deltas.append(event.delta)
            call = (await stream.get_final_response()).output[0]
        fences.append(turn.lease.fence)
        assert call.type == "function_call"
        assert (call.name, call.arguments) == ("weather", '{"c":1}')
        output: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "sun"}]
        async with turn.stream(model="m", input=output) as stream:
            final = await stream.get_final_response()
        fences.append(turn.lease.fence)
    assert argument_deltas == ['{"c":1}']
    assert final.output_text == "Reply to: sun"
    assert fences[0] == fences[1]
    items = await client.conversations.items.list(conversation, order="asc")
    assert [item.type for item in items.data] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


async def test_lease_is_renewed_through_a_long_stream(lock: Backend) -> None:
    # The stream lasts 2.5 TTLs, so the lease survives only if it is renewed. The TTL leaves each
    # renewal about 0.6 s of slack: a loaded CI machine's Postgres round trips overran 0.3 s.
    fake = FakeOpenAI(response_duration=2.5)
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock, ttl=1.0) as turn:
        fence = turn.lease.fence
        async with turn.stream(model="m", input="a b c d e f") as stream:
            final = await stream.get_final_response()
        assert turn.lease.fence == fence
    assert final.status == "completed"
    assert await lock.held() == []
