"""A FastAPI webhook: every POST is one turn on the sender's OpenAI conversation.

    python examples/fastapi_webhook.py            # offline: a burst of requests, in-process
    python examples/fastapi_webhook.py --serve    # uvicorn on 127.0.0.1:8000
    OPENAI_API_KEY=sk-... THREADLOCK_URL=redis://localhost:6379/0 \\
        python examples/fastapi_webhook.py --serve

Webhook providers (WhatsApp, Telegram in webhook mode, a web chat) deliver a burst of messages
as concurrent requests, often to several server processes. Each request waits its turn on the
sender's conversation (up to ``TURN_TIMEOUT``), then answers. A request that could not get its
turn in time gets HTTP 429 with ``Retry-After``, so the provider redelivers it later. A client
that disconnects mid-turn cancels the handler, and the lease is released all the same.

``GET /locks`` lists the turns in progress (``lock.held()``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

import threadlock
from threadlock import ThreadBusy
from threadlock.openai import guard_conversation, recover_orphaned_runs
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 20.0  # seconds a request may wait for its turn; keep it under the provider's


class Incoming(BaseModel):
    user_id: str
    text: str


class Reply(BaseModel):
    user_id: str
    reply: str
    fence: int


def default_client() -> openai.AsyncOpenAI:
    """The real client when ``OPENAI_API_KEY`` is set, else one served by FakeOpenAI."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai.AsyncOpenAI()
    return FakeOpenAI(response_duration=0.05).client()


def default_lock() -> threadlock.ThreadLock:
    url = os.environ.get("THREADLOCK_URL")
    return threadlock.from_url(url) if url else threadlock.MemoryThreadLock()


class Conversations:
    """User id -> OpenAI conversation id. A real app keeps this in its database."""

    def __init__(self, client: openai.AsyncOpenAI, lock: threadlock.ThreadLock) -> None:
        self._client = client
        self._lock = lock
        self._ids: dict[str, str] = {}

    async def get(self, user_id: str) -> str:
        if user_id not in self._ids:
            # A short lease of its own, so two first messages cannot create two conversations.
            async with self._lock.hold(f"new-conversation:{user_id}", timeout=TURN_TIMEOUT):
                if user_id not in self._ids:
                    conversation = await self._client.conversations.create(
                        metadata={"user_id": user_id}
                    )
                    self._ids[user_id] = conversation.id
        return self._ids[user_id]


def create_app(
    lock: threadlock.ThreadLock | None = None, client: openai.AsyncOpenAI | None = None
) -> FastAPI:
    """The app; ``lock`` and ``client`` default to the environment's (see the module doc)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # "is None", not "or": a MemoryThreadLock holding no key has len() 0, so it is falsy.
        app.state.lock = default_lock() if lock is None else lock
        app.state.client = default_client() if client is None else client
        app.state.conversations = Conversations(app.state.client, app.state.lock)
        async with app.state.lock:
            # Once at start-up: cancel what a crashed worker left running.
            await recover_orphaned_runs(app.state.client, lock=app.state.lock, max_age=300)
            yield

    app = FastAPI(title="threadlock webhook example", lifespan=lifespan)

    @app.post("/webhook")
    async def webhook(message: Incoming, request: Request) -> Reply:
        state = request.app.state
        conversation_id = await state.conversations.get(message.user_id)
        try:
            async with guard_conversation(
                state.client, conversation_id, lock=state.lock, ttl=30, timeout=TURN_TIMEOUT
            ) as turn:
                response = await turn.create(model=MODEL, input=message.text)
        except ThreadBusy as busy:
            retry = str(math.ceil(busy.retry_after))
            raise HTTPException(429, "conversation busy", headers={"Retry-After": retry}) from busy
        return Reply(user_id=message.user_id, reply=response.output_text, fence=turn.lease.fence)

    @app.get("/locks")
    async def locks(request: Request) -> list[dict[str, Any]]:
        return [
            {"key": i.key, "owner": i.owner, "fence": i.fence, "waiters": i.waiters}
            for i in await request.app.state.lock.held()
        ]

    return app


async def offline_demo(users: int = 2, messages: int = 3) -> list[dict[str, Any]]:
    """Run the app in-process and post a burst of messages; returns the replies."""
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://webhook") as http,
    ):

        async def post(user: str, text: str) -> dict[str, Any]:
            answer = await http.post("/webhook", json={"user_id": user, "text": text})
            answer.raise_for_status()
            body: dict[str, Any] = answer.json()
            return body

        tasks = [
            asyncio.create_task(post(f"user{u}", f"message {i} from user{u}"))
            for i in range(messages)
            for u in range(users)
        ]
        return list(await asyncio.gather(*tasks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(create_app(), host="127.0.0.1", port=args.port)
        return 0
    for reply in asyncio.run(offline_demo()):
        print(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
