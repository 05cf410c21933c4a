"""A backend built before ``os.fork()`` works in the children (issue 15: the fork requirement,
defect 1): gunicorn ``--preload`` and Celery prefork build it in the parent.

The parent builds the lock (and draws a token, so any buffered randomness exists before the
fork); children forked by ``multiprocessing``'s fork context then contend for one key. Every
section is logged to a file with single ``O_APPEND`` writes; the log must show exclusion
(enter and exit strictly alternate), fences that rise, and tokens and instance names that no
two children share.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from tests.conftest import postgres_lock

from threadlock.backends.postgres import PostgresThreadLock
from threadlock.backends.redis import RedisThreadLock

CHILDREN = 3
SECTIONS = 3
KEY = "forked"


def _child(lock: Any, log: str) -> None:
    async def main() -> None:
        try:
            for _ in range(SECTIONS):
                lease = await lock.acquire(KEY, ttl=30.0, timeout=60.0)
                line = f"{os.getpid()} {lease.token} {lease.fence} {lock._ids.instance}"
                fd = os.open(log, os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, f"enter {line}\n".encode())
                    await anyio.sleep(0.05)  # long enough for the others to queue behind
                    os.write(fd, f"exit {line}\n".encode())
                finally:
                    os.close(fd)
                assert await lock.release(lease)
        finally:
            await lock.aclose()

    anyio.run(main)


@pytest.fixture(params=["redis", "postgres", "redis-used", "postgres-used"])
def forkable_lock(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A lock built in this (the parent) process: not yet connected or, for ``-used``, used
    once in an event loop of the parent's (connections open, pool opened)."""
    if request.param.startswith("redis"):
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("prefix")
        lock: Any = RedisThreadLock.from_url(url, prefix=prefix)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        table = request.getfixturevalue("pg_table")

        async def create() -> None:
            async with postgres_lock(dsn, table):  # the schema, by another instance
                pass

        anyio.run(create)
        lock = PostgresThreadLock.from_url(dsn, table=table)
    if not request.param.endswith("-used"):
        yield lock
        return
    # Used once on an event loop of the parent's that stays alive, as in a gunicorn --preload
    # or Celery parent: connections open, pool opened, its tasks running when the fork comes.
    # The loop closes the lock after the test, so nothing of it is left to a later test.

    async def use() -> None:
        assert await lock.release(await lock.acquire(KEY, ttl=30.0))

    with start_blocking_portal("asyncio") as portal:
        portal.call(use)
        try:
            yield lock
        finally:
            portal.call(lock.aclose)


def test_children_of_a_fork_exclude_each_other_with_their_own_tokens(
    forkable_lock: Any, tmp_path: Path
) -> None:
    lock = forkable_lock
    parent_token = lock._ids.token()  # the random buffer exists before the fork
    parent_instance = lock._ids.instance
    log = tmp_path / "sections.log"
    log.touch()
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_child, args=(lock, str(log))) for _ in range(CHILDREN)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0] * CHILDREN

    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 2 * CHILDREN * SECTIONS
    # Exclusion: every enter is followed by the exit of the same section.
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter[0] == "enter"
        assert leave == ["exit", *enter[1:]]
    entries = lines[::2]
    fences = [int(entry[3]) for entry in entries]
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)
    tokens = [entry[2] for entry in entries]
    assert len(set(tokens)) == len(tokens)
    assert parent_token not in tokens
    instances = {entry[1]: entry[4] for entry in entries}  # pid -> instance name
    assert len(set(instances.values())) == CHILDREN
    assert parent_instance not in instances.values()
    assert lock._ids.instance == parent_instance  # the parent keeps its own
