"""`threadlock status` and `recover` against the private Redis server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests._inbox_cli import check_reports, check_truncated_reports, scene

from threadlock.backends.redis import RedisThreadLock
from threadlock.cli import EXIT_OK, EXIT_PROBLEM, main
from threadlock.testing import FakeOpenAI

# `recover` drives the SDK's Assistants API, which warns on every call
pytestmark = pytest.mark.filterwarnings(
    "ignore:The Assistants API is deprecated:DeprecationWarning"
)


@pytest.fixture
def url(redis_url: str, prefix: str) -> str:
    """The shared server, under this test's own prefix (so others' keys never show)."""
    return f"{redis_url}?threadlock_prefix={prefix}"


def test_status_of_an_empty_backend(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", url, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.anyio
async def test_status_lists_a_lock_held_by_another_client(
    url: str, redis_url: str, prefix: str
) -> None:
    async with (
        RedisThreadLock.from_url(redis_url, prefix=prefix) as lock,
        lock.hold("conv_held", ttl=60) as lease,
    ):
        done = subprocess.run(
            [sys.executable, "-m", "threadlock", "status", "--url", url, "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == EXIT_OK, done.stderr
        (row,) = json.loads(done.stdout)
        assert row["key"] == "conv_held"
        assert row["fence"] == lease.fence


def test_status_text_of_an_empty_backend(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "threadlock", "status", "--url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == "no locks held\n"


def test_recover_json_cancels_an_orphan(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    thread = fake.add_thread()
    orphan = fake.add_run(thread, "in_progress", age=900)
    other = fake.add_run(fake.add_thread(), "in_progress", age=900)  # not asked about
    code = main(
        ["recover", "--url", url, "--thread-id", thread, "--json"],
        openai_client=lambda args: fake.client(),
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == EXIT_OK
    assert report["cancelled"] == [orphan]
    assert report["checked"] == [thread]
    assert report["errors"] == []
    assert fake.run_status(orphan) == "cancelled"
    assert fake.run_status(other) == "in_progress"
    # Progress on stderr: what it checks, and each cancellation as it happens.
    assert "recover: checking 1 conversation/thread" in captured.err
    assert f"recover: cancelled run {orphan}" in captured.err


def test_recover_dry_run_text_changes_nothing(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI()
    thread = fake.add_thread()
    orphan = fake.add_run(thread, "in_progress", age=900)
    code = main(
        ["recover", "--url", url, "--thread-id", thread, "--dry-run"],
        openai_client=lambda args: fake.client(),
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "checked 1 conversation/thread\n" in out
    assert f"would cancel: 1  {orphan}" in out
    assert fake.run_status(orphan) == "in_progress"


def test_recover_reports_errors_with_exit_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI()
    threads = [fake.add_thread(), fake.add_thread()]
    for thread in threads:
        fake.add_run(thread, "in_progress", age=900)
    # The API answers (the key is good), but listing runs is refused.
    fake.inject("GET", "/threads/{thread_id}/runs", status=403, count=None)
    args = ["recover", "--url", url]
    for thread in threads:
        args += ["--thread-id", thread]
    code = main(args, openai_client=lambda args: fake.client())
    out = capsys.readouterr().out
    assert code == EXIT_PROBLEM
    assert "checked 2 conversations/threads" in out
    assert sorted(
        line.split(":")[1].strip() for line in out.splitlines() if line.startswith("error:")
    ) == sorted(threads)


def test_recover_retries_show_progress(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    thread = fake.add_thread()
    orphan = fake.add_run(thread, "in_progress", age=900)
    fake.inject("GET", "/threads/{thread_id}/runs", status=503, count=1)
    code = main(
        ["recover", "--url", url, "--thread-id", thread],
        openai_client=lambda args: fake.client(),
    )
    err = capsys.readouterr().err
    assert code == EXIT_OK
    assert f"recover: list runs of {thread}: InternalServerError, retrying in" in err
    assert fake.run_status(orphan) == "cancelled"


@pytest.mark.anyio
async def test_status_and_recover_inbox(
    url: str,
    redis_url: str,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # recover --inbox needs none
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        live = await scene(lock)
        await check_reports(["--url", url], capsys)
        await check_truncated_reports(["--url", url], capsys)
        await lock.release(live)


def test_recover_reports_the_inbox_after_the_runs(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeOpenAI()
    assert main(["recover", "--url", url, "--json"], openai_client=lambda a: fake.client()) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inbox"] == {
        "keys": 0,
        "pending": 0,
        "dead_letters": 0,
        "stranded": [],
        "truncated": False,
    }
    assert main(["recover", "--url", url], openai_client=lambda a: fake.client()) == 0
    assert "inbox stranded (pending, no live lease): 0\n" in capsys.readouterr().out
