"""A create whose reply is cut off by a cancel (a client disconnect, a shutdown) still leaves
its run or background response where recovery finds it (issue 18, item 4).

Each test holds back the fake's answer to the create (``FakeOpenAI.stall``): the run or
response exists on the "server", the guard has not heard of it yet, and the task running the
turn is cancelled in that window. Recovery then runs from a fresh backend instance, as a new
process would (the memory backend's registry lives in its instance: there, the same one).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import openai
import pytest

from threadlock.openai import _recorded, guard_conversation, guard_thread, recover_orphaned_runs
from threadlock.openai._recorded import create_recorded
from threadlock.openai.guard import RUN_TOKEN_METADATA
from threadlock.openai.threads import INTENT_PREFIX
from threadlock.protocol import RunRecord
from threadlock.testing import FakeOpenAI
from threadlock.testing.fake_openai import ACTIVE_RESPONSE_STATUSES, ACTIVE_RUN_STATUSES

if TYPE_CHECKING:
    from threadlock import ThreadLock

pytestmark = [
    pytest.mark.anyio,
    # the thread guard and recovery drive the SDK's Assistants API, which warns on every call
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]

RUNS = "/threads/{thread_id}/runs"


async def test_run_created_while_the_turn_is_cancelled_is_recovered(
    lock: ThreadLock, reopen: Any
) -> None:
    fake = FakeOpenAI(run_duration=60, cancel_duration=0)
    client = fake.client()
    thread = fake.add_thread()
    stall = fake.stall("POST", RUNS)
    ended: list[str] = []

    async def turn(scope: anyio.CancelScope) -> None:
        with scope:
            async with guard_thread(client, thread, lock=lock) as guarded:
                await guarded.create(assistant_id="asst_1")
                ended.append("create returned")  # never: the cancel lands first
        ended.append("cancelled" if scope.cancelled_caught else "not cancelled")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn, scope)
        await stall.served.wait()
        run_id = fake.active_run(thread)
        assert run_id is not None  # the run exists; its create call has no answer yet
        scope.cancel()  # the client went away with the reply in flight
        stall.release()
    assert ended == ["cancelled"]
    assert await lock.inspect(thread) is None  # the lease was released
    assert fake.run_status(run_id) in ACTIVE_RUN_STATUSES

    async with reopen() as other:
        report = await recover_orphaned_runs(client, lock=other, max_age=0)
        assert report.cancelled == [run_id]
        assert report.errors == []
        assert fake.run_status(run_id) == "cancelled"
        assert await other.tracked_runs(thread) == []


async def test_background_response_created_while_the_turn_is_cancelled_is_recovered(
    lock: ThreadLock, reopen: Any
) -> None:
    fake = FakeOpenAI(background_duration=60, cancel_duration=0)
    client = fake.client()
    conversation = fake.add_conversation()
    stall = fake.stall("POST", "/responses")
    ended: list[str] = []

    async def turn(scope: anyio.CancelScope) -> None:
        with scope:
            async with guard_conversation(client, conversation, lock=lock) as guarded:
                await guarded.create(model="m", input="hi", background=True)
                ended.append("create returned")
        ended.append("cancelled" if scope.cancelled_caught else "not cancelled")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(turn, scope)
        await stall.served.wait()
        response_id = fake.active_response(conversation)
        assert response_id is not None
        scope.cancel()
        stall.release()
    assert ended == ["cancelled"]
    assert await lock.inspect(conversation) is None
    assert fake.response_status(response_id) in ACTIVE_RESPONSE_STATUSES

    async with reopen() as other:
        report = await recover_orphaned_runs(client, lock=other, max_age=0)
        assert report.cancelled == [response_id]
        assert report.errors == []
        assert fake.response_status(response_id) == "cancelled"
        assert await other.tracked_runs(conversation) == []


async def test_intent_is_recorded_before_the_run_is_created_and_a_live_turn_is_skipped(
    lock: ThreadLock, reopen: Any
) -> None:
    """While the create's answer is in flight the registry already names the thread (the
    intent, tagged with the run's token), and recovery leaves the live worker's run alone."""
    fake = FakeOpenAI(run_duration=60, cancel_duration=0)
    client = fake.client()
    thread = fake.add_thread()
    stall = fake.stall("POST", RUNS)
    created: list[str] = []

    async def turn() -> None:
        async with guard_thread(client, thread, lock=lock) as guarded:
            run = await guarded.create(assistant_id="asst_1")
            created.append(run.id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await stall.served.wait()
        run_id = fake.active_run(thread)
        assert run_id is not None
        async with reopen() as other:
            [intent] = await other.tracked_runs(thread)
            assert intent.kind == "run"
            assert intent.run_id.startswith(INTENT_PREFIX)
            run = await client.beta.threads.runs.retrieve(run_id, thread_id=thread)
            assert intent.run_id == INTENT_PREFIX + (run.metadata or {})[RUN_TOKEN_METADATA]
            report = await recover_orphaned_runs(client, lock=other, max_age=0)
            assert report.skipped_live == [intent.run_id]
            assert report.cancelled == []
        stall.release()
    assert created == [run_id]
    assert fake.run_status(run_id) in ACTIVE_RUN_STATUSES  # the live worker's run is untouched
    assert [r.run_id for r in await lock.tracked_runs(thread)] == [run_id]  # intent resolved


async def test_recovery_resolves_an_intent_by_the_run_token(lock: ThreadLock) -> None:
    """What a worker killed before its create answered leaves: an intent entry and, on the
    thread, the run tagged with its token. Recovery cancels that run and forgets the intent;
    an intent whose run never came into being is forgotten too."""
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    thread = fake.add_thread()
    other_run = fake.add_run(thread, "completed", age=900)  # an older run, not this intent's
    orphan = fake.add_run(thread, "in_progress", age=900, metadata={RUN_TOKEN_METADATA: "t1"})
    stale_thread = fake.add_thread()
    now = time.time()
    await lock.track_run(RunRecord(thread, "run", INTENT_PREFIX + "t1", thread, now, 1, "dead"))
    await lock.track_run(
        RunRecord(stale_thread, "run", INTENT_PREFIX + "t2", stale_thread, now, 1, "dead")
    )

    report = await recover_orphaned_runs(client, lock=lock, max_age=300)

    assert report.cancelled == [orphan]
    assert report.already_terminal == []  # an intent names no run: it is not reported as one
    assert report.errors == []
    assert fake.run_status(orphan) == "cancelled"
    assert fake.run_status(other_run) == "completed"
    assert await lock.tracked_runs() == []


async def test_a_create_that_never_answers_ends_at_the_callers_deadline() -> None:
    """The shield waits for the answer, but never past the caller's deadline (in a turn, the
    lease's expiry): then the caller's own cancellation comes out, and nothing is recorded."""
    recorded: list[str] = []

    async def never_answers() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def record(created: str) -> None:
        recorded.append(created)

    with anyio.move_on_after(0.05) as scope:
        await create_recorded(never_answers, record, "runs.create")
    assert scope.cancelled_caught
    assert recorded == []


async def test_a_create_that_never_answers_is_a_timeout_at_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a caller deadline, the shield's own bound ends the wait with TimeoutError."""
    monkeypatch.setattr(_recorded, "_BOUND", 0.05)

    async def never_answers() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def record(created: str) -> None:
        raise AssertionError("nothing was created")

    with pytest.raises(TimeoutError, match="runs.create did not answer"):
        await create_recorded(never_answers, record, "runs.create")


async def test_a_cancel_during_the_create_is_delivered_after_the_entry() -> None:
    """Order: the create answers, the entry is written, then the cancel comes out."""
    events: list[str] = []
    answered = anyio.Event()
    go_on = anyio.Event()

    async def create() -> str:
        answered.set()
        await go_on.wait()
        events.append("answered")
        return "run_1"

    async def record(created: str) -> None:
        events.append(f"recorded {created}")

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            await create_recorded(create, record, "runs.create")
            events.append("returned")
        events.append("cancelled" if scope.cancelled_caught else "not cancelled")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        await answered.wait()
        scope.cancel()
        go_on.set()
    assert events == ["answered", "recorded run_1", "cancelled"]


async def test_a_refused_create_leaves_no_intent(lock: ThreadLock) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    thread = fake.add_thread()
    fake.inject("POST", RUNS, status=400)
    async with guard_thread(client, thread, lock=lock) as guarded:
        with pytest.raises(openai.BadRequestError):
            await guarded.create(assistant_id="asst_1")
        assert await lock.tracked_runs(thread) == []  # refused: no run, no entry


async def test_an_unknown_outcome_keeps_the_intent_for_recovery(lock: ThreadLock) -> None:
    """Every answer lost (a run may or may not exist): the intent stays; recovery, finding no
    run with its tag, forgets it."""
    fake = FakeOpenAI()
    client = fake.client()
    thread = fake.add_thread()
    fake.inject("POST", RUNS, timeout=True, count=None)
    async with guard_thread(client, thread, lock=lock, timeout=5) as guarded:
        with pytest.raises(openai.APITimeoutError):
            await guarded.create(assistant_id="asst_1")
        [intent] = await lock.tracked_runs(thread)
        assert intent.run_id.startswith(INTENT_PREFIX)
    report = await recover_orphaned_runs(client, lock=lock, max_age=0)
    assert report.cancelled == []
    assert report.errors == []
    assert await lock.tracked_runs() == []
