"""A burst on one conversation from 4 OS processes through the real Agents SDK.

Five messages, 0.1 s apart, spread over 4 worker processes (tests/agents/_agent_worker.py),
against one FakeOpenAI served over HTTP (1 s per response). Guarded (``turn.run_agent`` on
the Redis backend): every message is answered, in the order sent. Bare (``Runner.run`` with
``conversation_id=``): the SDK's three ``conversation_locked`` retries (1, 2 and 4 s) give up
on at least one message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from threadlock.testing import FakeOpenAI

WORKER = Path(__file__).with_name("_agent_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TEXTS = [f"message {i}" for i in range(5)]
PROCESSES = 4


def _burst(mode: str, fake: FakeOpenAI, base_url: str, redis_url: str, prefix: str) -> Any:
    conversation = fake.add_conversation()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    workers = []
    for p in range(PROCESSES):
        slots = [f"{i}:{t}" for i, t in enumerate(TEXTS) if i % PROCESSES == p]
        command = [sys.executable, str(WORKER), mode, base_url, redis_url, prefix, conversation]
        command += [fake.add_conversation(), *slots]
        workers.append(
            subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "READY", (line, worker.communicate()[1])
        start = time.time() + 0.5
        fake.reset_counters()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{start}\n")
            worker.stdin.flush()
        outcomes = []
        for worker in workers:
            out, err = worker.communicate(timeout=90)
            assert worker.returncode == 0, err
            outcomes += [json.loads(line) for line in out.splitlines() if line.strip()]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return conversation, sorted(outcomes, key=lambda o: o["index"])


@pytest.mark.slow
def test_guarded_burst_across_processes_is_answered_in_order(
    fake_http: tuple[FakeOpenAI, str], redis_url: str, prefix: str
) -> None:
    fake, base_url = fake_http
    conversation, outcomes = _burst("guarded", fake, base_url, redis_url, prefix)
    assert [o.get("error") for o in outcomes] == [None] * len(TEXTS)
    assert [o["reply"] for o in outcomes] == [f"Reply to: {t}" for t in TEXTS]
    assert fake.conversation_inputs(conversation) == TEXTS  # in the order sent, each once
    assert fake.concurrency_errors_by_kind["conversation_locked"] == 0


@pytest.mark.slow
def test_bare_sdk_burst_across_processes_loses_messages(
    fake_http: tuple[FakeOpenAI, str], redis_url: str, prefix: str
) -> None:
    fake, base_url = fake_http
    conversation, outcomes = _burst("bare", fake, base_url, redis_url, prefix)
    failed = [o for o in outcomes if "error" in o]
    assert failed, outcomes  # the SDK's 1 + 2 + 4 s of retries run out
    assert {o["error"] for o in failed} == {"BadRequestError"}
    assert len(fake.conversation_inputs(conversation)) == len(TEXTS) - len(failed)
    assert fake.concurrency_errors_by_kind["conversation_locked"] > 0
