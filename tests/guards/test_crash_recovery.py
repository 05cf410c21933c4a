"""A crash across OS processes, on each shared-store backend (Redis, Postgres).

A worker in the middle of a guarded turn is SIGKILLed, and recovery in a fresh backend
instance cancels its run while it skips the run of a live worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.guards._turn_worker import open_backend

from threadlock.openai import recover_orphaned_runs
from threadlock.testing import FakeOpenAI

pytestmark = [
    pytest.mark.anyio,
    # guard_thread and recovery drive the SDK's Assistants API, which warns on every call
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
    # The worker is another process: only backends whose store outlives it take part.
    pytest.mark.parametrize(
        "backend_case", [("redis", "asyncio"), ("postgres", "asyncio")], ids=["redis", "postgres"]
    ),
]

WORKER = Path(__file__).with_name("_turn_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
async def store(
    backend_case: tuple[str, str], request: pytest.FixtureRequest
) -> tuple[str, str, str]:
    """``(backend, url, namespace)`` of a fresh, empty store that other processes reach."""
    backend = backend_case[0]
    if backend == "redis":
        return backend, request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
    dsn, table = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_table")
    async with open_backend(backend, dsn, table) as setup:
        await setup.create_schema()  # type: ignore[attr-defined]
    return backend, dsn, table


class _Worker:
    """A ``_turn_worker.py`` process: a guarded turn that created a run, left open."""

    def __init__(self, store: tuple[str, str, str], thread_id: str, run_id: str, ttl: float):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        }
        self.run_id = run_id
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *store, thread_id, run_id, str(ttl)],
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
        self.proc.communicate(timeout=10)  # reads and closes both pipes


@pytest.fixture
def workers() -> Iterator[list[_Worker]]:
    started: list[_Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


async def test_sigkilled_worker_run_is_recovered_and_a_live_one_skipped(
    store: tuple[str, str, str], workers: list[_Worker]
) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    crashed_thread = fake.add_thread()
    crashed_run = fake.add_run(crashed_thread, "in_progress", age=900)
    live_thread = fake.add_thread()
    live_run = fake.add_run(live_thread, "in_progress", age=900)

    crashed = _Worker(store, crashed_thread, crashed_run, ttl=2.0)
    live = _Worker(store, live_thread, live_run, ttl=3.0)
    workers.extend([crashed, live])
    await crashed.ready()
    await live.ready()
    crashed.kill()  # SIGKILL in the middle of its run: no release, no clean-up

    fresh: Any
    async with open_backend(*store) as fresh:
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
