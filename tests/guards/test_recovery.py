"""recover_orphaned_runs against FakeOpenAI, on every backend (the ``lock`` fixture of
``conftest.py``: memory, Redis and Postgres)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from threadlock import BackendError, MemoryThreadLock
from threadlock.openai import guard_conversation, guard_thread, recover_orphaned_runs
from threadlock.protocol import RunRecord
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


async def _orphan_run(fake: FakeOpenAI, lock: Backend, age: float) -> tuple[str, str]:
    """A run recorded in the registry by a worker that then died (no lease left)."""
    thread = fake.add_thread()
    run = fake.add_run(thread, "in_progress", age=age)
    await lock.track_run(RunRecord(thread, "run", run, thread, time.time() - age, 1, "dead"))
    return thread, run


async def test_cancels_orphans_and_skips_live_leases(lock: Backend) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    orphan_thread, orphan = await _orphan_run(fake, lock, age=900)
    live_thread, live_run = await _orphan_run(fake, lock, age=900)
    young_thread, young = await _orphan_run(fake, lock, age=10)
    live_lease = await lock.acquire(live_thread, ttl=60)  # a live worker owns this one

    report = await recover_orphaned_runs(client, lock=lock, max_age=300)

    assert report.cancelled == [orphan]
    assert report.skipped_live == [live_run]
    assert report.too_young == [young]
    assert report.errors == []
    assert sorted(report.checked) == sorted([orphan_thread, live_thread, young_thread])
    assert fake.run_status(orphan) == "cancelled"
    assert fake.run_status(live_run) == "in_progress"
    assert fake.run_status(young) == "in_progress"
    remaining = {r.run_id for r in await lock.tracked_runs()}
    assert remaining == {live_run, young}
    info = await lock.inspect(live_thread)
    assert info is not None
    assert info.fence == live_lease.fence  # recovery never touched the live lease
    assert [i.key for i in await lock.held()] == [live_thread]  # and released its own


async def test_dry_run_changes_nothing(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    _, orphan = await _orphan_run(fake, lock, age=900)
    before = await lock.tracked_runs()
    report = await recover_orphaned_runs(client, lock=lock, dry_run=True)
    assert report.dry_run
    assert report.cancelled == [orphan]  # what would be done
    assert fake.run_status(orphan) == "in_progress"
    assert await lock.tracked_runs() == before
    assert fake.calls["POST /threads/{thread_id}/runs/{run_id}/cancel"] == 0


async def test_terminal_run_and_vanished_thread_count_as_resolved(
    lock: Backend,
) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    thread = fake.add_thread()
    done = fake.add_run(thread, "completed", age=900)
    await lock.track_run(RunRecord(thread, "run", done, thread, 0.0, 1, "dead"))
    await lock.track_run(RunRecord("thread_gone", "run", "run_gone", "thread_gone", 0.0, 1, "x"))
    report = await recover_orphaned_runs(client, lock=lock)
    assert sorted(report.already_terminal) == sorted([done, "run_gone"])
    assert report.errors == []
    assert await lock.tracked_runs() == []


async def test_cannot_cancel_answer_counts_as_terminal(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    _, orphan = await _orphan_run(fake, lock, age=900)
    fake.inject(
        "POST",
        "/threads/{thread_id}/runs/{run_id}/cancel",
        status=400,
        body={
            "error": {
                "message": "Cannot cancel run with status 'completed'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )
    report = await recover_orphaned_runs(client, lock=lock)
    assert report.already_terminal == [orphan]
    assert report.cancelled == []
    assert await lock.tracked_runs() == []


async def test_injected_429s_are_retried(lock: Backend) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    _, orphan = await _orphan_run(fake, lock, age=900)
    fake.inject("POST", "/threads/{thread_id}/runs/{run_id}/cancel", status=429, count=2)
    fake.inject("GET", "/threads/{thread_id}/runs", status=503, count=1)
    report = await recover_orphaned_runs(client, lock=lock)
    assert report.cancelled == [orphan]
    assert fake.errors[429] == 2
    assert fake.errors[503] == 1
    assert fake.run_status(orphan) == "cancelled"


async def test_persistent_failure_is_reported_not_raised(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    _, orphan = await _orphan_run(fake, lock, age=900)
    fake.inject("POST", "/threads/{thread_id}/runs/{run_id}/cancel", status=500, count=None)
    with anyio.fail_after(60):
        report = await recover_orphaned_runs(client, lock=lock)
    assert [rid for rid, _ in report.errors] == [orphan]
    assert [r.run_id for r in await lock.tracked_runs()] == [orphan]  # kept for next time
    assert await lock.held() == []


async def test_at_most_concurrency_calls_at_once(lock: Backend) -> None:
    fake = FakeOpenAI(cancel_duration=0, latency=0.01)
    client = fake.client()
    orphans = [(await _orphan_run(fake, lock, age=900))[1] for _ in range(30)]
    report = await recover_orphaned_runs(client, lock=lock, concurrency=3)
    assert sorted(report.cancelled) == sorted(orphans)
    assert fake.max_in_flight <= 3
    assert fake.max_in_flight >= 2  # and it did run calls side by side


async def test_background_responses_are_cancelled(lock: Backend) -> None:
    fake = FakeOpenAI()
    client = fake.client()
    conversation = fake.add_conversation()
    old = fake.add_background_response(conversation, "in_progress", age=900)
    await lock.track_run(
        RunRecord(conversation, "response", old, conversation, time.time() - 900, 1, "dead")
    )
    report = await recover_orphaned_runs(client, lock=lock)
    assert report.cancelled == [old]
    assert fake.response_status(old) == "cancelled"
    assert await lock.tracked_runs() == []


async def test_caller_thread_ids_are_checked_too(lock: Backend) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    thread = fake.add_thread()
    unknown = fake.add_run(thread, "requires_action", age=900)  # never in the registry
    report = await recover_orphaned_runs(client, lock=lock, thread_ids=[thread])
    assert report.cancelled == [unknown]
    assert report.checked == [thread]


async def test_a_guarded_turn_left_running_is_recovered(lock: Backend) -> None:
    fake = FakeOpenAI(run_duration=600, cancel_duration=0, poll_after_ms=10)
    client = fake.client()
    thread = fake.add_thread()
    conversation = fake.add_conversation()
    with anyio.move_on_after(0.3):  # the worker is stopped in the middle of its turns
        async with guard_thread(client, thread, lock=lock) as turn:
            run = await turn.create(assistant_id="asst_1")
            await turn.wait(run)
    async with guard_conversation(client, conversation, lock=lock) as cturn:
        response = await cturn.create(model="m", input="x", background=True)
    report = await recover_orphaned_runs(client, lock=lock, max_age=0)
    assert sorted(report.cancelled) == sorted([run.id, response.id])
    assert await lock.tracked_runs() == []


async def test_arguments_are_checked(lock: Backend) -> None:
    client = FakeOpenAI().client()
    with pytest.raises(ValueError, match="max_age"):
        await recover_orphaned_runs(client, lock=lock, max_age=-1)
    with pytest.raises(ValueError, match="concurrency"):
        await recover_orphaned_runs(client, lock=lock, concurrency=0)
    with pytest.raises(ValueError, match="thread_ids"):
        await recover_orphaned_runs(client, lock=lock, thread_ids=[""])
    with pytest.raises(TypeError, match="client"):
        await recover_orphaned_runs(object(), lock=lock)  # type: ignore[arg-type]


class _UntrackFails(MemoryThreadLock):
    """A registry whose ``untrack_run`` fails for one thread's runs."""

    def __init__(self, failing_key: str) -> None:
        super().__init__()
        self.failing_key = failing_key

    async def untrack_run(self, key: str, run_id: str) -> None:
        if key == self.failing_key:
            raise BackendError("registry unreachable")
        await super().untrack_run(key, run_id)


async def test_a_registry_error_on_one_thread_is_listed_and_the_report_comes_back() -> None:
    # Issue 18 item 3: a BackendError from untrack_run on one thread is in ``errors``; the
    # other threads are recovered and a RecoveryReport is returned (no ExceptionGroup).
    fake = FakeOpenAI(cancel_duration=0)
    client = fake.client()
    lock = _UntrackFails("")
    failing_thread, failing_run = await _orphan_run(fake, lock, age=900)
    _, other_run = await _orphan_run(fake, lock, age=900)
    lock.failing_key = failing_thread

    report = await recover_orphaned_runs(client, lock=lock, max_age=300)

    assert sorted(report.cancelled) == sorted([failing_run, other_run])
    assert [rid for rid, _ in report.errors] == [failing_run]
    assert "registry unreachable" in report.errors[0][1]
    assert fake.run_status(failing_run) == "cancelled"
    assert fake.run_status(other_run) == "cancelled"
    assert {r.run_id for r in await lock.tracked_runs()} == {failing_run}
