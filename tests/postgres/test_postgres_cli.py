"""`threadlock create-schema` against the private Postgres server."""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest
from tests._inbox_cli import check_reports, check_truncated_reports, scene
from tests.conftest import postgres_lock

from threadlock import Inbox
from threadlock.cli import EXIT_OK, main
from threadlock.inbox import Batch
from threadlock.inbox.types import encode_payload


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


@pytest.mark.anyio
async def test_status_inbox_lists_pending_and_dead_letters_per_key(
    pg_dsn: str, pg_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with postgres_lock(pg_dsn, pg_table) as lock:
        inbox = Inbox(lock)
        stored = encode_payload("hello", "message")
        for message_id in ("a", "b"):
            await inbox.store.append("waiting", message_id, stored, max_pending=10, entry_ttl=60)

        async def fail(batch: Batch) -> None:
            raise RuntimeError("boom")

        await inbox.store.append("failed", "c", stored, max_pending=10, entry_ttl=60)
        await inbox.sweep(fail, max_attempts=1)  # "waiting" and "failed" both fail once: dead
        await inbox.store.append("waiting", "d", stored, max_pending=10, entry_ttl=60)
        args = ["status", "--inbox", "--url", pg_dsn, "--table", pg_table]
        assert await anyio.to_thread.run_sync(main, [*args, "--json"]) == EXIT_OK
        rows = json.loads(capsys.readouterr().out)
        assert rows == [
            {"key": "failed", "pending": 0, "dead_letters": 1},
            {"key": "waiting", "pending": 1, "dead_letters": 2},
        ]
        assert await anyio.to_thread.run_sync(main, args) == EXIT_OK
        out = capsys.readouterr().out
        assert "dead_letters" in out
        assert "waiting" in out


def test_status_inbox_of_an_empty_inbox(
    pg_dsn: str, pg_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["create-schema", "--url", pg_dsn, "--table", pg_table]) == EXIT_OK
    capsys.readouterr()
    assert main(["status", "--inbox", "--url", pg_dsn, "--table", pg_table]) == EXIT_OK
    assert "no inbox messages pending or dead" in capsys.readouterr().out


@pytest.mark.anyio
async def test_status_and_recover_inbox(
    pg_dsn: str,
    pg_table: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # recover --inbox needs none
    async with postgres_lock(pg_dsn, pg_table) as lock:
        live = await scene(lock)
        await check_reports(["--url", pg_dsn, "--table", pg_table], capsys)
        await check_truncated_reports(["--url", pg_dsn, "--table", pg_table], capsys)
        await lock.release(live)
