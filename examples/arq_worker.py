"""An arq worker: a busy conversation is retried later instead of blocking a worker slot.

    python examples/arq_worker.py          # offline: calls the job function directly
    arq examples.arq_worker.WorkerSettings # a real worker (needs Redis: ARQ_REDIS_URL)

The job takes the conversation with ``timeout=0`` (fail-fast): when another job holds it,
``guard_conversation`` raises :class:`threadlock.ThreadBusy` at once, and the job turns it into
``arq.Retry(defer=busy.retry_after)``, so arq runs it again once the holder's lease would have
run out, and the worker slot serves another conversation meanwhile.

Environment: ``ARQ_REDIS_URL`` (arq's queue, default ``redis://localhost:6379``),
``THREADLOCK_URL`` (the locks; see ``threadlock.from_env``), ``OPENAI_API_KEY``.

Note: a retried job goes to the back of arq's queue, so fail-fast trades per-conversation
order for free worker slots. When order matters, wait instead (``timeout=120``), or drain a
per-conversation inbox in one job (see ``pg_job_queue.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import openai
from arq import Retry
from arq.connections import RedisSettings

import threadlock
from threadlock import ThreadBusy
from threadlock.openai import guard_conversation, recover_orphaned_runs
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TTL = 30.0


async def answer_message(ctx: dict[str, Any], conversation_id: str, text: str) -> str:
    """The job: one turn on ``conversation_id``, or ``Retry`` when it is busy."""
    lock: threadlock.ThreadLock = ctx["lock"]
    client: openai.AsyncOpenAI = ctx["openai"]
    try:
        async with guard_conversation(
            client, conversation_id, lock=lock, ttl=ctx.get("turn_ttl", TURN_TTL), timeout=0
        ) as turn:
            response = await turn.create(model=MODEL, input=text)
    except ThreadBusy as busy:
        # busy.retry_after: the holder's remaining lease time, an upper bound on the wait.
        raise Retry(defer=busy.retry_after) from busy
    return response.output_text


async def startup(ctx: dict[str, Any]) -> None:
    ctx["lock"] = threadlock.from_env()
    ctx["openai"] = openai.AsyncOpenAI()
    # Once per worker start: cancel runs a crashed worker left active.
    await recover_orphaned_runs(ctx["openai"], lock=ctx["lock"], max_age=300)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["lock"].aclose()
    await ctx["openai"].close()


class WorkerSettings:
    """``arq examples.arq_worker.WorkerSettings``."""

    functions = [answer_message]  # noqa: RUF012 - arq reads class attributes
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("ARQ_REDIS_URL", "redis://localhost:6379")
    )
    max_tries = 50  # each busy turn costs a try


async def offline_demo() -> list[str]:
    """Two jobs for one conversation at once: one answers, the other is told to retry."""
    fake = FakeOpenAI(response_duration=0.2)
    ctx: dict[str, Any] = {"lock": threadlock.MemoryThreadLock(), "openai": fake.client()}
    conversation_id = fake.add_conversation()
    log: list[str] = []
    first = asyncio.create_task(answer_message(ctx, conversation_id, "first"))
    await asyncio.sleep(0.05)  # the first job has taken the conversation
    try:
        await answer_message(ctx, conversation_id, "second")
    except Retry as retry:
        log.append(f"second: conversation busy, arq will retry it in {retry!s}")
    log.append(f"first: {await first}")
    # arq would run the job again after the delay; here the first turn is over already.
    log.append(f"second, retried: {await answer_message(ctx, conversation_id, 'second')}")
    return log


def main() -> int:
    for line in asyncio.run(offline_demo()):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
