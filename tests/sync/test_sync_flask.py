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


def test_inbox_route_answers_a_burst_once_in_folded_turns(webhook: Any) -> None:
    """Threads post a burst per user to ``/inbox``: each message is in exactly one answered
    batch, each batch was one model turn, nothing is pending and no key is held."""
    app, lock, fake = webhook
    users, messages = 2, 5

    def post(user: str, text: str) -> tuple[int, dict[str, Any]]:
        answer = app.test_client().post("/inbox", json={"user_id": user, "text": text})
        return answer.status_code, answer.get_json()

    answers = in_threads(post, users=users, messages=messages)
    assert {status for status, _ in answers} <= {200, 202}
    assert fake.concurrency_errors == 0
    inbox = app.extensions["inbox"]
    for u in range(users):
        user = f"u{u}"
        mine = [body for status, body in answers if status == 200 and body["user_id"] == user]
        batches = [batch for body in mine for batch in body["answered"]]
        texts = [text for batch in batches for text in batch["messages"]]
        assert sorted(texts) == sorted(f"message {i}" for i in range(messages))
        conversation_id = app.extensions["conversations"].get(user)
        turns = fake.conversation_inputs(conversation_id)
        assert sorted(turns) == sorted("\n".join(batch["messages"]) for batch in batches)
        assert inbox.pending(conversation_id) == []
    assert lock.held() == []
