"""The command line, through its entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from threadlock.cli import EXIT_OK, EXIT_USAGE, main


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
