"""A plain asyncio bot: bursts of messages from several users, one turn at a time each.

    python examples/asyncio_bot.py            # FakeOpenAI + memory backend: no key, no server
    OPENAI_API_KEY=sk-... python examples/asyncio_bot.py          # the real API
    THREADLOCK_URL=redis://localhost:6379/0 python examples/asyncio_bot.py

Each user's messages are answered in the order they were sent, on that user's own OpenAI
conversation, and no request is refused with ``conversation_locked``: every turn runs inside
``guard_conversation``, which holds the conversation's lease for the whole turn.
"""

from __future__ import annotations

import asyncio
import os
import sys

import openai

import threadlock
from threadlock.openai import guard_conversation, recover_orphaned_runs
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


def make_client() -> tuple[openai.AsyncOpenAI, FakeOpenAI | None]:
    """The real client when ``OPENAI_API_KEY`` is set, else one served by FakeOpenAI."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai.AsyncOpenAI(), None
    fake = FakeOpenAI(response_duration=0.05)
    return fake.client(), fake


def make_lock() -> threadlock.ThreadLock:
    """``THREADLOCK_URL`` when set, else the in-process memory backend."""
    url = os.environ.get("THREADLOCK_URL")
    return threadlock.from_url(url) if url else threadlock.MemoryThreadLock()


async def answer(
    client: openai.AsyncOpenAI, lock: threadlock.ThreadLock, conversation_id: str, text: str
) -> str:
    """One turn: wait for the conversation (FIFO), ask the model, return the reply."""
    async with guard_conversation(client, conversation_id, lock=lock, ttl=30, timeout=120) as turn:
        response = await turn.create(model=MODEL, input=text)
    return response.output_text


async def run(
    client: openai.AsyncOpenAI | None = None,
    lock: threadlock.ThreadLock | None = None,
    *,
    users: int = 3,
    messages: int = 4,
) -> dict[str, list[tuple[str, str]]]:
    """Every user sends a burst of ``messages``; returns each user's (message, reply) pairs."""
    if client is None:
        client, _fake = make_client()
    async with make_lock() if lock is None else lock as backend:
        # At start-up: cancel runs a crashed worker left active (never those a live worker owns).
        report = await recover_orphaned_runs(client, lock=backend, max_age=300)
        print(f"recovery: {len(report.cancelled)} orphaned run(s) cancelled")

        conversations = {f"user{u}": (await client.conversations.create()).id for u in range(users)}
        replies: dict[str, list[tuple[str, str]]] = {user: [] for user in conversations}

        async def handle(user: str, text: str) -> None:
            reply = await answer(client, backend, conversations[user], text)
            replies[user].append((text, reply))

        # A burst: all messages of all users arrive at once, each handled by its own task.
        async with asyncio.TaskGroup() as tg:
            for i in range(messages):
                for user in conversations:
                    tg.create_task(handle(user, f"{user} message {i}"))
                await asyncio.sleep(0.001)  # messages of one user arrive one after the other
    return replies


def main() -> int:
    replies = asyncio.run(run())
    for user, pairs in replies.items():
        print(f"\n{user}:")
        for text, reply in pairs:
            print(f"  > {text}\n  < {reply}")
    in_order = all(
        [text for text, _ in pairs] == sorted(text for text, _ in pairs)
        for pairs in replies.values()
    )
    print("\nevery user answered in order:", in_order)
    return 0 if in_order else 1


if __name__ == "__main__":
    sys.exit(main())
