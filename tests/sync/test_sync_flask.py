"""examples/flask_webhook.py on Redis: through Flask's test client and a real threaded server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.sync._helpers import (
    check_burst,
    check_threaded_server_burst,
    in_threads,
    load_example,
)

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


def test_test_client_burst_from_threads_gets_no_conversation_locked(webhook: Any) -> None:
    app, lock, fake = webhook

    def post(user: str, text: str) -> tuple[int, dict[str, Any]]:
        answer = app.test_client().post("/webhook", json={"user_id": user, "text": text})
        return answer.status_code, answer.get_json()

    check_burst(in_threads(post, users=3, messages=4), fake, users=3)
    assert app.test_client().get("/locks").get_json() == []
    assert lock.held() == []


def test_threaded_server_burst_gets_no_conversation_locked(webhook: Any) -> None:
    app, lock, fake = webhook
    check_threaded_server_burst(app, lock, fake)


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
