"""An OpenAI Agents SDK bot: bursts of messages, one agent run at a time per conversation.

    pip install 'threadlock[agents]'
    python examples/agents_bot.py            # FakeOpenAI + memory backend: no key, no server
    OPENAI_API_KEY=sk-... python examples/agents_bot.py           # the real API
    THREADLOCK_URL=redis://localhost:6379/0 python examples/agents_bot.py   # several processes

Every message runs ``agents.Runner.run`` through ``turn.run_agent`` inside
``guard_conversation``: the conversation's lease is held for the whole run, including a tool
call and the second response that answers with its output (FakeOpenAI calls the tool
on every message of a run that has tools), so a burst is answered in order
and never refused with ``conversation_locked``. Without the guard the SDK retries a locked
conversation three times (1, 2 and 4 s) and then gives up.
"""

from __future__ import annotations

import asyncio
import os
import sys

import agents
import openai

import threadlock
from threadlock.openai import guard_conversation
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")


@agents.function_tool
def open_tickets() -> str:
    """How many support tickets the user has open."""
    return "2 open tickets"


AGENT = agents.Agent(
    name="support",
    instructions="You are a support bot. Use open_tickets when asked about tickets.",
    model=MODEL,
    tools=[open_tickets],
)


def make_client() -> openai.AsyncOpenAI:
    """The real client when ``OPENAI_API_KEY`` is set, else one served by FakeOpenAI."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai.AsyncOpenAI()
    agents.set_tracing_disabled(True)  # tracing exports to OpenAI: off without a key
    return FakeOpenAI(response_duration=0.05).client()


def make_lock() -> threadlock.ThreadLock:
    """``THREADLOCK_URL`` when set, else the in-process memory backend."""
    url = os.environ.get("THREADLOCK_URL")
    return threadlock.from_url(url) if url else threadlock.MemoryThreadLock()


async def answer(
    client: openai.AsyncOpenAI, lock: threadlock.ThreadLock, conversation_id: str, text: str
) -> str:
    """One turn: wait for the conversation (FIFO), run the agent, return its final output."""
    async with guard_conversation(client, conversation_id, lock=lock, timeout=120) as turn:
        result = await turn.run_agent(AGENT, text)
    return str(result.final_output)


async def run(
    client: openai.AsyncOpenAI | None = None,
    lock: threadlock.ThreadLock | None = None,
    *,
    users: int = 2,
    messages: int = 3,
) -> dict[str, list[tuple[str, str]]]:
    """Every user sends a burst of ``messages``; returns each user's (message, reply) pairs."""
    client = make_client() if client is None else client
    async with make_lock() if lock is None else lock as backend:
        conversations = {f"user{u}": (await client.conversations.create()).id for u in range(users)}
        replies: dict[str, list[tuple[str, str]]] = {user: [] for user in conversations}

        async def handle(user: str, text: str) -> None:
            reply = await answer(client, backend, conversations[user], text)
            replies[user].append((text, reply))

        async with asyncio.TaskGroup() as tg:
            for i in range(messages):
                for user in conversations:
                    tg.create_task(handle(user, f"{user} message {i}: any open tickets?"))
                await asyncio.sleep(0.001)  # messages of one user arrive one after the other
    return replies


def main() -> int:
    replies = asyncio.run(run())
    for user, pairs in replies.items():
        print(f"\n{user}:")
        for text, reply in pairs:
            print(f"  > {text}\n  < {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
