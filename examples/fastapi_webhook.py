"""A FastAPI webhook: a burst of POSTs from one sender is answered by one turn.

    python examples/fastapi_webhook.py            # offline: a burst of requests, in-process
    python examples/fastapi_webhook.py --serve    # uvicorn on 127.0.0.1:8000
    OPENAI_API_KEY=sk-... THREADLOCK_URL=redis://localhost:6379/0 \\
        python examples/fastapi_webhook.py --serve

Webhook providers (WhatsApp, Telegram in webhook mode, a web chat) deliver a burst of messages
as concurrent requests, often to several server processes. Each request posts its message to
the sender's :class:`threadlock.Inbox` (``coalesce``; the provider's message id, if given, as
the id, so a redelivery is a no-op) and returns at once with ``"queued"`` unless it owns the
conversation. The owner answers everything pending in one turn, under the batch's lease
(``guard_conversation(..., lease=batch.lease)``), and sends the reply (here: appends it to
``app.state.outbox``; a real app calls the provider's send API) unless newer messages
superseded the turn; the next turn answers them too. A full inbox is HTTP 429 with
``Retry-After``. A client that disconnects mid-turn cancels the handler: the lease is
released, the batch stays pending, and the sweeper (``inbox.serve``, started with the app on
backends that support it) answers it.

``GET /locks`` lists the turns in progress (``lock.held()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from threadlock import Inbox, InboxFull
from threadlock.inbox import Batch, SweepableStore
from threadlock.openai import guard_conversation, recover_orphaned_runs
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 20.0  # seconds a first message may wait to create its conversation
MAX_PENDING = 50  # messages a sender may have waiting; one more is HTTP 429
SWEEP_INTERVAL = 1.0  # seconds between two passes of the sweeper (crash recovery)


class Incoming(BaseModel):
    user_id: str
    text: str
    message_id: str | None = None  # the provider's id: a redelivery is then a no-op


class Reply(BaseModel):
    user_id: str
    status: str  # "answered": this request owned the conversation; "queued": the owner answers
    replies: list[str]  # the replies this request sent
    fence: int | None  # the lease's fence, when this request owned the conversation


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


async def answer(state: Any, batch: Batch) -> str | None:
    """One turn for a batch of one conversation (``batch.lease.key``), under its lease; the
    reply, or ``None`` when newer messages superseded the turn (the next one answers them)."""
    payloads: list[dict[str, str]] = [m.payload for m in batch.messages]  # type: ignore[misc]
    async with guard_conversation(
        state.client, batch.lease.key, lock=state.lock, lease=batch.lease
    ) as turn:
        response = await turn.create(model=MODEL, input="\n".join(p["text"] for p in payloads))
    if await batch.superseded():
        return None
    state.outbox.append((payloads[-1]["user_id"], response.output_text))  # "send" it
    return response.output_text


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
        app.state.inbox = Inbox(app.state.lock, max_pending=MAX_PENDING)
        app.state.outbox = []
        async with app.state.lock:
            # Once at start-up: cancel what a crashed worker left running.
            await recover_orphaned_runs(app.state.client, lock=app.state.lock, max_age=300)
            sweeper = None
            if isinstance(app.state.inbox.store, SweepableStore):
                # Answers the batches of an owner that died (or disconnected) mid-turn.
                sweeper = asyncio.create_task(
                    app.state.inbox.serve(lambda b: answer(app.state, b), interval=SWEEP_INTERVAL)
                )
            try:
                yield
            finally:
                if sweeper is not None:
                    sweeper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeper

    app = FastAPI(title="threadlock webhook example", lifespan=lifespan)

    @app.post("/webhook")
    async def webhook(message: Incoming, request: Request) -> Reply:
        state = request.app.state
        conversation_id = await state.conversations.get(message.user_id)
        payload = {"user_id": message.user_id, "text": message.text}
        replies: list[str] = []
        fence: int | None = None
        try:
            turns = state.inbox.turns(conversation_id, payload, id=message.message_id, ttl=30)
            async with turns:
                async for batch in turns:
                    fence = batch.lease.fence
                    reply = await answer(state, batch)
                    if reply is not None:
                        replies.append(reply)
        except InboxFull as full:
            retry = str(math.ceil(SWEEP_INTERVAL * 5))
            raise HTTPException(429, str(full), headers={"Retry-After": retry}) from full
        status = "queued" if fence is None else "answered"
        return Reply(user_id=message.user_id, status=status, replies=replies, fence=fence)

    @app.get("/locks")
    async def locks(request: Request) -> list[dict[str, Any]]:
        return [
            {"key": i.key, "owner": i.owner, "fence": i.fence, "waiters": i.waiters}
            for i in await request.app.state.lock.held()
        ]

    return app


async def offline_demo(users: int = 2, messages: int = 3) -> list[tuple[str, str]]:
    """Run the app in-process and post a burst of messages; returns what was sent."""
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
        for body in await asyncio.gather(*tasks):
            print(body)
        sent: list[tuple[str, str]] = app.state.outbox
        return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(create_app(), host="127.0.0.1", port=args.port)
        return 0
    sent = asyncio.run(offline_demo())
    for user in sorted({u for u, _ in sent}):
        print(f"{user}: {sum(u == user for u, _ in sent)} reply for its burst")
    return 0


if __name__ == "__main__":
    sys.exit(main())
