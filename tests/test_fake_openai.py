"""FakeOpenAI, exercised only through the real ``openai.AsyncOpenAI`` client.

Time-driven behaviour is driven with ``fake.advance()`` rather than sleeps, so the assertions
are about behaviour, never about how long something took.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest

from threadlock.testing.fake_openai import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    FakeOpenAI,
    sdk_http_module,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]

LOCKED = (
    "Another process is currently operating on this conversation. Please retry in a few seconds."
)
MODEL = "gpt-4o"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield FakeOpenAI(
        response_duration=0.01,
        background_duration=10.0,
        run_duration=10.0,
        queue_duration=1.0,
        cancel_duration=1.0,
        poll_after_ms=5,
    )


def _msg(exc: openai.APIStatusError) -> str:
    assert isinstance(exc.body, dict)
    return str(exc.body["message"])


async def _wait_for(predicate: Any) -> None:
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0.001)


# ------------------------------------------------------------------ transport


async def test_uses_the_sdk_http_library() -> None:
    fake = FakeOpenAI()
    client = fake.client()
    assert type(client._client).__module__.startswith(sdk_http_module().__name__)
    transport = fake.transport()
    assert isinstance(transport, sdk_http_module().AsyncBaseTransport)


async def test_legacy_httpx_client_works() -> None:
    httpx = pytest.importorskip("httpx")
    fake = FakeOpenAI(response_duration=0.0)
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=fake.base_url,
        http_client=fake.http_client(module=httpx),
        max_retries=0,
    )
    conv = await client.conversations.create()
    response = await client.responses.create(model=MODEL, conversation=conv.id, input="hi")
    assert response.output_text == "Reply to: hi"


# ------------------------------------------------------------------ responses + conversations


async def test_concurrent_creates_on_one_conversation_get_exactly_one_locked() -> None:
    fake = FakeOpenAI(response_duration=60.0)
    client = fake.client()
    conv = await client.conversations.create()
    outcomes: list[object] = []

    async def send(text: str) -> None:
        try:
            outcomes.append(
                await client.responses.create(model=MODEL, conversation=conv.id, input=text)
            )
        except openai.BadRequestError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, "first")
        tg.start_soon(send, "second")
        await _wait_for(lambda: len(outcomes) == 1)  # the refused one returns at once
        fake.advance(61)

    errors = [o for o in outcomes if isinstance(o, openai.BadRequestError)]
    done = [o for o in outcomes if not isinstance(o, openai.BadRequestError)]
    assert len(errors) == 1
    assert len(done) == 1
    err = errors[0]
    assert err.status_code == 400
    assert err.code == "conversation_locked"
    assert err.param == "conversation"
    assert err.type == "invalid_request_error"
    assert err.body == {
        "message": LOCKED,
        "type": "invalid_request_error",
        "param": "conversation",
        "code": "conversation_locked",
    }
    assert err.response.json() == {"error": err.body}
    assert fake.concurrency_errors == 1
    assert fake.concurrency_errors_by_kind["conversation_locked"] == 1
    assert fake.errors[400] == 1
    # only the accepted input reached the conversation
    assert len(fake.conversation_inputs(conv.id)) == 1


async def test_foreground_response_locks_only_while_in_flight(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create()
    first = await client.responses.create(model=MODEL, conversation=conv.id, input="one")
    assert first.status == "completed"
    assert first.output_text == "Reply to: one"
    assert first.conversation is not None
    assert first.conversation.id == conv.id
    second = await client.responses.create(model=MODEL, conversation=conv.id, input="two")
    assert second.status == "completed"
    assert fake.concurrency_errors == 0


async def test_conversation_order_and_items(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create(items=[{"role": "user", "content": "zero"}])
    for text in ["one", "two", "three"]:
        await client.responses.create(model=MODEL, conversation=conv.id, input=text)
    assert fake.conversation_inputs(conv.id) == ["zero", "one", "two", "three"]

    page = await client.conversations.items.list(conv.id, order="asc")
    roles = [item.role for item in page.data]  # type: ignore[union-attr]
    assert roles == ["user", "user", "assistant", "user", "assistant", "user", "assistant"]
    texts = [item.content[0].text for item in page.data]  # type: ignore[union-attr,index]
    assert texts == [
        "zero",
        "one",
        "Reply to: one",
        "two",
        "Reply to: two",
        "three",
        "Reply to: three",
    ]
    newest_first = await client.conversations.items.list(conv.id, limit=2)
    assert [item.id for item in newest_first.data] == [page.data[-1].id, page.data[-2].id]
    assert newest_first.has_more is True
    all_items = [item.id async for item in client.conversations.items.list(conv.id, limit=3)]
    assert all_items == [item.id for item in reversed(page.data)]

    fetched = await client.conversations.retrieve(conv.id)
    assert fetched.id == conv.id


async def test_list_input_items_are_recorded(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create()
    await client.responses.create(
        model=MODEL,
        conversation=conv.id,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"role": "user", "content": "b"},
        ],
    )
    assert fake.conversation_inputs(conv.id) == ["a", "b"]


async def test_background_response_lifecycle_and_cancel(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create()
    bg = await client.responses.create(
        model=MODEL, conversation=conv.id, input="slow", background=True, metadata={"k": "v"}
    )
    assert bg.status == "queued"
    assert bg.background is True
    assert bg.metadata == {"k": "v"}
    assert fake.active_response(conv.id) == bg.id

    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=MODEL, conversation=conv.id, input="blocked")
    assert info.value.code == "conversation_locked"
    with pytest.raises(openai.BadRequestError) as info:
        await client.conversations.items.create(
            conv.id, items=[{"type": "message", "role": "user", "content": "x"}]
        )
    assert info.value.code == "conversation_locked"

    fake.advance(1.5)
    assert (await client.responses.retrieve(bg.id)).status == "in_progress"

    cancelled = await client.responses.cancel(bg.id)
    assert cancelled.status == "cancelled"
    again = await client.responses.cancel(bg.id)  # idempotent
    assert again.status == "cancelled"
    assert again.id == bg.id
    fake.advance(20)
    assert (await client.responses.retrieve(bg.id)).status == "cancelled"

    # the conversation is free again, and the cancelled response left no output
    await client.responses.create(model=MODEL, conversation=conv.id, input="next")
    assert fake.conversation_inputs(conv.id) == ["slow", "next"]
    page = await client.conversations.items.list(conv.id, order="asc")
    assert [item.role for item in page.data] == ["user", "user", "assistant"]  # type: ignore[union-attr]
    assert fake.concurrency_errors == 2


async def test_background_response_completes(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create()
    bg = await client.responses.create(
        model=MODEL, conversation=conv.id, input="q", background=True
    )
    fake.advance(10.5)
    done = await client.responses.retrieve(bg.id)
    assert done.status == "completed"
    assert done.output_text == "Reply to: q"
    assert done.completed_at is not None
    assert fake.active_response(conv.id) is None
    # cancelling a finished background response returns it unchanged
    assert (await client.responses.cancel(bg.id)).status == "completed"


async def test_cancel_foreground_response_is_refused(fake: FakeOpenAI) -> None:
    client = fake.client()
    response = await client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.cancel(response.id)
    assert info.value.body == {
        "message": "Cannot cancel a synchronous response.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_branches_and_chains(fake: FakeOpenAI) -> None:
    client = fake.client()
    root = await client.responses.create(model=MODEL, input="root")
    a = await client.responses.create(model=MODEL, input="a", previous_response_id=root.id)
    assert a.previous_response_id == root.id
    assert fake.branches() == {}
    b = await client.responses.create(model=MODEL, input="b", previous_response_id=a.id)
    assert fake.branches() == {}
    c = await client.responses.create(model=MODEL, input="c", previous_response_id=a.id)
    assert fake.branches() == {a.id: [b.id, c.id]}
    assert fake.response_chain(c.id) == ["root", "a", "c"]
    assert fake.previous_response_id(b.id) == a.id

    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")
    assert info.value.param == "previous_response_id"


# ------------------------------------------------------------------ assistants


async def test_assistants_concurrency_errors_have_exact_texts(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    await client.beta.threads.messages.create(thread.id, role="user", content="hello")
    run = await client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id="asst_1", metadata={"threadlock_token": "t1"}
    )
    assert run.status == "queued"
    assert run.metadata == {"threadlock_token": "t1"}
    assert run.expires_at == run.created_at + 600

    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.messages.create(thread.id, role="user", content="again")
    assert info.value.body == {
        "message": f"Can't add messages to {thread.id} while a run {run.id} is active.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert info.value.code is None

    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    assert info.value.body == {
        "message": f"Thread {thread.id} already has an active run {run.id}.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }

    fake.advance(10.5)
    finished = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert finished.status == "completed"
    assert finished.completed_at is not None
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert info.value.body == {
        "message": "Cannot cancel run with status 'completed'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert fake.concurrency_errors == 2
    assert fake.concurrency_errors_by_kind == {
        "message_while_run_active": 1,
        "run_while_run_active": 1,
    }
    # refused messages are not recorded
    assert fake.thread_messages(thread.id) == ["hello"]


async def test_run_progresses_and_cancels(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    fake.advance(1.5)
    current = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert current.status == "in_progress"
    assert current.started_at is not None
    cancelling = await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    assert fake.active_run(thread.id) == run.id  # cancelling is still active
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert _msg(info.value) == "Cannot cancel run with status 'cancelling'."
    fake.advance(1.5)
    cancelled = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None
    assert fake.active_run(thread.id) is None
    fake.advance(100)
    assert fake.run_status(run.id) == "cancelled"


async def test_zero_cancel_duration_cancels_at_once() -> None:
    fake = FakeOpenAI(run_duration=10.0, cancel_duration=0.0)
    client = fake.client()
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    result = await client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert result.status == "cancelled"


async def test_runs_expire(fake: FakeOpenAI) -> None:
    fake.require_action_next_run()
    client = fake.client()
    thread = await client.beta.threads.create()
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    fake.advance(601)
    expired = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert expired.status == "expired"
    assert expired.status in TERMINAL_RUN_STATUSES
    await client.beta.threads.messages.create(thread.id, role="user", content="free again")


async def test_create_and_poll_completes_and_uses_poll_header() -> None:
    fake = FakeOpenAI(run_duration=0.05, queue_duration=0.01, poll_after_ms=7)
    client = fake.client()
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = await client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id="asst_1")
    assert run.status == "completed"
    assert fake.calls["GET /threads/{thread_id}/runs/{run_id}"] >= 1
    raw = await client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
    assert raw.headers["openai-poll-after-ms"] == "7"

    messages = await client.beta.threads.messages.list(thread.id, order="asc")
    assert [(m.role, m.content[0].text.value) for m in messages.data] == [  # type: ignore[union-attr]
        ("user", "hi"),
        ("assistant", "Reply to: hi"),
    ]
    assert messages.data[1].run_id == run.id
    assert fake.thread_messages(thread.id) == ["hi"]


async def test_requires_action_until_tool_outputs(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    fake.require_action_next_run(thread.id, function_name="lookup", arguments='{"q": 1}')
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    fake.advance(10.5)
    waiting = await client.beta.threads.runs.poll(run.id, thread_id=thread.id)
    assert waiting.status == "requires_action"
    assert waiting.required_action is not None
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]
    assert call.function.name == "lookup"
    assert call.function.arguments == '{"q": 1}'

    fake.advance(100)  # nobody submits: it stays (until expiry)
    assert fake.run_status(run.id) == "requires_action"
    assert fake.run_status(run.id) in ACTIVE_RUN_STATUSES
    with pytest.raises(openai.BadRequestError):
        await client.beta.threads.messages.create(thread.id, role="user", content="blocked")

    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "1"}]
        )
    assert info.value.param == "tool_outputs"

    resumed = await client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "42"}]
    )
    assert resumed.status == "in_progress"
    assert resumed.required_action is None
    fake.advance(10.5)
    assert (await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status == (
        "completed"
    )
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "42"}]
        )
    assert _msg(info.value) == 'Runs in status "completed" do not accept tool outputs.'

    # the arming was used up: the next run completes normally
    nxt = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    fake.advance(10.5)
    assert fake.run_status(nxt.id) == "completed"


async def test_runs_list_newest_first_with_limit_and_after(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    ids = []
    for _ in range(3):
        run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
        ids.append(run.id)
        fake.advance(11)
    page = await client.beta.threads.runs.list(thread.id, limit=2)
    assert [r.id for r in page.data] == [ids[2], ids[1]]
    assert page.has_more is True
    rest = await client.beta.threads.runs.list(thread.id, limit=2, after=ids[1])
    assert [r.id for r in rest.data] == [ids[0]]
    assert rest.has_more is False
    oldest = await client.beta.threads.runs.list(thread.id, order="asc", limit=1)
    assert [r.id for r in oldest.data] == [ids[0]]
    assert [r.id async for r in client.beta.threads.runs.list(thread.id, limit=1)] == ids[::-1]


async def test_create_thread_and_run(fake: FakeOpenAI) -> None:
    client = fake.client()
    run = await client.beta.threads.create_and_run(
        assistant_id="asst_1", thread={"messages": [{"role": "user", "content": "q"}]}
    )
    assert run.status == "queued"
    assert fake.thread_messages(run.thread_id) == ["q"]
    assert fake.active_run(run.thread_id) == run.id


# ------------------------------------------------------------------ 404s


async def test_not_found_errors(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()

    def body(message: str) -> dict[str, object]:
        return {"message": message, "type": "invalid_request_error", "param": None, "code": None}

    with pytest.raises(openai.NotFoundError) as info:
        await client.beta.threads.retrieve("thread_nope")
    assert info.value.body == body("No thread found with id 'thread_nope'.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.beta.threads.messages.create("thread_nope", role="user", content="x")
    assert info.value.body == body("No thread found with id 'thread_nope'.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    assert info.value.body == body("No run found with id 'run_nope'.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.beta.threads.runs.cancel("run_nope", thread_id=thread.id)
    assert info.value.body == body("No run found with id 'run_nope'.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.retrieve("resp_nope")
    assert info.value.body == body("Response with id 'resp_nope' not found.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.cancel("resp_nope")
    assert info.value.body == body("Response with id 'resp_nope' not found.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.responses.create(model=MODEL, conversation="conv_nope", input="x")
    assert info.value.body == body("Conversation with id 'conv_nope' not found.")
    with pytest.raises(openai.NotFoundError) as info:
        await client.get("/nothing/here", cast_to=object)
    assert info.value.body == body("Invalid URL (GET /v1/nothing/here)")
    assert fake.errors[404] == 8


# ------------------------------------------------------------------ orphans


async def test_orphan_run_is_back_dated_and_blocks(fake: FakeOpenAI) -> None:
    client = fake.client()
    before = time.time()
    run_id = fake.add_run("thread_orphan", age=900.0, metadata={"threadlock_token": "x"})
    run = await client.beta.threads.runs.retrieve(run_id, thread_id="thread_orphan")
    assert run.status == "in_progress"
    assert run.metadata == {"threadlock_token": "x"}
    assert before - 905 <= run.created_at <= time.time() - 895
    assert run.expires_at is not None
    assert run.expires_at > time.time()
    fake.advance(100)  # stuck: nobody works on it
    assert fake.run_status(run_id) == "in_progress"
    with pytest.raises(openai.BadRequestError) as info:
        await client.beta.threads.messages.create("thread_orphan", role="user", content="x")
    assert run_id in _msg(info.value)
    listed = await client.beta.threads.runs.list("thread_orphan", limit=1)
    assert [r.id for r in listed.data] == [run_id]

    assert (await client.beta.threads.runs.cancel(run_id, thread_id="thread_orphan")).status == (
        "cancelling"
    )
    fake.advance(1.5)
    assert fake.run_status(run_id) == "cancelled"


async def test_orphan_variants(fake: FakeOpenAI) -> None:
    thread_id = fake.add_thread()
    done = fake.add_run(thread_id, status="completed", age=50)
    assert fake.run_status(done) == "completed"
    finishing = fake.add_run(thread_id, status="requires_action", age=10, completes_in=5)
    assert fake.run_status(finishing) == "requires_action"
    fake.advance(6)
    assert fake.run_status(finishing) == "completed"
    soon = fake.add_run(thread_id, age=10, expires_in=1)
    fake.advance(2)
    assert fake.run_status(soon) == "expired"


async def test_orphan_background_response(fake: FakeOpenAI) -> None:
    client = fake.client()
    before = time.time()
    response_id = fake.add_background_response("conv_orphan", age=400.0)
    response = await client.responses.retrieve(response_id)
    assert response.status == "in_progress"
    assert response.background is True
    assert before - 405 <= response.created_at <= time.time() - 395
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model=MODEL, conversation="conv_orphan", input="x")
    assert info.value.code == "conversation_locked"
    assert (await client.responses.cancel(response_id)).status == "cancelled"
    await client.responses.create(model=MODEL, conversation="conv_orphan", input="x")


# ------------------------------------------------------------------ faults


async def test_injected_429_and_500_reach_the_sdk(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    fault = fake.inject("POST", "/threads/{thread_id}/runs", status=429)
    with pytest.raises(openai.RateLimitError) as info:
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    assert info.value.code == "rate_limit_exceeded"
    assert fault.hits == 1
    assert fault.remaining == 0
    fake.inject("POST", "/threads/*/runs", status=500)
    with pytest.raises(openai.InternalServerError) as info5:
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    assert info5.value.type == "server_error"
    # no effect: no run was created
    assert (await client.beta.threads.runs.list(thread.id)).data == []
    # faults are used up
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_1")
    assert run.status == "queued"
    assert fake.errors[429] == 1
    assert fake.errors[500] == 1
    assert fake.calls["POST /threads/{thread_id}/runs"] == 3


async def test_apply_effect_is_a_lost_response(fake: FakeOpenAI) -> None:
    client = fake.client()
    thread = await client.beta.threads.create()
    fake.inject("POST", "/v1/threads/{thread_id}/runs", status=500, apply_effect=True)
    with pytest.raises(openai.InternalServerError):
        await client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id="asst_1", metadata={"threadlock_token": "tok"}
        )
    runs = await client.beta.threads.runs.list(thread.id, limit=1)
    assert len(runs.data) == 1
    assert runs.data[0].metadata == {"threadlock_token": "tok"}
    assert runs.data[0].status in ACTIVE_RUN_STATUSES


async def test_sdk_retries_injected_429(fake: FakeOpenAI) -> None:
    client = fake.client(max_retries=2)
    fake.inject("*", "/conversations", status=429, count=2, retry_after=0.001)
    conv = await client.conversations.create()
    assert conv.id.startswith("conv_")
    assert fake.calls["POST /conversations"] == 3


async def test_injected_timeout(fake: FakeOpenAI) -> None:
    client = fake.client()
    conv = await client.conversations.create()
    fake.inject("POST", "/responses", timeout=True, apply_effect=True)
    with pytest.raises(openai.APITimeoutError):
        await client.responses.create(model=MODEL, conversation=conv.id, input="lost")
    assert fake.timeouts == 1
    assert fake.calls["POST /responses"] == 1
    # the effect happened although the client never saw the answer
    assert fake.conversation_inputs(conv.id) == ["lost"]
    page = await client.conversations.items.list(conv.id, order="asc")
    assert [item.role for item in page.data] == ["user", "assistant"]  # type: ignore[union-attr]


async def test_client_read_timeout_leaves_response_generating() -> None:
    fake = FakeOpenAI(response_duration=60.0)
    client = fake.client(timeout=0.01)
    conv = await client.conversations.create()
    with pytest.raises(openai.APITimeoutError):
        await client.responses.create(model=MODEL, conversation=conv.id, input="slow")
    # the server keeps generating: the conversation stays locked until it is done
    assert fake.active_response(conv.id) is not None
    fake.advance(61)
    assert fake.active_response(conv.id) is None
    assert fake.conversation_inputs(conv.id) == ["slow"]


# ------------------------------------------------------------------ counters


async def test_counters_and_in_flight() -> None:
    fake = FakeOpenAI(response_duration=60.0)
    client = fake.client()
    conv_ids = [fake.add_conversation() for _ in range(4)]

    async def send(conv_id: str) -> None:
        await client.responses.create(model=MODEL, conversation=conv_id, input="x")

    async with anyio.create_task_group() as tg:
        for conv_id in conv_ids:
            tg.start_soon(send, conv_id)
        await _wait_for(lambda: fake.in_flight == 4)
        fake.advance(61)

    assert fake.in_flight == 0
    assert fake.max_in_flight == 4
    assert fake.requests == 4
    assert fake.calls == {"POST /responses": 4}
    assert fake.concurrency_errors == 0

    fake.reset_counters()
    assert fake.requests == 0
    assert fake.max_in_flight == 0
    assert not fake.calls
    await client.conversations.retrieve(conv_ids[0])
    assert fake.calls == {"GET /conversations/{conversation_id}": 1}
    assert fake.max_in_flight == 1


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="run_duration"):
        FakeOpenAI(run_duration=-1)
    with pytest.raises(ValueError, match="response_duration"):
        FakeOpenAI(response_duration=float("nan"))
    with pytest.raises(ValueError, match="status"):
        FakeOpenAI().inject("GET", "/x", status=200)


# ------------------------------------------------------------------ streaming


async def test_stream_sends_the_real_event_sequence_and_locks_until_read() -> None:
    fake = FakeOpenAI(response_duration=1.0)
    client = fake.client()
    conv = fake.add_conversation()
    stream = await client.responses.create(
        model=MODEL, conversation=conv, input="one two", stream=True
    )
    events = []
    async for event in stream:
        events.append(event)
        if event.type != "response.completed":
            assert fake.active_response(conv) == events[0].response.id
            with pytest.raises(openai.BadRequestError, match="Another process"):
                await client.conversations.items.create(
                    conv, items=[{"role": "user", "content": "meanwhile"}]
                )
        if event.type == "response.output_text.delta":
            fake.advance(0.5)  # the next delta is due at once
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1].response
    assert done.status == "completed"
    assert done.output_text == "Reply to: one two"
    assert fake.active_response(conv) is None
    assert fake.conversation_inputs(conv) == ["one two"]
    items = await client.conversations.items.list(conv, order="asc")
    assert [item.type for item in items.data] == ["message", "message"]


async def test_sdk_stream_helper_accumulates_the_final_response(fake: FakeOpenAI) -> None:
    conv = fake.add_conversation()
    async with fake.client().responses.stream(model=MODEL, conversation=conv, input="x") as s:
        snapshots = [e.snapshot async for e in s if e.type == "response.output_text.delta"]
        final = await s.get_final_response()
    assert snapshots[-1] == final.output_text == "Reply to: x"
    assert fake.response_status(final.id) == "completed"


async def test_closing_a_stream_cancels_the_response_and_unlocks() -> None:
    fake = FakeOpenAI(response_duration=10.0)
    client = fake.client()
    conv = fake.add_conversation()
    stream = await client.responses.create(model=MODEL, conversation=conv, input="x", stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            break
    response_id = fake.active_response(conv)
    assert response_id is not None
    await stream.close()
    assert fake.active_response(conv) is None
    assert fake.response_status(response_id) == "cancelled"
    retrieved = await client.responses.retrieve(response_id)
    assert (retrieved.status, retrieved.output) == ("cancelled", [])
    items = await client.conversations.items.list(conv)
    assert [item.role for item in items.data] == ["user"]  # type: ignore[union-attr]


async def test_function_call_response_then_its_output(fake: FakeOpenAI) -> None:
    conv = fake.add_conversation()
    client = fake.client()
    fake.call_function_next_response(conv, function_name="lookup", arguments='{"q":"x"}')
    stream = await client.responses.create(model=MODEL, conversation=conv, input="q", stream=True)
    types = []
    async for event in stream:
        types.append(event.type)
        if event.type == "response.completed":
            call = event.response.output[0]
    assert types[2:-1] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("lookup", '{"q":"x"}')
    answer = await client.responses.create(
        model=MODEL,
        conversation=conv,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found"}],
    )
    assert answer.output_text == "Reply to: found"
    # Not streamed, on a chain this time: the armed call goes to the next response anywhere.
    fake.call_function_next_response()
    plain = await client.responses.create(model=MODEL, input="q")
    assert plain.output[0].type == "function_call"
    assert fake.conversation_inputs(conv) == ["q"]


async def test_background_streaming_is_refused(fake: FakeOpenAI) -> None:
    conv = fake.add_conversation()
    with pytest.raises(openai.BadRequestError, match="background streaming"):
        await fake.client().responses.create(
            model=MODEL, conversation=conv, input="x", stream=True, background=True
        )
    assert fake.conversation_inputs(conv) == []


async def test_stream_read_timeout_is_the_sdk_timeout() -> None:
    fake = FakeOpenAI(response_duration=5.0)
    client = fake.client(timeout=openai.Timeout(5.0, read=0.05))
    conv = fake.add_conversation()
    stream = await client.responses.create(model=MODEL, conversation=conv, input="x", stream=True)
    with pytest.raises(openai.APITimeoutError):
        async for _ in stream:
            pass
    assert fake.active_response(conv) is None  # the SDK closed the stream on its way out


async def test_lost_stream_is_served_in_full_then_answered_with_the_fault(
    fake: FakeOpenAI,
) -> None:
    conv = fake.add_conversation()
    fault = fake.inject("POST", "/responses", status=500, apply_effect=True)
    with pytest.raises(openai.InternalServerError):
        await fake.client().responses.create(
            model=MODEL, conversation=conv, input="lost", stream=True
        )
    assert fault.hits == 1
    assert fake.conversation_inputs(conv) == ["lost"]
    assert fake.active_response(conv) is None  # generated to its end, not left locked
    items = await fake.client().conversations.items.list(conv, order="asc")
    assert [item.type for item in items.data] == ["message", "message"]
