"""Inbox crash recovery with real worker processes, on Redis and on Postgres (issue 11).

* An owner process SIGKILLed mid-batch: a live worker running ``inbox.serve()`` picks its
  pending messages up once its lease has run out, with no new message posted; nothing is
  lost, every message is delivered (at least once) with the id it was posted with, and the
  live worker's lease is fenced above the dead one's.
* A stalled owner process (its event loop blocked, so no renewal) whose key a live worker
  took meanwhile ends its batch: its acknowledgement is refused (the fence check), and the
  batch stays pending for the live owner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from threadlock import Inbox
from threadlock.backends import from_url
from threadlock.backends.base import BaseThreadLock
from threadlock.inbox import Batch

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("_inbox_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
#: The dead owner's lease: it renews while alive; once killed it runs out within this.
TTL = 1.0
#: How often the live worker sweeps.
INTERVAL = 0.1
#: A hang guard only: the tests wait for events, never for a time.
HANG = 60.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["redis", "postgres"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """(url, namespace) of a fresh backend: a Redis prefix or a Postgres table."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_url"), request.getfixturevalue("prefix")
        return
    dsn, table = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_table")
    async with from_url(dsn, table=table) as lock:
        await lock.create_schema()  # type: ignore[attr-defined]
    yield dsn, table


def _open(url: str, namespace: str) -> BaseThreadLock:
    return from_url(url, **{"table" if url.startswith("postgres") else "prefix": namespace})


@contextmanager
def _worker(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The worker process; killed if it is still running at the end, its pipes closed."""
    with _spawn(*args) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def _line(proc: subprocess.Popen[str]) -> str:
    stream: IO[str] | None = proc.stdout
    assert stream is not None
    line = await anyio.to_thread.run_sync(stream.readline, abandon_on_cancel=True)
    if not line:
        _, err = proc.communicate()
        raise AssertionError(f"the worker ended without a line (rc {proc.returncode}): {err}")
    return line.strip()


async def _serve_until(inbox: Inbox, handler: Any, done: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: inbox.serve(handler, interval=INTERVAL, ttl=30.0))
        await done.wait()
        tg.cancel_scope.cancel()


async def test_a_sigkilled_owners_batch_is_served_by_a_live_worker(
    target: tuple[str, str],
) -> None:
    url, namespace = target
    key, count = f"crash-{uuid.uuid4().hex[:8]}", 5
    ids = [f"m{n}" for n in range(count)]
    with _worker("own", url, namespace, key, str(TTL), str(count)) as proc:
        with anyio.fail_after(HANG):
            owns = (await _line(proc)).split()
        assert owns[0] == "OWNS"
        dead_fence = int(owns[1])
        assert owns[2:] == ["m0"]  # it took m0 and died before acknowledging it
        async with _open(url, namespace) as lock:
            inbox = Inbox(lock)
            info = await lock.inspect(key)
            assert info is not None
            assert info.fence == dead_fence
            assert f":{proc.pid}:" in info.owner  # host:pid:task
            assert [m.id for m in await inbox.pending(key)] == ids
            os.kill(proc.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
            killed = time.monotonic()
            # No message is posted from here on: only the sweeper can answer them.
            batches: list[Batch] = []
            answered: list[str] = []
            done = anyio.Event()

            async def handler(batch: Batch) -> None:
                batches.append(batch)
                answered.extend(m.id for m in batch.messages)
                assert [m.payload for m in batch.messages] == [
                    f"payload {m.id}" for m in batch.messages
                ]
                if set(answered) >= set(ids):
                    done.set()

            with anyio.fail_after(HANG):
                await _serve_until(inbox, handler, done)
            took = time.monotonic() - killed
            scheme = url.split(":")[0]
            print(
                f"\n{scheme}: served {took:.2f} s after the kill (ttl {TTL}, interval {INTERVAL})"
            )
            assert sorted(set(answered)) == ids  # nothing lost, with the posted ids
            assert answered == ids  # each once: one hand-off, no double answer
            assert all(b.lease.fence > dead_fence for b in batches)
            assert await inbox.pending(key) == []
            assert await inbox.dead_letters(key) == []
            assert await lock.inspect(key) is None
            assert key not in await inbox.stranded()


async def test_a_stalled_owner_that_lost_its_lease_is_not_acknowledged(
    target: tuple[str, str],
) -> None:
    url, namespace = target
    key = f"stale-{uuid.uuid4().hex[:8]}"
    with _worker("stale", url, namespace, key, str(TTL)) as proc:
        with anyio.fail_after(HANG):
            owns = (await _line(proc)).split()
        assert owns[0] == "OWNS"
        stale_fence = int(owns[1])
        async with _open(url, namespace) as lock:
            inbox = Inbox(lock)
            taken, go, done = anyio.Event(), anyio.Event(), anyio.Event()
            batches: list[Batch] = []

            async def handler(batch: Batch) -> None:
                batches.append(batch)
                taken.set()
                await go.wait()  # the live owner holds the batch while the stale one ends
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve_until, inbox, handler, done)
                with anyio.fail_after(HANG):
                    await taken.wait()  # the stale lease ran out; the live worker owns the key
                    assert proc.stdin is not None
                    proc.stdin.write("end the batch\n")
                    proc.stdin.flush()
                    outcome = await _line(proc)
                assert outcome == "LOST"  # its acknowledgement was refused ...
                assert [m.id for m in await inbox.pending(key)] == ["m0"]  # ... nothing removed
                go.set()
            assert [[m.id for m in b.messages] for b in batches] == [["m0"]]
            assert batches[0].lease.fence > stale_fence
            assert await inbox.pending(key) == []  # the live owner's acknowledgement counts
            assert await lock.inspect(key) is None
        with anyio.fail_after(HANG):
            await anyio.to_thread.run_sync(proc.wait)
        assert proc.returncode == 0
