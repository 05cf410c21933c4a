"""A Django view: every POST is one turn on the sender's OpenAI conversation, in sync code.

    python examples/django_view.py              # offline: a burst of requests from threads
    OPENAI_API_KEY=sk-... THREADLOCK_URL=redis://localhost:6379/0 \\
        gunicorn -w 4 --threads 8 django_view:application

A one-file Django project (settings, URLs and views below) on :mod:`threadlock.sync`. In a
real project the lock is built once per process, in ``AppConfig.ready()`` or a module of its
own, and the views import it. Each request waits its turn on the sender's conversation (up to
``TURN_TIMEOUT``); a request that could not get its turn in time gets HTTP 429 with
``Retry-After``. The lease is renewed on threadlock's own event loop while the request thread
is blocked in the OpenAI call.

``GET /locks`` lists the turns in progress (``lock.held()``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import Any

import django
import openai
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import threadlock
import threadlock.sync
from threadlock.sync import SyncThreadLock, guard_conversation

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 20.0  # seconds a request may wait for its turn; keep it under the provider's

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",  # a demo project, never deployed as is
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
    )
    django.setup()


class Bot:
    """The process's lock, OpenAI client and user -> conversation map (a real app: its DB)."""

    def __init__(self, lock: SyncThreadLock, client: openai.OpenAI) -> None:
        self.lock = lock
        self.client = client
        self._ids: dict[str, str] = {}

    def conversation(self, user_id: str) -> str:
        if user_id not in self._ids:
            # A short lease of its own, so two first messages cannot create two conversations.
            with self.lock.hold(f"new-conversation:{user_id}", timeout=TURN_TIMEOUT):
                if user_id not in self._ids:
                    created = self.client.conversations.create(metadata={"user_id": user_id})
                    self._ids[user_id] = created.id
        return self._ids[user_id]


_process: dict[str, Bot] = {}  # the process's one bot, built by configure()


def configure(lock: SyncThreadLock | None = None, client: openai.OpenAI | None = None) -> Bot:
    """Build the process's bot; ``lock`` and ``client`` default to the environment's."""
    if lock is None:
        lock = threadlock.sync.from_url(os.environ.get("THREADLOCK_URL") or "memory://")
    if client is None:
        if os.environ.get("OPENAI_API_KEY"):
            client = openai.OpenAI()
        else:
            from threadlock.sync.testing import sync_client
            from threadlock.testing import FakeOpenAI

            client = sync_client(FakeOpenAI(response_duration=0.05))
    _process["bot"] = Bot(lock, client)
    return _process["bot"]


def bot() -> Bot:
    return _process["bot"] if "bot" in _process else configure()


@csrf_exempt
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    message = json.loads(request.body)
    user_id, text = str(message["user_id"]), str(message["text"])
    the_bot = bot()
    conversation_id = the_bot.conversation(user_id)
    try:
        with guard_conversation(
            the_bot.client, conversation_id, lock=the_bot.lock, ttl=30, timeout=TURN_TIMEOUT
        ) as turn:
            response = turn.create(model=MODEL, input=text)
            fence = turn.lease.fence
    except threadlock.ThreadBusy as busy:
        answer = JsonResponse({"error": "conversation busy"}, status=429)
        answer["Retry-After"] = str(max(1, math.ceil(busy.retry_after)))
        return answer
    return JsonResponse({"user_id": user_id, "reply": response.output_text, "fence": fence})


@require_GET
def locks(request: HttpRequest) -> HttpResponse:
    held = [
        {"key": i.key, "owner": i.owner, "fence": i.fence, "waiters": i.waiters}
        for i in bot().lock.held()
    ]
    return JsonResponse(held, safe=False)


urlpatterns = [path("webhook", webhook), path("locks", locks)]
application = WSGIHandler()


def offline_demo(users: int = 2, messages: int = 3) -> list[dict[str, Any]]:
    """Post a burst of messages from one thread each, through Django's test client."""
    from django.test import Client

    configure()
    replies: list[dict[str, Any]] = []

    def post(user: str, text: str) -> None:
        body = json.dumps({"user_id": user, "text": text})
        answer = Client().post("/webhook", body, content_type="application/json")
        assert answer.status_code == 200, answer.content
        replies.append(answer.json())

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
    for reply in sorted(offline_demo(), key=lambda r: (r["user_id"], r["fence"])):
        print(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
