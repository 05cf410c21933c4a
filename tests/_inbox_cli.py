"""One inbox scene the ``status --inbox`` / ``recover --inbox`` tests of every backend set up
and check: a stranded key, a key whose owner is alive, a dead letter, an answered key."""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
import pytest

from threadlock import Inbox, ThreadLock
from threadlock.cli import EXIT_OK, main
from threadlock.inbox.types import encode_payload


async def scene(lock: ThreadLock) -> Any:
    """Keys (sorted as the reports list them): ``dead`` (one dead letter), ``live`` (two
    pending, its owner's lease live), ``stranded`` (one pending, no lease); ``answered`` has
    nothing left and is listed nowhere. Returns the live owner's lease (release it)."""
    inbox = Inbox(lock)
    store = inbox.store
    for key, ids in (("live", ("l1", "l2")), ("stranded", ("s1",))):
        for message_id in ids:
            stored = encode_payload(message_id, "message")
            assert await store.append(key, message_id, stored, max_pending=10, entry_ttl=60)
    with pytest.raises(RuntimeError):
        async with inbox.turns("dead", "x", max_attempts=1) as turns:
            async for _ in turns:
                raise RuntimeError("boom")
    assert len([b async for b in inbox.turns("answered", "y")]) == 1
    return await lock.acquire("live", ttl=120.0)


async def check_reports(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``status --inbox`` and ``recover --inbox`` (``args``: the URL options) on the scene."""
    code = await anyio.to_thread.run_sync(main, ["status", "--inbox", *args, "--json"])
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out) == [
        {"key": "dead", "pending": 0, "dead_letters": 1},
        {"key": "live", "pending": 2, "dead_letters": 0},
        {"key": "stranded", "pending": 1, "dead_letters": 0},
    ]
    code = await anyio.to_thread.run_sync(main, ["recover", "--inbox", *args, "--json"])
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "keys": 3,
        "pending": 3,
        "dead_letters": 1,
        "stranded": [{"key": "stranded", "pending": 1}],
        "truncated": False,
    }
    assert await anyio.to_thread.run_sync(main, ["recover", "--inbox", *args]) == EXIT_OK
    assert capsys.readouterr().out == (
        "inbox: 3 messages pending, 1 dead letter, over 3 keys\n"
        "inbox stranded (pending, no live lease): 1  stranded (1)\n"
    )


async def check_truncated_reports(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--limit`` below the scene's 3 keys: the reports say that they are cut, never
    silently: a ``truncated`` flag in JSON, a line in text, a warning on stderr for the
    status list."""
    code = await anyio.to_thread.run_sync(
        main, ["status", "--inbox", *args, "--json", "--limit", "2"]
    )
    assert code == EXIT_OK
    out, err = capsys.readouterr()
    assert json.loads(out) == [
        {"key": "dead", "pending": 0, "dead_letters": 1},
        {"key": "live", "pending": 2, "dead_letters": 0},
    ]
    assert "more than 2 keys" in err
    code = await anyio.to_thread.run_sync(
        main, ["recover", "--inbox", *args, "--json", "--limit", "2"]
    )
    assert code == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "keys": 2,
        "pending": 2,
        "dead_letters": 1,
        "stranded": [],
        "truncated": True,
    }
    code = await anyio.to_thread.run_sync(main, ["recover", "--inbox", *args, "--limit", "2"])
    assert code == EXIT_OK
    assert capsys.readouterr().out == (
        "inbox: 2 messages pending, 1 dead letter, over 2 keys\n"
        "inbox stranded (pending, no live lease): 0\n"
        "inbox: more than 2 keys; the lines above cover the first 2 (raise --limit)\n"
    )
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        await anyio.to_thread.run_sync(main, ["recover", "--inbox", *args, "--limit", "0"])
    assert exited.value.code == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
