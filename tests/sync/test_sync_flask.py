"""examples/flask_webhook.py on Redis: through Flask's test client and a real threaded server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.sync._helpers import load_example
from werkzeug.serving import make_server

import threadlock.sync
from threadlock.sync import SyncThreadLock
from threadlock.sync.testing import sync_client
from threadlock.testing import FakeOpenAI


@pytest.fixture
def webhook(redis_url: str, prefix: str) -> Iterator[tuple[Any, SyncThreadLock, FakeOpenAI]]:
    example = load_example("flask_webhook")
    fake = FakeOpenAI(response_duration=0.05)
    with threadlock.sync.from_url(redis_url, prefix=prefix) as lock:
        yield example.create_app(lock=lock, client=sync_client(fake)), lock, fake


def _check_burst(answers: list[tuple[int, dict[str, Any]]], fake: FakeOpenAI, users: int) -> None:
    assert [status for status, _ in answers] == [200] * len(answers)
    assert fake.concurrency_errors == 0
    for u in range(users):
        bodies = [body for _, body in answers if body["user_id"] == f"u{u}"]
        assert sorted(b["reply"] for b in bodies) == sorted(
            f"Reply to: message {i}" for i in range(len(bodies))
        )
        assert len({b["fence"] for b in bodies}) == len(bodies)  # one turn, one fence each


def _in_threads(post: Any, users: int, messages: int) -> list[tuple[int, dict[str, Any]]]:
    answers: list[tuple[int, dict[str, Any]]] = []
    threads = [
        threading.Thread(target=lambda u=u, i=i: answers.append(post(f"u{u}", f"message {i}")))
        for i in range(messages)
        for u in range(users)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == users * messages
    return answers


def test_test_client_burst_from_threads_gets_no_conversation_locked(webhook: Any) -> None:
    app, lock, fake = webhook

    def post(user: str, text: str) -> tuple[int, dict[str, Any]]:
        answer = app.test_client().post("/webhook", json={"user_id": user, "text": text})
        return answer.status_code, answer.get_json()

    _check_burst(_in_threads(post, users=3, messages=4), fake, users=3)
    assert app.test_client().get("/locks").get_json() == []
    assert lock.held() == []


def test_threaded_server_burst_gets_no_conversation_locked(webhook: Any) -> None:
    app, lock, fake = webhook
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:

        def post(user: str, text: str) -> tuple[int, dict[str, Any]]:
            answer = httpx.post(f"{base}/webhook", json={"user_id": user, "text": text}, timeout=60)
            return answer.status_code, answer.json()

        _check_burst(_in_threads(post, users=2, messages=5), fake, users=2)
        assert httpx.get(f"{base}/locks").json() == []
    finally:
        server.shutdown()
        thread.join(10)
    assert lock.held() == []


def test_busy_conversation_is_429_with_retry_after(
    webhook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, lock, fake = webhook
    monkeypatch.setattr(load_example("flask_webhook"), "TURN_TIMEOUT", 0.2)
    conversation_id = app.extensions["conversations"].get("u1")
    with lock.hold(conversation_id, ttl=7):  # another worker's turn
        answer = app.test_client().post("/webhook", json={"user_id": "u1", "text": "hi"})
        locks = app.test_client().get("/locks").get_json()
    assert answer.status_code == 429
    assert 1 <= int(answer.headers["Retry-After"]) <= 7
    assert [entry["key"] for entry in locks] == [conversation_id]
    assert fake.conversation_inputs(conversation_id) == []  # nothing sent while busy
