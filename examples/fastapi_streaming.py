"""A FastAPI chat endpoint that streams each reply to the browser as server-sent events.

    python examples/fastapi_streaming.py            # offline: a burst of requests, in-process
    python examples/fastapi_streaming.py --serve    # uvicorn on 127.0.0.1:8000
    OPENAI_API_KEY=sk-... THREADLOCK_URL=redis://localhost:6379/0 \\
        python examples/fastapi_streaming.py --serve

``POST /chat/{user_id}`` with ``{"text": ...}`` answers ``text/event-stream``: one ``delta``
event per piece of the reply, then ``done`` (the response id and the turn's fence). Each
request is one turn on the user's conversation: the lease is held while the reply streams, so
a burst of messages from one user is answered one at a time, in order, with no
``conversation_locked``. A request that cannot get its turn within ``TURN_TIMEOUT`` gets an
``error`` event saying when to retry. A browser that goes away mid-reply closes the stream:
the response is cancelled on OpenAI's side and the lease is released at once, so the user's
next message does not wait for a reply nobody reads.

In a browser::

    const answer = await fetch("/chat/u1", {method: "POST", body: JSON.stringify({text}),
                                            headers: {"content-type": "application/json"}});
    // read answer.body with a TextDecoder, split on blank lines ("event: ...\\ndata: ...")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Send

import threadlock
from threadlock import ThreadBusy
from threadlock.openai import guard_conversation
from threadlock.testing import FakeOpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
TURN_TIMEOUT = 20.0  # seconds a request may wait for its turn


class Message(BaseModel):
    text: str


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator in the task that streams it, however the stream ends.

    A plain ``StreamingResponse`` leaves a generator whose client went away to the event
    loop's finaliser, in another task; closing it here runs the guard's exit in the task that
    entered it, so the lease is released at once.
    """

    async def stream_response(self, send: Send) -> None:
        assert isinstance(self.body_iterator, AsyncGenerator)
        async with contextlib.aclosing(self.body_iterator):
            await super().stream_response(send)


def default_client() -> openai.AsyncOpenAI:
    """The real client when ``OPENAI_API_KEY`` is set, else one served by FakeOpenAI."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai.AsyncOpenAI()
    return FakeOpenAI(response_duration=0.05).client()


def default_lock() -> threadlock.ThreadLock:
    url = os.environ.get("THREADLOCK_URL")
    return threadlock.from_url(url) if url else threadlock.MemoryThreadLock()


def create_app(
    lock: threadlock.ThreadLock | None = None, client: openai.AsyncOpenAI | None = None
) -> FastAPI:
    """The app; ``lock`` and ``client`` default to the environment's (see the module doc)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.lock = default_lock() if lock is None else lock
        app.state.client = default_client() if client is None else client
        app.state.conversations = {}  # user id -> conversation id; a real app uses its DB
        async with app.state.lock:
            yield

    app = FastAPI(title="threadlock streaming example", lifespan=lifespan)

    async def conversation_of(request: Request, user_id: str) -> str:
        state = request.app.state
        if user_id not in state.conversations:
            async with state.lock.hold(f"new-conversation:{user_id}", timeout=TURN_TIMEOUT):
                if user_id not in state.conversations:
                    conversation = await state.client.conversations.create()
                    state.conversations[user_id] = conversation.id
        conversation_id: str = state.conversations[user_id]
        return conversation_id

    async def reply_events(
        request: Request, conversation_id: str, text: str
    ) -> AsyncIterator[bytes]:
        state = request.app.state
        try:
            async with (
                guard_conversation(
                    state.client, conversation_id, lock=state.lock, timeout=TURN_TIMEOUT
                ) as turn,
                turn.stream(model=MODEL, input=text) as stream,
            ):
                async for event in stream:
                    if event.type == "response.output_text.delta":
                        yield sse("delta", {"text": event.delta})
                    elif event.type == "response.completed":
                        done = {"response_id": event.response.id, "fence": turn.lease.fence}
                        yield sse("done", done)
        except ThreadBusy as busy:
            yield sse("error", {"error": "busy", "retry_after": math.ceil(busy.retry_after)})

    @app.post("/chat/{user_id}")
    async def chat(user_id: str, message: Message, request: Request) -> StreamingResponse:
        conversation_id = await conversation_of(request, user_id)
        return ClosingStreamingResponse(
            reply_events(request, conversation_id, message.text),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    @app.get("/locks")
    async def locks(request: Request) -> list[dict[str, Any]]:
        return [{"key": i.key, "fence": i.fence} for i in await request.app.state.lock.held()]

    return app


def parse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` pairs of an SSE body."""
    events: list[tuple[str, dict[str, Any]]] = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def offline_demo(users: int = 2, messages: int = 3) -> dict[str, list[str]]:
    """Run the app in-process and post a burst per user; returns each user's replies in the
    order their turns ran (by fence)."""
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://chat") as http,
    ):

        async def post(user: str, text: str) -> tuple[str, int, str]:
            answer = await http.post(f"/chat/{user}", json={"text": text})
            answer.raise_for_status()
            events = parse_events(answer.text)
            reply = "".join(data["text"] for name, data in events if name == "delta")
            fence = next(data["fence"] for name, data in events if name == "done")
            return user, fence, reply

        answers = await asyncio.gather(
            *(
                post(f"user{u}", f"message {i} from user{u}")
                for i in range(messages)
                for u in range(users)
            )
        )
    replies: dict[str, list[str]] = {}
    for user, _, reply in sorted(answers):
        replies.setdefault(user, []).append(reply)
    return replies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(create_app(), host="127.0.0.1", port=args.port)
        return 0
    for user, replies in asyncio.run(offline_demo()).items():
        print(user, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
