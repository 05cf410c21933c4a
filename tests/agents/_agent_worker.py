"""One bot process of the cross-process burst test (run as a script, never collected).

python _agent_worker.py MODE BASE_URL REDIS_URL PREFIX CONVERSATION WARM_CONVERSATION SLOT...
    MODE is ``guarded`` (each message is ``turn.run_agent`` under guard_conversation on the
    Redis backend) or ``bare`` (``Runner.run(..., conversation_id=...)`` with the SDK's own
    defences only). A SLOT is ``INDEX:TEXT``. The worker warms the SDK up on
    WARM_CONVERSATION, prints ``READY``, reads a wall-clock start time from stdin, then
    sends message INDEX at start + INDEX * 0.1 s, all of its messages concurrently. It prints
    one JSON line per message: ``{"index", "text", "reply" | "error"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import agents
import openai

from threadlock.backends.redis import RedisThreadLock
from threadlock.openai import guard_conversation

STAGGER = 0.1


async def main(argv: list[str]) -> None:
    mode, base_url, redis_url, prefix, conversation, warm = argv[:6]
    slots = [(int(i), text) for i, _, text in (s.partition(":") for s in argv[6:])]
    agents.set_tracing_disabled(True)
    client = openai.AsyncOpenAI(api_key="sk-fake", base_url=base_url)
    provider = agents.OpenAIProvider(openai_client=client, use_responses=True)
    config = agents.RunConfig(model_provider=provider)
    agent = agents.Agent(name="bot", instructions="Answer briefly.", model="gpt-4o")
    await agents.Runner.run(agent, "warm up", conversation_id=warm, run_config=config)
    async with RedisThreadLock.from_url(redis_url, prefix=prefix) as lock:
        await lock.inspect(conversation)  # connects and loads the scripts
        print("READY", flush=True)
        start = float(sys.stdin.readline())

        async def send(index: int, text: str) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, start + index * STAGGER - time.time()))
            try:
                if mode == "guarded":
                    async with guard_conversation(
                        client, conversation, lock=lock, timeout=60
                    ) as turn:
                        result = await turn.run_agent(agent, text, run_config=config)
                else:
                    result = await agents.Runner.run(
                        agent, text, conversation_id=conversation, run_config=config
                    )
                return {"index": index, "text": text, "reply": result.final_output}
            except Exception as error:
                return {"index": index, "text": text, "error": type(error).__name__}

        for outcome in await asyncio.gather(*(send(i, t) for i, t in slots)):
            print(json.dumps(outcome), flush=True)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
