"""The command line, through its entry point."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from threadlock import __version__
from threadlock.cli import EXIT_BACKEND, EXIT_OK, EXIT_OPENAI, EXIT_USAGE, main
from threadlock.testing import FakeOpenAI

_ENV_URLS = ("THREADLOCK_URL", "REDIS_URL", "UPSTASH_REDIS_URL", "REDIS_HOST")


@pytest.fixture
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV_URLS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound, never listening, so connects are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


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
    assert "with inbox (coalesce)" in out
    assert _row(out, "messages") == ["24", "24", "24"]
    errors_without, errors_with, errors_inbox = _row(out, "400 errors (incl. retries)")
    assert int(errors_with) == int(errors_inbox) == 0
    assert int(errors_without) > 0  # the burst really collides without the lock
    assert _row(out, "out-of-order replies")[1:] == ["0", "0"]
    assert _row(out, "lost messages")[1:] == ["0", "0"]
    calls_without, calls_with, calls_inbox = map(int, _row(out, "model calls (all tries)"))
    assert calls_with == 24  # one turn a message
    assert calls_without > 24  # the refused attempts are calls too
    # each user's burst is sent at once: one turn for what is pending when the owner takes
    # its first batch, at most one more for the rest
    assert 6 <= calls_inbox <= 6 * 2


def test_demo_announces_each_pass_and_fits_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--users", "3", "--messages", "2", "--workers", "3"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    passes = [line for line in lines if line.startswith("pass ")]
    assert passes == [
        "pass 1 of 3, without lock: 6 messages ...",
        "pass 2 of 3, with threadlock: 6 messages ...",
        "pass 3 of 3, with inbox (coalesce): 6 messages ...",
    ]
    table = lines.index(next(line for line in lines if line.startswith("messages")))
    assert lines.index(passes[2]) < table  # announced before the figures, not after
    assert max(len(line) for line in lines) <= 80


def test_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--users", "4", "--messages", "3", "--workers", "4", "--json"])
    captured = capsys.readouterr()
    figures = json.loads(captured.out)  # stdout is the JSON alone
    assert code == EXIT_OK
    assert figures["clean"] is True
    without, with_lock, with_inbox = figures["passes"]
    assert [p["label"] for p in figures["passes"]] == [
        "without lock",
        "with threadlock",
        "with inbox (coalesce)",
    ]
    assert without["messages"] == with_lock["messages"] == with_inbox["messages"] == 12
    assert without["errors"] > 0
    for locked in (with_lock, with_inbox):
        assert (locked["errors"], locked["lost"], locked["out_of_order"]) == (0, 0, 0)
        assert locked["p50"] <= locked["p99"]
        assert locked["last_reply_p50"] is not None
    assert with_lock["model_calls"] == 12
    assert 4 <= with_inbox["model_calls"] <= 4 * 2  # per user: at most two turns
    assert "pass 1 of 3" in captured.err  # progress goes to stderr


def test_demo_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "0"]) == EXIT_USAGE
    assert "users" in capsys.readouterr().err


def test_create_schema_refuses_other_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-schema", "--url", "redis://localhost"]) == EXIT_USAGE
    assert "postgresql://" in capsys.readouterr().err


def test_unreachable_backend_is_one_line_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    assert main(["status", "--url", "redis://127.0.0.1:1/0"]) == EXIT_BACKEND
    err = capsys.readouterr().err
    assert err.startswith("threadlock: backend error:")
    assert err.count("\n") == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == EXIT_OK
    assert capsys.readouterr().out.strip() == f"threadlock {__version__}"


def test_help_has_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == EXIT_OK
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "threadlock status --url redis://" in out
    assert "4 OpenAI unreachable" in out


@pytest.mark.parametrize("command", ["status", "recover"])
def test_subcommand_help_has_a_description(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "memory:// is refused" in out or "Walks the run registry" in out
    assert "examples:" in out


@pytest.mark.parametrize("command", ["status", "recover"])
def test_no_url_is_refused_not_an_all_clear(
    command: str,
    no_backend_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main([command]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "no locks held" not in captured.out
    assert captured.err.count("\n") == 1
    assert "pass --url" in captured.err
    assert "THREADLOCK_URL" in captured.err


@pytest.mark.parametrize("command", ["status", "recover"])
def test_memory_url_is_refused(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main([command, "--url", "memory://"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "memory://" in captured.err
    assert "--url redis://" in captured.err


def test_memory_in_the_environment_is_refused(
    no_backend_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THREADLOCK_URL", "memory://")
    assert main(["status"]) == EXIT_USAGE
    assert "memory://" in capsys.readouterr().err


@pytest.mark.timeout(20)  # a bound against hanging, not a timing goal
@pytest.mark.parametrize("command", ["status", "create-schema"])
def test_dead_postgres_is_one_line_exit_3(
    command: str, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg_pool")
    url = f"postgresql://threadlock@127.0.0.1:{closed_port}/threadlock"
    assert main([command, "--url", url]) == EXIT_BACKEND
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1  # not psycopg_pool's repeated warnings
    assert captured.err.startswith("threadlock: backend error:")


def test_dead_postgres_through_the_console_script_is_one_line(closed_port: int) -> None:
    pytest.importorskip("psycopg_pool")
    url = f"postgresql://threadlock@127.0.0.1:{closed_port}/threadlock"
    done = subprocess.run(
        [sys.executable, "-m", "threadlock", "status", "--url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == EXIT_BACKEND
    assert done.stderr.count("\n") == 1, done.stderr
    assert "couldn't get a connection" in done.stderr


def test_recover_openai_unreachable_is_exit_4(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The backend is never reached either: OpenAI is checked first, and answers nothing.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    base = f"http://127.0.0.1:{closed_port}/v1"
    args = ["recover", "--url", f"redis://127.0.0.1:{closed_port}/0", "--base-url", base]
    assert main(args) == EXIT_OPENAI
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("threadlock: OpenAI error: could not reach the OpenAI API")


def test_recover_refused_key_is_exit_4(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeOpenAI()
    fake.inject("GET", "/models", status=401, count=None)
    args = ["recover", "--url", f"redis://127.0.0.1:{closed_port}/0"]
    assert main(args, openai_client=lambda args: fake.client()) == EXIT_OPENAI
    err = capsys.readouterr().err
    assert err.startswith("threadlock: OpenAI error:")
    assert "401" in err


def test_unknown_scheme_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "nosuch://x"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown scheme" in err
