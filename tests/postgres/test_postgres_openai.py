"""The OpenAI guards and orphan recovery on Postgres, through FakeOpenAI.

The behaviour tests of ``tests/test_openai_guards.py`` and ``tests/test_recovery.py`` are
imported and run here unchanged against a ``PostgresThreadLock`` (the ``lock`` fixture below),
so both backends are held to the same scenarios. Then a crash across OS processes: a worker
holding a guarded turn's lease is SIGKILLed and a fresh recovery cancels its run, while the run
of a live worker is skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

# The SDK imports its Assistants types lazily, on first use, which takes about a second here;
# importing them now keeps that out of the imported tests' short time windows (e.g. the 0.3 s
# of test_cancelling_mid_run_releases_the_lock), which on the memory backend some earlier test
# always pays for.
import openai.resources.beta.beta  # noqa: F401
import pytest
from tests.test_openai_guards import (
    test_background_responses_are_tracked_and_waited_for,
    test_cancelling_mid_run_releases_the_lock,
    test_conversation_locked_retries_end_in_thread_busy,
    test_conversations_burst_without_and_with_the_lock,
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
    test_at_most_concurrency_calls_at_once,
    test_background_responses_are_cancelled,
    test_caller_thread_ids_are_checked_too,
    test_cancels_orphans_and_skips_live_leases,
    test_cannot_cancel_answer_counts_as_terminal,
    test_dry_run_changes_nothing,
    test_injected_429s_are_retried,
    test_terminal_run_and_vanished_thread_count_as_resolved,
)

from threadlock.backends.postgres import PostgresThreadLock
from threadlock.openai import recover_orphaned_runs
from threadlock.testing import FakeOpenAI

__all__ = [  # collected here, with this module's `lock` fixture
    "test_a_guarded_turn_left_running_is_recovered",
    "test_at_most_concurrency_calls_at_once",
    "test_background_responses_are_cancelled",
    "test_background_responses_are_tracked_and_waited_for",
    "test_caller_thread_ids_are_checked_too",
    "test_cancelling_mid_run_releases_the_lock",
    "test_cancels_orphans_and_skips_live_leases",
    "test_cannot_cancel_answer_counts_as_terminal",
    "test_conversation_locked_retries_end_in_thread_busy",
    "test_conversations_burst_without_and_with_the_lock",
    "test_dry_run_changes_nothing",
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

WORKER = Path(__file__).with_name("_pg_worker.py")


@pytest.fixture
async def lock(pg_dsn: str, pg_table: str) -> AsyncIterator[PostgresThreadLock]:
    backend = PostgresThreadLock.from_url(pg_dsn, table=pg_table, max_size=20)
    await backend.create_schema()
    try:
        yield backend
    finally:
        await backend.aclose()


class _Worker:
    """A ``_pg_worker.py run-holder`` process: holds a thread's lease and records its run."""

    def __init__(self, dsn: str, table: str, thread_id: str, run_id: str, ttl: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "run-holder", dsn, table, thread_id, run_id, str(ttl)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if not line.startswith("ready"):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"worker did not start: {line!r}\n{err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
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
    pg_dsn: str, pg_table: str, workers: list[_Worker]
) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    crashed_thread = fake.add_thread()
    crashed_run = fake.add_run(crashed_thread, "in_progress", age=900)
    live_thread = fake.add_thread()
    live_run = fake.add_run(live_thread, "in_progress", age=900)
    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as setup:
        await setup.create_schema()

    crashed = _Worker(pg_dsn, pg_table, crashed_thread, crashed_run, ttl=1.0)
    live = _Worker(pg_dsn, pg_table, live_thread, live_run, ttl=3.0)
    workers.extend([crashed, live])
    await crashed.ready()
    await live.ready()
    crashed.kill()  # SIGKILL in the middle of its run: no release, no clean-up

    async with PostgresThreadLock.from_url(pg_dsn, table=pg_table) as fresh:
        # The registry outlives the process that wrote it; the lease dies with its TTL.
        tracked = {r.run_id: r.key for r in await fresh.tracked_runs()}
        assert tracked == {crashed_run: crashed_thread, live_run: live_thread}
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
