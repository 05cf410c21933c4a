"""One worker of the inbox benchmark (``benchmarks/inbox.py``), and the release-boundary race.

A worker is what a webhook server is: it receives its share of the users' messages at their
scheduled times, each in its own task, and answers through ``guard_conversation`` (mode
``plain``) or ``Inbox.turns`` with a strategy. On Redis and Postgres every worker is a process
of its own (``python -m benchmarks.inbox_worker SPEC.json``); on memory the workers are tasks
of the controller sharing one lock. Every event is one line appended to the run's log file
(``O_APPEND``, one ``write`` each, so lines survive a SIGKILL):

* ``{"ev": "ready"}`` once the worker can take messages (after its warm-up turn);
* ``{"ev": "post", "id", "user", "t"}`` when a message arrives (before it is stored);
* ``{"ev": "start", "ids", "user", "t"}`` when a batch starts its model call;
* ``{"ev": "batch", "ids", "user", "sent", "t"}`` when the model call of a batch returned
  (``ids`` includes what ``latest`` skipped; ``sent`` is false for a superseded batch, whose
  messages the next reply of the conversation covers).

Times are ``time.time()``: every process runs on the same machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import openai

from threadlock import Inbox
from threadlock.inbox import Batch, SweepableStore
from threadlock.openai import guard_conversation
from threadlock.protocol import ThreadLock

MODEL = "fake-model"


@dataclass
class WorkerSpec:
    """What one worker does. ``schedule`` rows: ``[conversation, message id, epoch seconds]``."""

    name: str
    backend: str  # memory, redis or postgres
    url: str
    namespace: str  # Redis prefix / Postgres table
    mode: str  # plain or a strategy
    schedule: list[list[Any]]
    log: str
    go: str  # a file the controller writes the start time into
    openai_url: str = ""
    debounce: float = 1.5
    max_wait: float = 8.0
    ttl: float = 30.0
    serve: bool = False  # run inbox.serve() beside the messages (crash recovery)
    serve_interval: float = 0.5
    #: a conversation for the warm-up turn before ``ready`` ("" for none): a process's first
    #: model call and first lock and inbox calls pay for imports and script loads, which is
    #: start-up cost, not the turn's
    warm: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Log:
    """Append-only JSON lines, one ``os.write`` per event."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def event(self, **fields: Any) -> None:
        os.write(self._fd, (json.dumps(fields, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a log (a line cut by SIGKILL is dropped)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


async def _wait_go(path: str) -> float:
    while True:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""
        if text:
            return float(text)
        await anyio.sleep(0.02)


def _answer(
    spec: WorkerSpec, lock: ThreadLock, client: openai.AsyncOpenAI, log: Log
) -> Callable[[str, Batch], Awaitable[bool]]:
    async def answer(user: str, batch: Batch) -> bool:
        ids = [m.id for m in batch.skipped] + [m.id for m in batch.messages]
        log.event(ev="start", ids=ids, user=user, t=time.time(), pid=os.getpid())
        text = "\n".join(str(m.payload) for m in batch.messages)
        async with guard_conversation(client, user, lock=lock, lease=batch.lease) as turn:
            await turn.create(model=MODEL, input=text)
        sent = not await batch.superseded()
        log.event(ev="batch", ids=ids, user=user, sent=sent, t=time.time(), pid=os.getpid())
        return sent

    return answer


async def run_worker(spec: WorkerSpec, lock: ThreadLock, client: openai.AsyncOpenAI) -> None:
    """Deliver ``spec.schedule`` (after the go file appears) and answer every message."""
    log = Log(spec.log)
    inbox = None if spec.mode == "plain" else Inbox(lock)
    answer = _answer(spec, lock, client, log)
    options: dict[str, Any] = {}
    if inbox is not None:
        options = {"strategy": spec.mode, "ttl": spec.ttl}
        if spec.mode == "debounce":
            options |= {"debounce": spec.debounce, "max_wait": spec.max_wait}

    async def deliver(user: str, message_id: str, at: float) -> None:
        await anyio.sleep(max(0.0, at - time.time()))
        log.event(ev="post", id=message_id, user=user, t=time.time(), pid=os.getpid())
        if inbox is None:
            async with guard_conversation(client, user, lock=lock, ttl=spec.ttl, timeout=120) as g:
                log.event(ev="start", ids=[message_id], user=user, t=time.time())
                await g.create(model=MODEL, input=message_id)
            log.event(ev="batch", ids=[message_id], user=user, sent=True, t=time.time())
            return
        async with inbox.turns(user, message_id, id=message_id, **options) as turns:
            async for batch in turns:
                await answer(user, batch)

    async def sweep_handler(batch: Batch) -> None:
        await answer(batch.lease.key, batch)

    try:
        if spec.warm:
            await _warm_up(spec, lock, client, inbox)
        log.event(ev="ready", name=spec.name, pid=os.getpid())
        start = await _wait_go(spec.go)
        async with anyio.create_task_group() as tg:
            if spec.serve and inbox is not None and isinstance(inbox.store, SweepableStore):
                tg.start_soon(lambda: _serve(inbox, sweep_handler, spec, options))
            async with anyio.create_task_group() as messages:
                for user, message_id, offset in spec.schedule:
                    messages.start_soon(deliver, user, message_id, start + offset)
            if not spec.serve:
                tg.cancel_scope.cancel()
            # with serve: run until the controller ends the process
    finally:
        log.close()


#: The lease ttl of the warm-up turn (whatever the run's ttl).
_WARM_TTL = 30.0


async def _warm_up(
    spec: WorkerSpec, lock: ThreadLock, client: openai.AsyncOpenAI, inbox: Inbox | None
) -> None:
    # Start-up cost under the default ttl, not the kill run's short one: a cold process on a
    # loaded machine can miss a 3 s lease's renewals in its first turn (imports, the SDK's
    # first request), and then never became ready.
    ttl = max(spec.ttl, _WARM_TTL)
    async with guard_conversation(client, spec.warm, lock=lock, ttl=ttl) as turn:
        await turn.create(model=MODEL, input="warm-up")
    if inbox is not None:
        key = f"warm-{spec.name}-{os.getpid()}"
        async with inbox.turns(key, "warm-up", strategy="queue", ttl=ttl) as turns:
            async for _ in turns:
                pass


async def _serve(inbox: Inbox, handler: Any, spec: WorkerSpec, options: dict[str, Any]) -> None:
    await inbox.serve(handler, interval=spec.serve_interval, **options)


def open_lock(backend: str, url: str, namespace: str) -> ThreadLock:
    if backend == "redis":
        from threadlock.backends.redis import RedisThreadLock

        return RedisThreadLock.from_url(url, prefix=namespace)
    if backend == "postgres":
        from threadlock import PostgresThreadLock

        return PostgresThreadLock.from_url(url, table=namespace, max_size=40)
    raise ValueError(f"backend must be redis or postgres here, got {backend!r}")


async def _process_main(spec: WorkerSpec) -> None:
    client = openai.AsyncOpenAI(base_url=spec.openai_url, api_key="fake", max_retries=0)
    lock = open_lock(spec.backend, spec.url, spec.namespace)
    async with lock:
        await run_worker(spec, lock, client)
    await client.close()


# -- the release-boundary race ----------------------------------------------------------------


@dataclass
class RaceResult:
    rounds: int = 0
    stranded: int = 0  # a message left pending, or not answered exactly once
    still_held: int = 0
    folded: int = 0  # the late post was in the owner's next batch
    own_turn: int = 0  # the late post found the key free and owned it
    wall_s: float = 0.0


async def release_race(
    lock: ThreadLock, other: ThreadLock, rounds: int, parallel: int = 16
) -> RaceResult:
    """Post a message at the moment its key's owner releases, ``rounds`` times, ``parallel``
    keys at once; count what is stranded. The late post waits for the owner's batch to end
    and then a random number of event-loop steps, to land anywhere in ack / finish / release.
    """
    import random

    rng = random.Random(11)
    first, second = Inbox(lock), Inbox(other)
    result = RaceResult()
    limiter = anyio.Semaphore(parallel)

    async def one(jitter: int) -> None:
        key = f"race-{uuid.uuid4().hex}"
        answered: list[object] = []
        done = anyio.Event()

        async def owner() -> None:
            async with first.turns(key, "a", ttl=30.0) as turns:
                async for batch in turns:
                    if done.is_set():
                        result.folded += 1
                    answered.extend(m.payload for m in batch.messages)
                    done.set()

        async def late() -> None:
            await done.wait()
            for _ in range(jitter):
                await anyio.lowlevel.checkpoint()
            async with second.turns(key, "b", ttl=30.0) as turns:
                async for batch in turns:
                    result.own_turn += 1
                    answered.extend(m.payload for m in batch.messages)

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(owner)
                    tg.start_soon(late)
            if sorted(map(str, answered)) != ["a", "b"] or await first.pending(key):
                result.stranded += 1
            if await lock.inspect(key) is not None:
                result.still_held += 1
            result.rounds += 1
        finally:
            limiter.release()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(rounds):
            await limiter.acquire()  # released by the round when it ends
            tg.start_soon(one, rng.randrange(12))
    result.wall_s = time.perf_counter() - started
    return result


if __name__ == "__main__":
    raw = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    anyio.run(_process_main, WorkerSpec(**raw))
