"""A Flask webhook: every POST is one turn on the sender's OpenAI conversation, in sync code.

    python examples/flask_webhook.py            # offline: a burst of requests from threads
    python examples/flask_webhook.py --serve    # Flask's threaded server on 127.0.0.1:8000
    OPENAI_API_KEY=sk-... THREADLOCK_URL=redis://localhost:6379/0 \\
        gunicorn -w 4 --threads 8 'flask_webhook:create_app()'

The sync twin of ``fastapi_webhook.py``, on :mod:`threadlock.sync`: one lock object per
process, shared by every request thread; each request waits its turn on the sender's
conversation (up to ``TURN_TIMEOUT``), then answers with a sync ``openai.OpenAI`` client. A
request that could not get its turn in time gets HTTP 429 with ``Retry-After``. The lease is
renewed on threadlock's own loop while the request thread is blocked in the HTTP call.

``POST /inbox`` is the inbox variant (:class:`threadlock.sync.Inbox`): a burst of messages
from one user is folded into as few turns as the ``coalesce`` strategy allows. The request
that owns the conversation answers every batch (each under the batch's lease) and returns
them; a request that arrives meanwhile returns 202 at once, its message in the owner's next
batch. A real bot sends each reply to the chat instead of returning it.

``GET /locks`` lists the turns in progress (``lock.held()``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
from typing import Any

import openai
from flask import Flask, jsonify, request

import threadlock
import threadlock.sync
from threadlock.sync import SyncThreadLock, guard_conversation, recover_orphaned_runs

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 20.0  # seconds a request may wait for its turn; keep it under the provider's


def default_client() -> openai.OpenAI:
    """The real client when ``OPENAI_API_KEY`` is set, else one served by FakeOpenAI."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai.OpenAI()
    from threadlock.sync.testing import sync_client
    from threadlock.testing import FakeOpenAI

    return sync_client(FakeOpenAI(response_duration=0.05))


def default_lock() -> SyncThreadLock:
    return threadlock.sync.from_url(os.environ.get("THREADLOCK_URL") or "memory://")


class Conversations:
    """User id -> OpenAI conversation id. A real app keeps this in its database."""

    def __init__(self, client: openai.OpenAI, lock: SyncThreadLock) -> None:
        self._client = client
        self._lock = lock
        self._ids: dict[str, str] = {}

    def get(self, user_id: str) -> str:
        if user_id not in self._ids:
            # A short lease of its own, so two first messages cannot create two conversations.
            with self._lock.hold(f"new-conversation:{user_id}", timeout=TURN_TIMEOUT):
                if user_id not in self._ids:
                    conversation = self._client.conversations.create(metadata={"user_id": user_id})
                    self._ids[user_id] = conversation.id
        return self._ids[user_id]


def create_app(lock: SyncThreadLock | None = None, client: openai.OpenAI | None = None) -> Flask:
    """The app; ``lock`` and ``client`` default to the environment's (see the module doc)."""
    app = Flask(__name__)
    the_lock = default_lock() if lock is None else lock
    the_client = default_client() if client is None else client
    conversations = Conversations(the_client, the_lock)
    app.extensions["threadlock"] = the_lock
    app.extensions["conversations"] = conversations
    # Once at start-up: cancel what a crashed worker left running.
    recover_orphaned_runs(the_client, lock=the_lock, max_age=300)

    @app.post("/webhook")
    def webhook() -> Any:
        message = request.get_json()
        user_id, text = str(message["user_id"]), str(message["text"])
        conversation_id = conversations.get(user_id)
        try:
            with guard_conversation(
                the_client, conversation_id, lock=the_lock, ttl=30, timeout=TURN_TIMEOUT
            ) as turn:
                response = turn.create(model=MODEL, input=text)
                fence = turn.lease.fence
        except threadlock.ThreadBusy as busy:
            retry = str(max(1, math.ceil(busy.retry_after)))
            return jsonify(error="conversation busy"), 429, {"Retry-After": retry}
        return jsonify(user_id=user_id, reply=response.output_text, fence=fence)

    inbox = threadlock.sync.Inbox(the_lock)
    app.extensions["inbox"] = inbox

    @app.post("/inbox")
    def inbox_webhook() -> Any:
        message = request.get_json()
        user_id, text = str(message["user_id"]), str(message["text"])
        message_id = message.get("id")  # the platform's id, if any: a redelivery is a no-op
        conversation_id = conversations.get(user_id)
        answered: list[dict[str, Any]] = []
        with inbox.turns(conversation_id, text, id=message_id, strategy="coalesce") as turns:
            for batch in turns:
                texts = [str(m.payload) for m in batch.messages]
                with guard_conversation(
                    the_client, conversation_id, lock=the_lock, lease=batch.lease
                ) as turn:
                    response = turn.create(model=MODEL, input="\n".join(texts))
                answered.append(
                    {"messages": texts, "reply": response.output_text, "fence": batch.lease.fence}
                )
        if not answered:  # another request owns the conversation: it answers this message
            return jsonify(user_id=user_id, queued=True), 202
        return jsonify(user_id=user_id, answered=answered)

    @app.get("/locks")
    def locks() -> Any:
        return jsonify(
            [
                {"key": i.key, "owner": i.owner, "fence": i.fence, "waiters": i.waiters}
                for i in the_lock.held()
            ]
        )

    return app


def offline_demo(users: int = 2, messages: int = 3) -> list[dict[str, Any]]:
    """Post a burst of messages from one thread each, through Flask's test client."""
    app = create_app()
    replies: list[dict[str, Any]] = []

    def post(user: str, text: str) -> None:
        answer = app.test_client().post("/webhook", json={"user_id": user, "text": text})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        replies.append(answer.get_json())

    threads = [
        threading.Thread(target=post, args=(f"user{u}", f"message {i} from user{u}"))
        for i in range(messages)
        for u in range(users)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with Flask's threaded server")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        create_app().run(host="127.0.0.1", port=args.port, threaded=True)
        return 0
    for reply in sorted(offline_demo(), key=lambda r: (r["user_id"], r["fence"])):
        print(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
