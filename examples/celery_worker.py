"""A Celery worker: every task is one turn on a conversation, in order, with prefork processes.

    python examples/celery_worker.py     # offline: a burst of turns from threads
    CELERY_BROKER_URL=redis://localhost:6379/1 CELERY_RESULT_BACKEND=redis://localhost:6379/2 \\
    THREADLOCK_URL=redis://localhost:6379/0 OPENAI_API_KEY=sk-... \\
        celery -A celery_worker worker --pool prefork --concurrency 2

Celery's prefork pool forks its worker processes after this module is imported, so the lock
is built here, at import, and :mod:`threadlock.sync` gives each child its own event loop and
its own connections. A task waits its turn on the conversation (FIFO, up to ``TURN_TIMEOUT``);
one that cannot get it in time is retried by Celery after the holder's remaining lease, and
nothing is sent to OpenAI meanwhile. With ``worker_prefetch_multiplier=1`` and late acks a
child takes a new task only when it is free, so tasks that reach a busy conversation queue on
its lease in the order they were delivered.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import openai
from celery import Celery, Task

import threadlock
import threadlock.sync
from threadlock.sync import guard_conversation

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 60.0
TASK_NAME = "threadlock_example.answer_message"

app = Celery(
    "celery_worker",
    broker=os.environ.get("CELERY_BROKER_URL", "memory://"),
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
)
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

# Built at import, in the parent, before the fork: it connects nothing and starts no thread
# until a task uses it, and each child gets fresh connections.
lock = threadlock.sync.from_url(os.environ.get("THREADLOCK_URL") or "memory://")

_clients: dict[int, openai.OpenAI] = {}


def openai_client() -> openai.OpenAI:
    """One client per process (an HTTP connection pool must not cross a fork)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = _make_client()
    return _clients[pid]


def _make_client() -> openai.OpenAI:
    if os.environ.get("OPENAI_API_KEY"):
        return openai.OpenAI(max_retries=0)  # reads OPENAI_BASE_URL too
    from threadlock.sync.testing import sync_client
    from threadlock.testing import FakeOpenAI

    return sync_client(FakeOpenAI(response_duration=0.05))


def answer(conversation_id: str, text: str) -> dict[str, Any]:
    """One turn: send ``text`` on ``conversation_id``; return the reply and the turn's fence.

    Plain sync code, callable from any thread; :class:`threadlock.ThreadBusy` when the turn
    could not start within ``TURN_TIMEOUT``.
    """
    with guard_conversation(
        openai_client(), conversation_id, lock=lock, ttl=30, timeout=TURN_TIMEOUT
    ) as turn:
        response = turn.create(model=MODEL, input=text)
        fence = turn.lease.fence
    return {"text": text, "reply": response.output_text, "fence": fence, "pid": os.getpid()}


@app.task(bind=True, name=TASK_NAME, max_retries=None)
def answer_message(self: Task, conversation_id: str, text: str) -> dict[str, Any]:
    """The task: :func:`answer`, retried by Celery after the holder's remaining lease."""
    try:
        return answer(conversation_id, text)
    except threadlock.ThreadBusy as busy:
        raise self.retry(countdown=busy.retry_after) from busy


def offline_demo(messages: int = 4) -> list[dict[str, Any]]:
    """Run a burst of turns in-process, one thread each, on one conversation."""
    conversation_id = openai_client().conversations.create().id
    results: list[dict[str, Any]] = []

    def run(text: str) -> None:
        results.append(answer(conversation_id, text))

    threads = [threading.Thread(target=run, args=(f"message {i}",)) for i in range(messages)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(results, key=lambda r: r["fence"])


def main() -> int:
    turns = offline_demo()
    for result in turns:
        print(f"{result['text']} -> {result['reply']}")
    print("one turn at a time, each with a new fence:", len({r["fence"] for r in turns}) == 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
