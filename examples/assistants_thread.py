"""An Assistants thread with a tool call, one turn at a time (the API OpenAI shut down).

    python examples/assistants_thread.py     # FakeOpenAI: no key, no server
    OPENAI_BASE_URL=https://compatible.example/v1 OPENAI_API_KEY=... \\
        ASSISTANT_ID=asst_... python examples/assistants_thread.py

OpenAI shut the Assistants API down on 2026-08-26; servers compatible with it still serve it,
and this is how to guard a thread on one. Two messages race for the same thread: the second
turn waits until the first run has ended, including the time that run spends in
``requires_action`` waiting for our tool output (the SDK's ``poll()`` would call the thread
free then; it is not).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import openai

import threadlock
from threadlock.openai import guard_thread
from threadlock.testing import FakeOpenAI


async def call_tool(name: str, arguments: str) -> str:
    """Your tools. Here: a clock that always says noon."""
    return json.dumps({"tool": name, "args": json.loads(arguments or "{}"), "time": "12:00"})


async def turn(
    client: openai.AsyncOpenAI,
    lock: threadlock.ThreadLock,
    thread_id: str,
    assistant_id: str,
    text: str,
) -> str:
    """One turn: add the message, run, answer tool calls, return the run's final status."""
    async with guard_thread(client, thread_id, lock=lock, ttl=30, timeout=300) as t:
        await t.add_message(text)
        run = await t.create_and_poll(assistant_id=assistant_id)
        while run.status == "requires_action":
            assert run.required_action is not None
            calls = run.required_action.submit_tool_outputs.tool_calls
            outputs: list[Any] = [
                {
                    "tool_call_id": c.id,
                    "output": await call_tool(c.function.name, c.function.arguments),
                }
                for c in calls
            ]
            run = await t.submit_tool_outputs(run, outputs)
    return str(run.status)


async def run(
    client: openai.AsyncOpenAI | None = None, fake: FakeOpenAI | None = None
) -> list[str]:
    if client is None:
        if os.environ.get("OPENAI_API_KEY"):
            client = openai.AsyncOpenAI()
        else:
            fake = FakeOpenAI(run_duration=0.2)
            client = fake.client()
    assistant_id = (
        os.environ.get("ASSISTANT_ID")
        or (await client.beta.assistants.create(model="gpt-4o-mini", name="clock")).id
    )
    thread_id = (await client.beta.threads.create()).id
    if fake is not None:
        fake.require_action_next_run(thread_id, function_name="what_time", arguments="{}")
    async with threadlock.MemoryThreadLock() as lock:
        return list(
            await asyncio.gather(
                turn(client, lock, thread_id, assistant_id, "What time is it?"),
                turn(client, lock, thread_id, assistant_id, "And in Tokyo?"),
            )
        )


def main() -> int:
    statuses = asyncio.run(run())
    print("run statuses:", statuses)
    return 0 if statuses == ["completed", "completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
