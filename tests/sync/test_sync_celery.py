"""examples/celery_worker.py in a real Celery worker: prefork pool, 2 processes, Redis broker.

The worker is a subprocess (``celery worker -P prefork -c 2``) whose children are forked after
the example built its lock; FakeOpenAI is served to them over HTTP from this process, so one
fake sees every child's requests.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from tests.sync._helpers import EXAMPLES

import threadlock.sync
from threadlock.testing import FakeOpenAI

TASK = "threadlock_example.answer_message"
SRC = Path(__file__).resolve().parents[2] / "src"


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.mark.slow
def test_prefork_burst_on_one_conversation_is_served_in_order(
    redis_url: str, fake_server: tuple[FakeOpenAI, str]
) -> None:
    fake, base_url = fake_server
    conversation_id = fake.add_conversation()
    # A fresh database of the shared server each for the lock, the broker and the results.
    base = int(uuid.uuid4().int % 5) * 3 + 1
    lock_url, broker, backend = (_db(redis_url, base + n) for n in range(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CELERY_"))}
    env |= {
        "THREADLOCK_URL": lock_url,
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": backend,
        "OPENAI_API_KEY": "sk-fake-openai",
        "OPENAI_BASE_URL": base_url,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(EXAMPLES)]),
    }
    command = [sys.executable, "-m", "celery", "-A", "celery_worker", "worker"]
    command += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "warning"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    command += ["--hostname", f"sync-test-{uuid.uuid4().hex[:8]}@%h"]
    worker = subprocess.Popen(
        command, cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    producer = Celery("producer", broker=broker, backend=backend)
    lock = threadlock.sync.from_url(lock_url)
    try:
        texts = [f"message {i}" for i in range(8)]
        first = producer.send_task(TASK, args=(conversation_id, texts[0]))
        # The first task holds the conversation before the burst arrives, so the burst
        # queues on its lease in the order the pool delivers it.
        deadline = time.monotonic() + 60
        while lock.inspect(conversation_id) is None:
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "the first task never took its turn"
            time.sleep(0.01)
        rest = [producer.send_task(TASK, args=(conversation_id, t)) for t in texts[1:]]
        pending = [first, *rest]
        results = [r.get(timeout=90) for r in pending]
        # Celery's AsyncResult unsubscribes when collected: let it, while Redis is up.
        del first, rest, pending
        gc.collect()
        assert lock.held() == []
    finally:
        lock.close()
        producer.close()
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            output = worker.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            worker.kill()
            output = worker.communicate()[0]
    assert "Traceback" not in output, output
    assert [r["reply"] for r in results] == [f"Reply to: {t}" for t in texts]
    assert fake.conversation_inputs(conversation_id) == texts  # served in order, each once
    fences = [r["fence"] for r in results]
    assert fences == sorted(fences)
    assert len(set(fences)) == len(texts)
    assert len({r["pid"] for r in results}) == 2  # both prefork children served turns
    assert fake.concurrency_errors == 0
    assert fake.concurrency_errors_by_kind["conversation_locked"] == 0
