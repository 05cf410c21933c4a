"""`threadlock create-schema` against the private Postgres server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from threadlock.cli import EXIT_OK, main


def test_create_schema_is_idempotent(
    pg_dsn: str, pg_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-schema", "--url", pg_dsn, "--table", pg_table]
    assert main(args) == EXIT_OK
    assert main(args) == EXIT_OK  # idempotent
    assert "schema ready" in capsys.readouterr().out


def test_create_schema_through_the_console_script(pg_dsn: str, pg_table: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "threadlock", "create-schema", "--url", pg_dsn, "--table", pg_table],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == EXIT_OK, done.stderr
