"""threadlock.openai.agents with the real ``openai-agents`` package against FakeOpenAI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import agents
import anyio
import openai
import pytest

from threadlock import ThreadBusy, ThreadLock, ThreadLockError
from threadlock.openai import guard_conversation
from threadlock.openai.agents import (
    NO_SDK_RETRIES,
    LockedModel,
    LockedOpenAIConversationsSession,
    LockedSession,
    run_session,
)
from threadlock.testing import FakeOpenAI

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _agent(**kwargs: Any) -> agents.Agent[Any]:
    return agents.Agent(name="bot", instructions="Answer briefly.", model="gpt-4o", **kwargs)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_threadlock_does_not_import_agents() -> None:
    done = _python(
        "import sys, threadlock, threadlock.openai, threadlock.sync, threadlock.testing\n"
        "assert 'agents' not in sys.modules, 'agents was imported'\n"
    )
    assert done.returncode == 0, done.stderr


def test_without_the_extra_the_error_names_it() -> None:
    done = _python("import sys\nsys.modules['agents'] = None\nimport threadlock.openai.agents\n")
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "pip install 'threadlock[agents]'" in done.stderr


async def test_run_agent_serialises_a_burst_on_one_conversation(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.2)
    client = fake.client()
    conversation = fake.add_conversation()
    agent = _agent()
    replies: dict[str, str] = {}

    async def one(text: str) -> None:
        async with guard_conversation(client, conversation, lock=lock, timeout=30) as turn:
            result = await turn.run_agent(agent, text)
            replies[text] = result.final_output

    texts = [f"message {i}" for i in range(5)]
    async with anyio.create_task_group() as tg:
        for text in texts:
            tg.start_soon(one, text)
    assert replies == {t: f"Reply to: {t}" for t in texts}
    assert sorted(fake.conversation_inputs(conversation)) == texts  # each once
    assert fake.concurrency_errors == 0
    assert await lock.held() == []


async def test_run_agent_refuses_what_the_guard_supplies(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    async with guard_conversation(client, conversation, lock=lock) as turn:
        for name in ("conversation_id", "previous_response_id"):
            with pytest.raises(ValueError, match=name):
                await turn.run_agent(_agent(), "hi", **{name: "x"})
    assert fake.calls["POST /responses"] == 0


async def test_run_agent_on_a_chain_moves_the_head(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    heads = []
    for text in ("first", "second", "third"):
        async with guard_conversation(client, None, lock=lock, chain="user-7") as turn:
            result = await turn.run_agent(_agent(), text)
        assert result.final_output == f"Reply to: {text}"
        heads.append(result.last_response_id)
    assert await lock.chain_head("user-7") == heads[-1]  # type: ignore[attr-defined]
    assert fake.response_chain(heads[-1]) == ["first", "second", "third"]
    assert fake.previous_response_id(heads[1]) == heads[0]
    assert fake.branches() == {}


async def test_a_tool_calling_run_on_a_chain_moves_the_head_past_every_response(
    lock: ThreadLock,
) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()

    @agents.function_tool
    def weather() -> str:
        """Today's weather."""
        return "sunny"

    async with guard_conversation(client, None, lock=lock, chain="user-8") as turn:
        first = await turn.run_agent(_agent(), "hello")
    async with guard_conversation(client, None, lock=lock, chain="user-8") as turn:
        second = await turn.run_agent(_agent(tools=[weather]), "weather?")
    assert second.final_output == "Reply to: sunny"
    call, answer = (r.response_id for r in second.raw_responses)
    assert answer == second.last_response_id
    assert await lock.chain_head("user-8") == answer  # type: ignore[attr-defined]
    assert fake.previous_response_id(answer) == call
    assert fake.previous_response_id(call) == first.last_response_id
    assert fake.branches() == {}


async def test_without_a_run_config_the_run_gets_no_sdk_retries() -> None:
    from threadlock import MemoryThreadLock
    from threadlock.openai.agents import _Budget, locked_run_config

    client = FakeOpenAI().client()
    budget = _Budget(MemoryThreadLock(), "k", 1.0)
    config = locked_run_config(None, agent=_agent(), client=client, budget=budget, is_open=bool)
    assert config.model_settings is not None
    assert config.model_settings.retry == NO_SDK_RETRIES
    model = config.model_provider.get_model("gpt-4o")
    assert isinstance(model, LockedModel)
    assert isinstance(model.inner, agents.OpenAIResponsesModel)
    assert model.inner._client is client  # the guard's client serves the models
    as_dict = locked_run_config(
        {"workflow_name": "w"}, agent=_agent(), client=client, budget=budget, is_open=bool
    )
    assert as_dict.workflow_name == "w"
    assert as_dict.model_settings is not None
    assert as_dict.model_settings.retry == NO_SDK_RETRIES
    with pytest.raises(TypeError, match="run_config"):
        locked_run_config(3, agent=_agent(), client=client, budget=budget, is_open=bool)  # type: ignore[arg-type]


async def test_a_tool_calling_turn_spans_several_responses_under_one_lease(
    lock: ThreadLock,
) -> None:
    fake = FakeOpenAI(response_duration=0.05)
    client = fake.client()
    conversation = fake.add_conversation()
    seen: list[tuple[int, int]] = []  # (fence held during the tool, waiters queued)
    tool_started = anyio.Event()

    @agents.function_tool
    async def open_tickets() -> str:
        """How many support tickets are open."""
        tool_started.set()
        # Another turn arrives while the tool runs (between the two responses, when the
        # conversation itself is not locked by OpenAI): it must queue on the lease.
        with anyio.fail_after(10):
            while (info := await lock.inspect(conversation)) is None or info.waiters == 0:
                await anyio.sleep(0.01)
        seen.append((info.fence, info.waiters))
        return "3 open tickets"

    fences: dict[str, int] = {}

    async def tool_turn() -> None:
        async with guard_conversation(client, conversation, lock=lock, timeout=30) as turn:
            fences["tool"] = turn.lease.fence
            result = await turn.run_agent(_agent(tools=[open_tickets]), "how many tickets?")
        assert result.final_output == "Reply to: 3 open tickets"
        assert len(result.raw_responses) == 2

    async def other_turn() -> None:
        await tool_started.wait()
        async with guard_conversation(client, conversation, lock=lock, timeout=30) as turn:
            fences["other"] = turn.lease.fence
            result = await turn.run_agent(_agent(), "hello")
        assert result.final_output == "Reply to: hello"

    async with anyio.create_task_group() as tg:
        tg.start_soon(tool_turn)
        tg.start_soon(other_turn)
    assert seen == [(fences["tool"], 1)]
    assert fences["other"] > fences["tool"]
    page = await client.conversations.items.list(conversation, order="asc")
    kinds = [(item.type, getattr(item, "role", None)) for item in page.data]
    assert kinds == [
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert fake.calls["POST /responses"] == 3
    assert fake.concurrency_errors == 0


async def test_conversation_locked_is_retried_within_the_guards_timeout(
    lock: ThreadLock,
) -> None:
    # A process outside the lock keeps the conversation busy (a background response that
    # threadlock did not start): the run retries within the guard's timeout, then raises
    # ThreadBusy. The SDK adds no retries of its own: every create the fake saw is ours.
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    fake.add_background_response(conversation, "in_progress", completes_in=3600)
    with pytest.raises(ThreadBusy) as caught:
        async with guard_conversation(client, conversation, lock=lock, timeout=1.2) as turn:
            await turn.run_agent(_agent(), "hi")
    assert any("conversation_locked" in note for note in caught.value.__notes__)
    attempts = fake.calls["POST /responses"]
    assert attempts >= 2  # retried (backoff 0.5 s -> 2 s with jitter) ...
    assert attempts == fake.concurrency_errors_by_kind["conversation_locked"]
    assert await lock.held() == []


async def test_every_model_call_of_a_run_shares_one_deadline() -> None:
    from threadlock import MemoryThreadLock
    from threadlock.openai.agents import _Budget

    budget = _Budget(MemoryThreadLock(), "k", 5.0)
    _, first = budget.start()
    await anyio.sleep(0.01)
    _, second = budget.start()
    assert first is not None
    assert first == second  # a later model call of the run gets no fresh budget
    assert _Budget(MemoryThreadLock(), "k", None).start()[1] is None


async def test_conversation_locked_then_free_is_answered(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    # The background response completes only once the agent's request has met it (the fake's
    # clock jumps then); with a fixed 0.6 s it could finish before a loaded machine's first call.
    fake.add_background_response(conversation, "in_progress", completes_in=3600)

    async def complete_after_the_first_refusal() -> None:
        while fake.concurrency_errors_by_kind["conversation_locked"] == 0:
            await anyio.sleep(0.01)
        fake.advance(3600)

    async with anyio.create_task_group() as tg:
        tg.start_soon(complete_after_the_first_refusal)
        async with guard_conversation(client, conversation, lock=lock, timeout=30) as turn:
            result = await turn.run_agent(_agent(), "hi")
        tg.cancel_scope.cancel()  # a run that was never refused must fail below, not hang here
    assert result.final_output == "Reply to: hi"
    assert fake.concurrency_errors_by_kind["conversation_locked"] >= 1


async def test_the_sdk_retries_are_off_and_models_are_wrapped(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    seen: list[Any] = []

    class Spy(agents.RunHooks[Any]):
        async def on_llm_start(self, context: Any, agent: Any, *args: Any) -> None:
            seen.append(agent)

    own = agents.OpenAIResponsesModel(model="gpt-4o", openai_client=client)
    agent = agents.Agent(name="bot", model=own)
    user_config = agents.RunConfig(
        model_settings=agents.ModelSettings(temperature=0.5), workflow_name="mine"
    )
    from threadlock.openai.agents import _Budget, locked_run_config

    config = locked_run_config(
        user_config, agent=agent, client=client, budget=_Budget(lock, "k", 1.0), is_open=bool
    )
    assert config.model_settings is not None
    assert config.model_settings.retry == NO_SDK_RETRIES
    assert config.model_settings.temperature == 0.5
    assert config.workflow_name == "mine"
    assert isinstance(config.model, LockedModel)
    assert config.model.inner is own
    async with guard_conversation(client, conversation, lock=lock) as turn:
        result = await turn.run_agent(agent, "hi", hooks=Spy(), run_config=user_config)
    assert result.final_output == "Reply to: hi"
    assert seen == [agent]
    assert user_config.model_settings is not None
    assert user_config.model_settings.retry is None  # the caller's config is not changed


async def test_a_model_used_after_its_turn_refuses(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    captured: list[Any] = []

    class Keep(agents.RunHooks[Any]):
        async def on_llm_start(self, context: Any, agent: Any, *args: Any) -> None:
            captured.append(context)

    from threadlock.openai.agents import _Budget, locked_run_config

    done = True
    config = locked_run_config(
        None,
        agent=_agent(),
        client=client,
        budget=_Budget(lock, conversation, 1.0),
        is_open=lambda: not done,
    )
    model = config.model_provider.get_model("gpt-4o")
    with pytest.raises(ThreadLockError, match="turn that has ended"):
        await agents.Runner.run(_agent(), "hi", run_config=agents.RunConfig(model=model))
    assert fake.calls["POST /responses"] == 0


# -- Sessions --------------------------------------------------------------------------------


async def test_locked_session_keeps_concurrent_runs_apart(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.1)
    client = fake.client()
    provider = agents.OpenAIProvider(openai_client=client, use_responses=True)
    config = agents.RunConfig(model_provider=provider)
    session = LockedSession(agents.SQLiteSession("user-1"), lock=lock, timeout=30)
    assert session.key == "user-1"

    async def one(text: str) -> None:
        await run_session(_agent(), text, session=session, run_config=config)

    async with anyio.create_task_group() as tg:
        for text in ("a", "b", "c"):
            tg.start_soon(one, text)
    items = await session.get_items()
    pairs = [(item.get("role"), _text(item)) for item in items]
    # Each turn's question is followed by its own answer: no run read a half-written history.
    users = [text for role, text in pairs if role == "user"]
    assert sorted(users) == ["a", "b", "c"]
    for index in range(0, 6, 2):
        role, text = pairs[index]
        assert role == "user"
        assert pairs[index + 1][0] == "assistant"
        assert pairs[index + 1][1].endswith(f"{text}")
    assert await lock.held() == []


async def test_locked_session_calls_outside_a_run_take_the_lease(lock: ThreadLock) -> None:
    session = LockedSession(agents.SQLiteSession("user-2"), lock=lock, timeout=0)
    await session.add_items([{"role": "user", "content": "hi"}])
    async with lock.hold("user-2"):
        with pytest.raises(ThreadBusy):
            await session.get_items()
        with pytest.raises(ThreadBusy):
            await session.add_items([{"role": "user", "content": "again"}])
    assert [_text(i) for i in await session.get_items()] == ["hi"]
    assert await session.pop_item() is not None
    await session.clear_session()
    assert await session.get_items() == []


def test_locked_session_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="session"):
        LockedSession(object(), lock=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lock"):
        LockedSession(agents.SQLiteSession("s"), lock=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        LockedSession(agents.SQLiteSession("s"), lock=_memory(), key="")


async def test_locked_conversations_session_serialises_runs(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0.1)
    client = fake.client()
    conversation = fake.add_conversation()

    def session() -> LockedOpenAIConversationsSession:
        # One instance per run, as separate processes would have: the SDK's own asyncio.Lock
        # is per instance and would not serialise them.
        return LockedOpenAIConversationsSession(
            conversation_id=conversation, lock=lock, openai_client=client, timeout=30
        )

    assert isinstance(session(), agents.OpenAIConversationsSession)
    texts = [f"m{i}" for i in range(4)]
    replies: dict[str, str] = {}

    async def one(text: str) -> None:
        result = await run_session(_agent(), text, session=session())
        replies[text] = result.final_output

    async with anyio.create_task_group() as tg:
        for text in texts:
            tg.start_soon(one, text)
    # The session sends its whole history as input, so the fake replies to all of it: each
    # run saw the complete history of the runs before it, and ends with its own message.
    seen = {text: reply.removeprefix("Reply to: ").split("\n") for text, reply in replies.items()}
    assert all(lines[-1] == text for text, lines in seen.items())
    longest = max(seen.values(), key=len)
    assert sorted(seen.values(), key=len) == [longest[: n + 1] for n in range(len(texts))]
    assert fake.conversation_inputs(conversation) == longest
    assert fake.concurrency_errors == 0
    items = await session().get_items()
    roles = [item.get("role") for item in items]
    assert roles == ["user", "assistant"] * len(texts)


async def test_bare_conversations_sessions_interleave() -> None:
    # What the locked session prevents: separate instances (processes) run at once, so
    # their questions and answers interleave in the conversation.
    fake = FakeOpenAI(response_duration=0.1)
    client = fake.client()
    conversation = fake.add_conversation()
    provider = agents.OpenAIProvider(openai_client=client, use_responses=True)
    config = agents.RunConfig(model_provider=provider)
    replies: list[str] = []

    async def one(text: str) -> None:
        session = agents.OpenAIConversationsSession(
            conversation_id=conversation, openai_client=client
        )
        result = await agents.Runner.run(_agent(), text, session=session, run_config=config)
        replies.append(result.final_output)

    async with anyio.create_task_group() as tg:
        for text in ("m0", "m1", "m2", "m3"):
            tg.start_soon(one, text)
    assert len(replies) == 4
    page = await client.conversations.items.list(conversation, order="asc")
    roles = [getattr(item, "role", None) for item in page.data]
    assert sorted(roles) == ["assistant"] * 4 + ["user"] * 4
    assert roles != ["user", "assistant"] * 4  # a run's answer is not next to its question


async def test_locked_conversations_session_excludes_guarded_turns(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    session = LockedOpenAIConversationsSession(
        conversation_id=conversation, lock=lock, openai_client=client, timeout=0
    )
    async with guard_conversation(client, conversation, lock=lock):
        with pytest.raises(ThreadBusy):
            await session.add_items([{"role": "user", "content": "hi"}])
    await session.add_items([{"role": "user", "content": "hi"}])
    assert fake.conversation_inputs(conversation) == ["hi"]


def _memory() -> ThreadLock:
    from threadlock import MemoryThreadLock

    return MemoryThreadLock()


def _text(item: Any) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [])


def test_openai_is_the_sdk_the_fake_serves() -> None:
    assert isinstance(FakeOpenAI().client(), openai.AsyncOpenAI)


async def test_a_locked_stream_open_is_retried_and_events_pass_through() -> None:
    # The SDK streams through Model.stream_response; FakeOpenAI serves no streams yet, so a
    # Model of the test's own stands in for the OpenAI one behind the wrapper.
    from threadlock import MemoryThreadLock
    from threadlock.openai.agents import _Budget

    fake = FakeOpenAI(response_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    fake.add_background_response(conversation, "in_progress", completes_in=3600)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="m", conversation=conversation, input="x")
    locked = caught.value
    opened: list[int] = []

    class Inner(agents.Model):
        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        async def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            opened.append(1)
            if len(opened) == 1:
                raise locked
            for event in ("created", "delta", "completed"):
                yield event

    model = LockedModel(Inner(), _Budget(MemoryThreadLock(), conversation, 30.0), lambda: True)
    events = [event async for event in model.stream_response()]
    assert events == ["created", "delta", "completed"]
    assert len(opened) == 2

    refusing = LockedModel(Inner(), _Budget(MemoryThreadLock(), conversation, 30.0), bool)
    with pytest.raises(ThreadLockError, match="turn that has ended"):
        [event async for event in refusing.stream_response()]


async def test_model_requests_build_no_client_per_request(
    lock: ThreadLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With max_retries=0 the SDK asks the model's client for with_options(max_retries=0)
    # before every request; on a plain client that is a new AsyncOpenAI (and a platform probe
    # in a worker thread) per request. Through the guard, the guard's models and a caller's
    # OpenAIProvider alike, it is built once per client, not per request.
    fake = FakeOpenAI(response_duration=0)
    client = fake.client(max_retries=2)
    built: list[dict[str, Any]] = []
    real_copy = openai.AsyncOpenAI.copy

    def counting_copy(self: openai.AsyncOpenAI, **options: Any) -> openai.AsyncOpenAI:
        built.append(options)
        return real_copy(self, **options)

    monkeypatch.setattr(openai.AsyncOpenAI, "copy", counting_copy)
    monkeypatch.setattr(openai.AsyncOpenAI, "with_options", counting_copy)

    @agents.function_tool
    def weather() -> str:
        """Today's weather."""
        return "sunny"

    agent = _agent(tools=[weather])  # two model requests per run
    own = agents.RunConfig(
        model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True)
    )
    conversation = fake.add_conversation()
    for config in (None, own, None, own, None, own):
        async with guard_conversation(client, conversation, lock=lock) as turn:
            result = await turn.run_agent(agent, "weather?", run_config=config)
        assert result.final_output == "Reply to: sunny"
    assert fake.calls["POST /responses"] == 12
    assert built == [{"max_retries": 0}]  # the one no-retries copy of the client
    assert await lock.held() == []


async def test_the_sdk_adds_no_client_retries_to_a_callers_provider(lock: ThreadLock) -> None:
    fake = FakeOpenAI(response_duration=0)
    client = fake.client(max_retries=2)  # the openai SDK would retry a 500 twice
    conversation = fake.add_conversation()
    config = agents.RunConfig(
        model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True)
    )
    for index in range(2):
        fake.inject("POST", "/responses", status=500)
        fake.reset_counters()
        with pytest.raises(openai.InternalServerError):
            async with guard_conversation(client, conversation, lock=lock) as turn:
                await turn.run_agent(_agent(), f"t{index}", run_config=config)
        assert fake.requests == 1
    async with guard_conversation(client, conversation, lock=lock) as turn:
        result = await turn.run_agent(_agent(), "ok", run_config=config)
    assert result.final_output == "Reply to: ok"
    assert await lock.held() == []
