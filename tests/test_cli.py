"""The command line, through its entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from threadlock.cli import EXIT_BACKEND, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, main
from threadlock.testing import FakeOpenAI


def _row(output: str, name: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(name):
            return line[len(name) :].split()
    raise AssertionError(f"no row {name!r} in:\n{output}")


def test_demo_guarded_pass_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--users", "6", "--messages", "4", "--workers", "6"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "without lock" in out
    assert "with threadlock" in out
    assert _row(out, "messages") == ["24", "24"]
    errors_without, errors_with = _row(out, "400 errors")
    assert int(errors_with) == 0
    assert int(errors_without) > 0  # the burst really collides without the lock
    assert _row(out, "out-of-order replies")[1] == "0"
    assert _row(out, "lost messages")[1] == "0"


def test_demo_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "0"]) == EXIT_USAGE
    assert "users" in capsys.readouterr().err


def test_status_json_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "memory://", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_unknown_scheme_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "nosuch://x"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown scheme" in err


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "threadlock", "status", "--url", "memory://"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert "no locks held" in done.stdout


def test_recover_json_cancels_an_orphan(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI(cancel_duration=0)
    thread = fake.add_thread()
    orphan = fake.add_run(thread, "in_progress", age=900)
    young = fake.add_run(fake.add_thread(), "in_progress", age=900)  # not asked about
    code = main(
        ["recover", "--url", "memory://", "--thread-id", thread, "--json"],
        openai_client=lambda args: fake.client(),
    )
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert report["cancelled"] == [orphan]
    assert report["checked"] == [thread]
    assert report["errors"] == []
    assert fake.run_status(orphan) == "cancelled"
    assert fake.run_status(young) == "in_progress"


def test_recover_dry_run_text_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI()
    thread = fake.add_thread()
    orphan = fake.add_run(thread, "in_progress", age=900)
    code = main(
        ["recover", "--url", "memory://", "--thread-id", thread, "--dry-run"],
        openai_client=lambda args: fake.client(),
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert f"would cancel: 1  {orphan}" in out
    assert fake.run_status(orphan) == "in_progress"


def test_recover_reports_errors_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeOpenAI()
    thread = fake.add_thread()
    fake.add_run(thread, "in_progress", age=900)
    fake.inject("GET", "/threads/{thread_id}/runs", status=401, count=None)
    code = main(
        ["recover", "--url", "memory://", "--thread-id", thread],
        openai_client=lambda args: fake.client(),
    )
    assert code == EXIT_PROBLEM
    assert "error:" in capsys.readouterr().out


def test_recover_without_api_key_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["recover", "--url", "memory://"]) == EXIT_USAGE
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_create_schema_refuses_other_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-schema", "--url", "redis://localhost"]) == EXIT_USAGE
    assert "postgresql://" in capsys.readouterr().err


def test_unreachable_backend_is_one_line_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert main(["status", "--url", "redis://127.0.0.1:1/0"]) == EXIT_BACKEND
    err = capsys.readouterr().err
    assert err.startswith("threadlock: backend error:")
    assert err.count("\n") == 1
