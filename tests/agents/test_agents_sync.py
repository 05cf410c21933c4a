"""The blocking face: ``threadlock.sync``'s turn runs the agent while the thread waits."""

from __future__ import annotations

import threading

import agents
import openai

import threadlock.sync
from threadlock.sync import guard_conversation
from threadlock.testing import FakeOpenAI


def test_sync_run_agent_serialises_threads_on_one_conversation(
    fake_http: tuple[FakeOpenAI, str],
) -> None:
    fake, base_url = fake_http
    conversation = fake.add_conversation()
    client = openai.OpenAI(api_key="sk-fake", base_url=base_url, max_retries=0)
    lock = threadlock.sync.from_url("memory://")
    agent = agents.Agent(name="bot", instructions="Answer briefly.", model="gpt-4o")
    replies: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(text: str) -> None:
        try:
            with guard_conversation(client, conversation, lock=lock, timeout=60) as turn:
                replies[text] = turn.run_agent(agent, text).final_output
        except BaseException as error:
            errors.append(error)

    texts = [f"message {i}" for i in range(3)]
    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert replies == {t: f"Reply to: {t}" for t in texts}
        assert sorted(fake.conversation_inputs(conversation)) == texts
        assert fake.concurrency_errors == 0
        assert lock.held() == []
    finally:
        lock.close()
        client.close()
