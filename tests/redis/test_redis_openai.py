"""The OpenAI guards and orphan recovery on Redis, through FakeOpenAI.

The behaviour tests of ``tests/test_openai_guards.py`` and ``tests/test_recovery.py`` are
imported and run here unchanged against a ``RedisThreadLock`` (the ``lock`` fixture below),
so the Redis backend is held to the same scenarios as the memory backend. Then a crash across
OS processes: a worker in the middle of a guarded turn is SIGKILLed, and recovery in a fresh
backend instance cancels its run while it skips the run of a live worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from tests.test_openai_guards import (
    test_background_responses_are_tracked_and_waited_for,
    test_cancelling_mid_run_releases_the_lock,
    test_conversation_locked_from_outside_is_retried_once_per_input,
    test_conversation_locked_retries_end_in_thread_busy,
    test_conversations_burst_without_and_with_the_lock,
    test_failed_run_create_without_effect_is_retried,
    test_lease_is_renewed_through_a_long_run,
    test_lost_lease_inside_a_guard_raises_lease_lost,
    test_lost_run_create_is_reconciled_without_a_duplicate,
    test_previous_response_chain_never_branches,
    test_requires_action_inside_the_turn_submits_tool_outputs,
    test_requires_action_is_not_free,
    test_thread_waits_for_a_run_left_by_another_process,
    test_threads_burst_without_and_with_the_lock,
)
from tests.test_recovery import (
    test_a_guarded_turn_left_running_is_recovered,
    test_arguments_are_checked,
    test_at_most_concurrency_calls_at_once,
    test_background_responses_are_cancelled,
    test_caller_thread_ids_are_checked_too,
    test_cancels_orphans_and_skips_live_leases,
    test_cannot_cancel_answer_counts_as_terminal,
    test_dry_run_changes_nothing,
    test_injected_429s_are_retried,
    test_terminal_run_and_vanished_thread_count_as_resolved,
)

from threadlock.backends.redis import RedisThreadLock
from threadlock.openai import recover_orphaned_runs
from threadlock.testing import FakeOpenAI

__all__ = [  # collected here, with this module's `lock` fixture
    "test_a_guarded_turn_left_running_is_recovered",
    "test_arguments_are_checked",
    "test_at_most_concurrency_calls_at_once",
    "test_background_responses_are_cancelled",
    "test_background_responses_are_tracked_and_waited_for",
    "test_caller_thread_ids_are_checked_too",
    "test_cancelling_mid_run_releases_the_lock",
    "test_cancels_orphans_and_skips_live_leases",
    "test_cannot_cancel_answer_counts_as_terminal",
    "test_conversation_locked_from_outside_is_retried_once_per_input",
    "test_conversation_locked_retries_end_in_thread_busy",
    "test_conversations_burst_without_and_with_the_lock",
    "test_dry_run_changes_nothing",
    "test_failed_run_create_without_effect_is_retried",
    "test_injected_429s_are_retried",
    "test_lease_is_renewed_through_a_long_run",
    "test_lost_lease_inside_a_guard_raises_lease_lost",
    "test_lost_run_create_is_reconciled_without_a_duplicate",
    "test_previous_response_chain_never_branches",
    "test_requires_action_inside_the_turn_submits_tool_outputs",
    "test_requires_action_is_not_free",
    "test_terminal_run_and_vanished_thread_count_as_resolved",
    "test_thread_waits_for_a_run_left_by_another_process",
    "test_threads_burst_without_and_with_the_lock",
]

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("redis_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module", autouse=True)
def _warm_openai_sdk() -> None:
    """Make one call of each kind through the openai SDK before the timed scenarios.

    The SDK builds its response models on first use, which takes about half a second on a
    loaded machine; ``test_cancelling_mid_run_releases_the_lock`` (a 0.3 s window) fails on
    any backend when it is the first to list runs in the process.
    """

    async def warm() -> None:
        fake = FakeOpenAI(run_duration=0, response_duration=0)
        client = fake.client()
        thread = fake.add_thread()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            await client.beta.threads.messages.create(thread, role="user", content="hi")
            run = await client.beta.threads.runs.create(thread, assistant_id="asst_1")
            await client.beta.threads.runs.list(thread, limit=1)
            await client.beta.threads.runs.retrieve(run.id, thread_id=thread)
        conversation = fake.add_conversation()
        await client.responses.create(model="m", conversation=conversation, input="hi")
        await client.close()

    anyio.run(warm)


@pytest.fixture
async def lock(redis_url: str, prefix: str) -> AsyncIterator[RedisThreadLock]:
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as backend:
        yield backend


class _Worker:
    """A ``redis_worker.py turn`` process: a guarded turn that created a run, left open."""

    def __init__(self, url: str, prefix: str, thread_id: str, run_id: str, ttl: float) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        self.run_id = run_id
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "turn", url, prefix, thread_id, run_id, str(ttl)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if line.split() != ["READY", self.run_id]:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"worker did not start its turn: {line!r}\n{err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
        self.proc.wait(timeout=10)


@pytest.fixture
def workers() -> Iterator[list[_Worker]]:
    started: list[_Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


async def test_sigkilled_worker_run_is_recovered_and_a_live_one_skipped(
    redis_url: str, prefix: str, workers: list[_Worker]
) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    crashed_thread = fake.add_thread()
    crashed_run = fake.add_run(crashed_thread, "in_progress", age=900)
    live_thread = fake.add_thread()
    live_run = fake.add_run(live_thread, "in_progress", age=900)

    crashed = _Worker(redis_url, prefix, crashed_thread, crashed_run, ttl=1.0)
    live = _Worker(redis_url, prefix, live_thread, live_run, ttl=3.0)
    workers.extend([crashed, live])
    await crashed.ready()
    await live.ready()
    crashed.kill()  # SIGKILL in the middle of its run: no release, no clean-up

    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as fresh:
        # The registry outlives the process that wrote it; the lease dies with its TTL.
        tracked = {r.run_id: (r.key, r.kind, r.thread_id) for r in await fresh.tracked_runs()}
        assert tracked == {
            crashed_run: (crashed_thread, "run", crashed_thread),
            live_run: (live_thread, "run", live_thread),
        }
        with anyio.fail_after(10):
            while await fresh.inspect(crashed_thread) is not None:
                await anyio.sleep(0.05)
        live_info = await fresh.inspect(live_thread)
        assert live_info is not None
        assert live_info.run_id == live_run

        report = await recover_orphaned_runs(fake.client(), lock=fresh, max_age=300)

        assert report.cancelled == [crashed_run]
        assert report.skipped_live == [live_run]
        assert report.errors == []
        assert sorted(report.checked) == sorted([crashed_thread, live_thread])
        assert fake.run_status(crashed_run) == "cancelled"
        assert fake.run_status(live_run) == "in_progress"
        assert [r.run_id for r in await fresh.tracked_runs()] == [live_run]
        info = await fresh.inspect(live_thread)
        assert info is not None
        assert info.fence == live_info.fence  # recovery never touched the live lease
        assert [i.key for i in await fresh.held()] == [live_thread]
    assert live.proc.poll() is None  # the live worker was left alone
