"""examples/django_view.py on Redis: through Django's test client and a real threaded server."""

from __future__ import annotations

import json
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

pytest.importorskip("django", reason="Django is in the dev extra: pip install -e '.[dev]'")


@pytest.fixture
def django_bot(redis_url: str, prefix: str) -> Iterator[tuple[Any, SyncThreadLock, FakeOpenAI]]:
    example = load_example("django_view")
    fake = FakeOpenAI(response_duration=0.05)
    with threadlock.sync.from_url(redis_url, prefix=prefix) as lock:
        example.configure(lock=lock, client=sync_client(fake))
        yield example, lock, fake


def _post(client: Any, user: str, text: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"user_id": user, "text": text})
    answer = client.post("/webhook", body, content_type="application/json")
    return answer.status_code, answer.json()


def test_test_client_burst_from_threads_gets_no_conversation_locked(django_bot: Any) -> None:
    from django.test import Client

    _example, lock, fake = django_bot
    check_burst(in_threads(lambda u, t: _post(Client(), u, t), users=3, messages=4), fake, users=3)
    assert Client().get("/locks").json() == []
    assert lock.held() == []


def test_threaded_wsgi_server_burst_gets_no_conversation_locked(django_bot: Any) -> None:
    example, lock, fake = django_bot
    check_threaded_server_burst(example.application, lock, fake)


def test_busy_conversation_is_429_with_retry_after(
    django_bot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.test import Client

    example, lock, fake = django_bot
    monkeypatch.setattr(example, "TURN_TIMEOUT", 0.2)
    conversation_id = example.bot().conversation("u1")
    with lock.hold(conversation_id, ttl=7):  # another worker's turn
        body = json.dumps({"user_id": "u1", "text": "hi"})
        answer = Client().post("/webhook", body, content_type="application/json")
        locks = Client().get("/locks").json()
    assert answer.status_code == 429
    assert 1 <= int(answer["Retry-After"]) <= 7
    assert [entry["key"] for entry in locks] == [conversation_id]
    assert fake.conversation_inputs(conversation_id) == []  # nothing sent while busy
