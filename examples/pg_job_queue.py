"""A Postgres-backed bot queue: per-contact turns, at most N contacts at once, nothing lost.

This is the system WhatsApp bots often build by hand with ``lockedBy``/``lockedUntil``
columns, made of three parts:

* an **inbox table** (``bot_inbox``): every incoming message is a row, committed before the
  webhook answers 200. It is the source of truth: a message is done when its row has a reply.
* **procrastinate** jobs: ``drain(contact)`` is deferred for every message (one waiting job
  per contact at most, by ``queueing_lock``); the worker runs at most ``--concurrency`` jobs,
  so at most that many contacts are being answered at once.
* a **threadlock lease** per contact (``PostgresThreadLock``, in the same database): a drain
  job takes ``contact:<id>`` with ``timeout=0`` and answers the contact's pending messages
  oldest first. If another job holds the contact, the busy job defers a drain for later
  (none if one is waiting already) and ends: not a procrastinate retry, which would put the
  job back to ``todo`` and collide, in the ``queueing_lock`` index, with a drain deferred
  while it ran. Each reply is written with a fence check
  (``bot_contacts.fence``), so a stalled holder whose lease ran out cannot write after the
  next one.

After a ``SIGKILL`` the dead worker's lease expires after ``--ttl`` seconds (renewals stop),
its half-done message is still unanswered in the inbox, and a restarted worker's sweep defers
a drain for every contact with pending messages: the message is answered then. Delivery to
OpenAI is at least once (a worker killed between the model's answer and the commit asks
again); the inbox records each reply exactly once.

    export DATABASE_URL=postgresql://localhost/bots
    python examples/pg_job_queue.py demo                 # a burst, answered, and a report
    python examples/pg_job_queue.py worker --concurrency 3
    python examples/pg_job_queue.py send alice "hello" "are you there?"
    python examples/pg_job_queue.py report

Without ``OPENAI_API_KEY`` the bot talks to FakeOpenAI (in the worker's process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Job

import threadlock
from threadlock import PostgresThreadLock
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
MAX_BUSY_DELAY = 1.0  # seconds: a busy contact's job is retried at most this much later

SCHEMA = """
CREATE TABLE IF NOT EXISTS bot_contacts (
    contact   text PRIMARY KEY,
    fence     bigint NOT NULL DEFAULT 0      -- the highest fence that wrote a reply
);
CREATE TABLE IF NOT EXISTS bot_inbox (
    id          bigserial PRIMARY KEY,
    contact     text NOT NULL REFERENCES bot_contacts,
    text        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at  timestamptz,                 -- the last turn that began answering it
    answered_at timestamptz,
    reply       text,
    fence       bigint,                      -- the fence of the turn that answered it
    worker      text
);
CREATE INDEX IF NOT EXISTS bot_inbox_pending ON bot_inbox (contact, id)
    WHERE answered_at IS NULL;
"""


def make_app(dsn: str) -> procrastinate.App:
    """The procrastinate app, with the ``drain`` task registered."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    app.task(name="drain", pass_context=True, retry=BusyRetry())(drain)
    return app


async def setup(dsn: str) -> None:
    """Create procrastinate's schema, threadlock's and the inbox (idempotent)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        installed = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        row = await installed.fetchone()
        await conn.execute(SCHEMA)
    if not (row and row[0]):
        app = make_app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    async with PostgresThreadLock.from_url(dsn) as lock:
        await lock.create_schema()


async def receive(app: procrastinate.App, dsn: str, contact: str, text: str) -> int:
    """What the webhook does: commit the message, then make sure a drain job is waiting."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO bot_contacts (contact) VALUES (%s) ON CONFLICT DO NOTHING", (contact,)
        )
        cur = await conn.execute(
            "INSERT INTO bot_inbox (contact, text) VALUES (%s, %s) RETURNING id", (contact, text)
        )
        row = await cur.fetchone()
        assert row is not None
    await defer_drain(app, contact)  # if we die before this, the worker's sweep defers it
    return int(row[0])


async def defer_drain(app: procrastinate.App, contact: str, *, delay: float = 0.0) -> None:
    # AlreadyEnqueued: a drain job for this contact is waiting; it will answer this one too.
    task = app.configure_task(
        "drain",
        queueing_lock=f"drain:{contact}",
        schedule_in={"seconds": delay} if delay > 0 else None,
    )
    with contextlib.suppress(AlreadyEnqueued):
        await task.defer_async(contact=contact)


# -- the worker side -------------------------------------------------------------------------


@dataclass
class Bot:
    """What the drain jobs share in one worker process."""

    dsn: str
    lock: threadlock.ThreadLock
    client: openai.AsyncOpenAI
    ttl: float
    worker: str

    async def reply_to(self, text: str) -> str:
        response = await self.client.responses.create(model=MODEL, input=text)
        return response.output_text


class BusyRetry(procrastinate.BaseRetryStrategy):
    """Errors other than a busy contact (handled in :func:`drain`) -> backoff."""

    def get_retry_decision(
        self, *, exception: BaseException, job: Job
    ) -> procrastinate.RetryDecision | None:
        if job.attempts < 8:
            delay = min(2.0**job.attempts, 60.0)
        else:
            return None
        return procrastinate.RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=delay))


async def drain(context: procrastinate.JobContext, contact: str) -> int:
    """Answer every pending message of ``contact``, oldest first, under the contact's lease."""
    bot: Bot = context.additional_context["bot"]
    # timeout=0: a busy contact raises ThreadBusy at once. The job then defers a drain for
    # later (none if one waits already) and ends; a procrastinate retry would set this job
    # back to 'todo', which the queueing_lock index refuses (UniqueViolation) when another
    # drain of the contact was deferred while this one ran.
    try:
        async with bot.lock.hold(f"contact:{contact}", ttl=bot.ttl, timeout=0) as lease:
            return await _answer_pending(bot, contact, lease)
    except threadlock.ThreadBusy as busy:  # only the acquire raises it
        await defer_drain(context.app, contact, delay=min(busy.retry_after, MAX_BUSY_DELAY))
        return 0


async def _answer_pending(bot: Bot, contact: str, lease: threadlock.Lease) -> int:
    answered = 0
    async with await psycopg.AsyncConnection.connect(bot.dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "UPDATE bot_inbox SET started_at = clock_timestamp() WHERE id = ("
                " SELECT id FROM bot_inbox WHERE contact = %s AND answered_at IS NULL"
                " ORDER BY id LIMIT 1) RETURNING id, text",
                (contact,),
            )
            row = await cur.fetchone()
            if row is None:
                return answered
            message_id, text = row
            reply = await bot.reply_to(text)
            if not await store_reply(conn, contact, message_id, reply, lease.fence, bot):
                raise threadlock.LeaseLost(lease.key, lease.fence, "a later turn wrote")
            answered += 1


async def store_reply(
    conn: psycopg.AsyncConnection[Any],
    contact: str,
    message_id: int,
    reply: str,
    fence: int,
    bot: Bot,
) -> bool:
    """Write the reply only if no later holder of the contact has written (fencing)."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE bot_contacts SET fence = %s WHERE contact = %s AND fence <= %s",
            (fence, contact, fence),
        )
        if cur.rowcount != 1:
            return False
        await conn.execute(
            "UPDATE bot_inbox SET answered_at = clock_timestamp(), reply = %s, fence = %s,"
            " worker = %s WHERE id = %s AND answered_at IS NULL",
            (reply, fence, bot.worker, message_id),
        )
    return True


async def sweep(app: procrastinate.App, dsn: str) -> int:
    """Defer a drain for every contact with unanswered messages; returns how many contacts."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT DISTINCT contact FROM bot_inbox WHERE answered_at IS NULL")
        contacts = [row[0] for row in await cur.fetchall()]
    for contact in contacts:
        await defer_drain(app, contact)
    return len(contacts)


async def run_worker(
    dsn: str,
    *,
    concurrency: int = 3,
    ttl: float = 10.0,
    sweep_every: float = 5.0,
    reply_seconds: float = 0.2,
    until_done: bool = False,
) -> None:
    """Run a worker: at most ``concurrency`` drain jobs (so contacts) at once.

    With ``until_done`` it returns once every inbox message is answered (for the demo).
    """
    if os.environ.get("OPENAI_API_KEY"):
        client = openai.AsyncOpenAI()
    else:
        client = FakeOpenAI(response_duration=reply_seconds).client()
    app = make_app(dsn)
    async with PostgresThreadLock.from_url(dsn) as lock, app.open_async():
        bot = Bot(dsn, lock, client, ttl, f"{socket.gethostname()}:{os.getpid()}")
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=concurrency,
                additional_context={"bot": bot},
                install_signal_handlers=not until_done,
                fetch_job_polling_interval=0.5,
            )
        )
        try:
            while not worker.done():
                await sweep(app, dsn)
                if until_done and not await pending(dsn):
                    break
                await asyncio.wait({worker}, timeout=0.2 if until_done else sweep_every)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def pending(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM bot_inbox WHERE answered_at IS NULL")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


# -- checking what happened ------------------------------------------------------------------


async def report(dsn: str) -> dict[str, Any]:
    """Per-contact order and overlap, and the most contacts answered at once."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT id, contact, extract(epoch FROM started_at)::float8,"
            " extract(epoch FROM answered_at)::float8, fence, worker"
            " FROM bot_inbox ORDER BY id"
        )
        rows = await cur.fetchall()
    answered = [r for r in rows if r[3] is not None]
    by_contact: dict[str, list[tuple[Any, ...]]] = {}
    for row in answered:
        by_contact.setdefault(row[1], []).append(row)
    out_of_order = overlapping = 0
    for turns in by_contact.values():
        by_answer = sorted(turns, key=lambda r: r[3])
        out_of_order += sum(a[0] > b[0] for a, b in itertools.pairwise(by_answer))
        overlapping += sum(b[2] < a[3] for a, b in itertools.pairwise(by_answer))
    # The most contacts with a turn in progress at one moment.
    events = sorted([(r[2], 1) for r in answered] + [(r[3], -1) for r in answered])
    busy = most = 0
    for _, step in events:
        busy += step
        most = max(most, busy)
    return {
        "messages": len(rows),
        "answered": len(answered),
        "contacts": len(by_contact),
        "out_of_order": out_of_order,
        "overlapping_turns": overlapping,
        "max_contacts_at_once": most,
        "workers": sorted({r[5] for r in answered}),
    }


async def demo(dsn: str, contacts: int = 5, messages: int = 4, concurrency: int = 3) -> None:
    """Start from an empty inbox, send a burst, answer it, and print the report."""
    await setup(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE bot_inbox, bot_contacts")
    app = make_app(dsn)
    async with app.open_async():
        for i in range(messages):
            for c in range(contacts):
                await receive(app, dsn, f"contact{c}", f"message {i}")
    print(f"{await pending(dsn)} messages waiting; worker with concurrency={concurrency} ...")
    await run_worker(dsn, concurrency=concurrency, until_done=True)
    print(json.dumps(await report(dsn), indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("setup", help="create the schemas")
    sub.add_parser("demo", help="a burst of messages, answered, and a report (default)")
    sub.add_parser("report", help="order, overlap and concurrency of what was answered")
    worker = sub.add_parser("worker", help="run a worker until stopped")
    worker.add_argument("--concurrency", type=int, default=3)
    worker.add_argument("--ttl", type=float, default=10.0, help="lease TTL in seconds")
    worker.add_argument("--sweep-every", type=float, default=5.0)
    worker.add_argument("--reply-seconds", type=float, default=0.2, help="FakeOpenAI's pace")
    send = sub.add_parser("send", help="enqueue messages from one contact")
    send.add_argument("contact")
    send.add_argument("texts", nargs="+")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("set DATABASE_URL (or --dsn) to a Postgres database this demo may use")
    command = args.command or "demo"
    if command == "setup":
        asyncio.run(setup(args.dsn))
    elif command == "demo":
        asyncio.run(demo(args.dsn))
    elif command == "report":
        print(json.dumps(asyncio.run(report(args.dsn)), indent=2))
    elif command == "worker":
        asyncio.run(
            run_worker(
                args.dsn,
                concurrency=args.concurrency,
                ttl=args.ttl,
                sweep_every=args.sweep_every,
                reply_seconds=args.reply_seconds,
            )
        )
    elif command == "send":

        async def send_all() -> None:
            app = make_app(args.dsn)
            async with app.open_async():
                for text in args.texts:
                    print(await receive(app, args.dsn, args.contact, text))

        asyncio.run(send_all())
    return 0


if __name__ == "__main__":
    # Run main() from the module imported by name, not from __main__: procrastinate wants its
    # app defined in an importable module (it warns otherwise).
    import pg_job_queue

    sys.exit(pg_job_queue.main())
