"""examples/agents_bot.py, run as it is (FakeOpenAI, memory backend) and on Redis."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from threadlock.backends.redis import RedisThreadLock
from threadlock.testing import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agents_bot.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_agents_bot", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_agents_bot_answers_each_burst_in_order_on_redis(redis_url: str, prefix: str) -> None:
    bot = _load()
    fake = FakeOpenAI(response_duration=0.05)
    lock = RedisThreadLock.from_url(redis_url, prefix=prefix)
    replies = await bot.run(fake.client(), lock, users=2, messages=3)
    for user, pairs in replies.items():
        # Answered in the order sent, each after its tool call (FakeOpenAI calls the tool).
        assert [text for text, _ in pairs] == [
            f"{user} message {i}: any open tickets?" for i in range(3)
        ]
        assert {reply for _, reply in pairs} == {"Reply to: 2 open tickets"}
    assert fake.concurrency_errors == 0
    assert fake.calls["POST /responses"] == 2 * 6  # every turn is two responses


def test_agents_bot_runs_as_a_script() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "THREADLOCK_URL")}
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("< Reply to: 2 open tickets") == 6
