"""``threadlock demo``: a burst of messages without the lock, with it, and with the inbox.

Simulated users each send a burst of messages to their own conversation; a pool of workers
(as a webhook server or queue would) answers them through ``client.responses.create``. The
unguarded bot does what hand-written bots do: on a 400 it waits a moment and retries, a few
times. The guarded bot wraps each turn in :func:`threadlock.openai.guard_conversation`. The
inbox bot posts each message to :class:`threadlock.Inbox` (``coalesce``): the worker that owns
a conversation answers everything pending in one turn, under the batch's lease.

By default everything runs in-process against :class:`threadlock.testing.FakeOpenAI`, which
enforces OpenAI's concurrency rules, on the memory backend: no server, no API key.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import openai

from threadlock.backends import from_url
from threadlock.backends.memory import MemoryThreadLock
from threadlock.inbox import Inbox
from threadlock.openai.guard import guard_conversation
from threadlock.openai.runs import is_conversation_locked
from threadlock.protocol import ThreadLock
from threadlock.testing.fake_openai import FakeOpenAI

__all__ = ["DemoResult", "run_demo"]

_NAIVE_RETRIES = 3
_NAIVE_RETRY_DELAY = 0.2
_LIVE_MODEL = "gpt-4o-mini"
_WIDTH = 80  # every line the demo prints fits a terminal of this width


@dataclass
class DemoResult:
    """The figures of one pass of the demo."""

    label: str
    messages: int = 0
    model_calls: int = 0
    errors: int = 0
    lost: int = 0
    out_of_order: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: per user, from the burst to the reply to its last message
    last_replies: list[float] = field(default_factory=list)

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        values = self.latencies if values is None else values
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def as_dict(self) -> dict[str, object]:
        """The figures as JSON-ready values (seconds; ``None`` for a percentile of nothing)."""

        def seconds(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 4)

        return {
            "label": self.label,
            "messages": self.messages,
            "model_calls": self.model_calls,
            "errors": self.errors,
            "lost": self.lost,
            "out_of_order": self.out_of_order,
            "wall": round(self.wall, 4),
            "p50": seconds(self.percentile(0.50)),
            "p99": seconds(self.percentile(0.99)),
            "last_reply_p50": seconds(self.percentile(0.50, self.last_replies)),
        }


def _out_of_order(sent: list[str], accepted: list[str]) -> int:
    """Messages accepted after a message that was sent later than them."""
    rank = {text: i for i, text in enumerate(sent)}
    late = 0
    highest = -1
    for text in accepted:
        position = rank.get(text, -1)
        if position < highest:
            late += 1
        highest = max(highest, position)
    return late


async def _burst(
    label: str,
    conversations: list[str],
    per_user: int,
    workers: int,
    handle: Callable[[str, str, dict[str, float]], Awaitable[None]],
    accepted: Callable[[str], Awaitable[list[str]]],
) -> DemoResult:
    """Send every burst at once; ``handle(conversation, text, answered)`` records in
    ``answered[text]`` when a reply answered ``text`` (maybe later, by another worker)."""
    result = DemoResult(label)
    answered: dict[str, float] = {}
    arrivals: dict[str, float] = {}
    sent: dict[str, list[str]] = {
        c: [f"{c[-6:]}-msg{i}" for i in range(per_user)] for c in conversations
    }
    send, receive = anyio.create_memory_object_stream[tuple[str, str, float]](
        len(conversations) * per_user
    )
    started = time.perf_counter()
    # Each user sends a whole burst at once: their messages arrive back to back.
    for conversation in conversations:
        for text in sent[conversation]:
            send.send_nowait((conversation, text, time.perf_counter()))
    send.close()

    async def worker() -> None:
        async for conversation, text, arrived in receive:
            result.messages += 1
            arrivals[text] = arrived
            await handle(conversation, text, answered)

    with receive:
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
    result.wall = time.perf_counter() - started
    for text, arrived in arrivals.items():
        if text in answered:
            result.latencies.append(answered[text] - arrived)
        else:
            result.lost += 1
    for conversation in conversations:
        replies = [answered[t] for t in sent[conversation] if t in answered]
        if len(replies) == len(sent[conversation]):
            result.last_replies.append(max(replies) - started)
        texts = [part for text in await accepted(conversation) for part in text.split("\n")]
        result.out_of_order += _out_of_order(sent[conversation], texts)
    return result


def _table(results: list[DemoResult]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value * 1000:.0f} ms"

    rows = [
        ("messages", [str(r.messages) for r in results]),
        ("model calls (all tries)", [str(r.model_calls) for r in results]),
        ("400 errors (incl. retries)", [str(r.errors) for r in results]),
        ("lost messages", [str(r.lost) for r in results]),
        ("out-of-order replies", [str(r.out_of_order) for r in results]),
        ("wall time", [f"{r.wall:.2f} s" for r in results]),
        ("p50 time to reply", [ms(r.percentile(0.50)) for r in results]),
        ("p99 time to reply", [ms(r.percentile(0.99)) for r in results]),
        ("time to last reply (p50)", [ms(r.percentile(0.50, r.last_replies)) for r in results]),
    ]
    width = max(len(name) for name, _ in rows)
    cols = [max(len(r.label), *(len(v[i]) for _, v in rows)) for i, r in enumerate(results)]
    lines = [
        " " * width + "  " + "  ".join(r.label.rjust(c) for r, c in zip(results, cols, strict=True))
    ]
    for name, values in rows:
        lines.append(
            name.ljust(width)
            + "  "
            + "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        )
    return "\n".join(lines)


async def run_demo(
    *,
    url: str | None = None,
    users: int = 20,
    messages: int = 5,
    workers: int = 16,
    live: bool = False,
    response_duration: float = 0.05,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Run the three passes and print the table; returns 0 when the guarded and the inbox
    passes were clean.

    Lines fit 80 columns; a line announces each pass as it starts. With ``as_json`` the
    figures are printed as one JSON object instead of the table, and the progress lines go to
    stderr.
    """
    for name, value in (("users", users), ("messages", messages), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    fake: FakeOpenAI | None = None
    if live:
        if not os.environ.get("OPENAI_API_KEY"):
            raise ValueError("--live needs OPENAI_API_KEY in the environment")
        client = openai.AsyncOpenAI(max_retries=0)
        model = _LIVE_MODEL
        where = f"the real OpenAI API ({model})"
    else:
        fake = FakeOpenAI(response_duration=response_duration)
        client = fake.client()
        model = "fake-model"
        where = f"FakeOpenAI ({response_duration * 1000:.0f} ms per response)"
    lock: ThreadLock = from_url(url) if url else MemoryThreadLock()
    backend = url.split("://", 1)[0] if url else "memory"

    def note(text: str) -> None:
        if as_json:
            print(text, file=sys.stderr, flush=True)
        else:
            out(text)

    note(
        _wrap(
            f"threadlock demo: {users} users x {messages} messages, {workers} workers, "
            f"{where}, {backend} backend"
        )
    )

    async def new_conversation() -> str:
        if fake is not None:
            return fake.add_conversation()
        return (await client.conversations.create()).id

    async def accepted(conversation: str) -> list[str]:
        if fake is not None:
            return fake.conversation_inputs(conversation)
        texts: list[str] = []
        async for item in client.conversations.items.list(conversation, order="asc"):
            if getattr(item, "role", None) == "user":
                for part in getattr(item, "content", []) or []:
                    text = getattr(part, "text", None)
                    if isinstance(text, str):
                        texts.append(text)
        return texts

    without = DemoResult("without lock")

    async def naive(conversation: str, text: str, answered: dict[str, float]) -> None:
        for attempt in range(_NAIVE_RETRIES + 1):
            try:
                without.model_calls += 1
                await client.responses.create(model=model, conversation=conversation, input=text)
                answered[text] = time.perf_counter()
                return
            except openai.BadRequestError as error:
                if not is_conversation_locked(error):
                    raise
                without.errors += 1
                if attempt < _NAIVE_RETRIES:
                    await anyio.sleep(_NAIVE_RETRY_DELAY)

    with_lock = DemoResult("with threadlock")

    async def guarded(conversation: str, text: str, answered: dict[str, float]) -> None:
        try:
            async with guard_conversation(client, conversation, lock=lock) as turn:
                with_lock.model_calls += 1
                await turn.create(model=model, input=text)
            answered[text] = time.perf_counter()
        except openai.BadRequestError as error:  # pragma: no cover - would be a bug
            if is_conversation_locked(error):
                with_lock.errors += 1

    with_inbox = DemoResult("with inbox (coalesce)")
    inbox = Inbox(lock)

    async def inboxed(conversation: str, text: str, answered: dict[str, float]) -> None:
        # The worker that owns the conversation answers everything pending in one turn; the
        # others return at once, their message in the owner's next batch.
        async with inbox.turns(conversation, text, id=text, strategy="coalesce") as turns:
            async for batch in turns:
                texts = [str(m.payload) for m in batch.messages]
                try:
                    async with guard_conversation(
                        client, conversation, lock=lock, lease=batch.lease
                    ) as turn:
                        with_inbox.model_calls += 1
                        await turn.create(model=model, input="\n".join(texts))
                except openai.BadRequestError as error:  # pragma: no cover - would be a bug
                    if is_conversation_locked(error):
                        with_inbox.errors += 1
                    continue
                now = time.perf_counter()
                for answered_text in texts:
                    answered[answered_text] = now

    total = users * messages
    async with lock:
        passes = []
        for number, (counts, handle) in enumerate(
            ((without, naive), (with_lock, guarded), (with_inbox, inboxed)), start=1
        ):
            note(f"pass {number} of 3, {counts.label}: {total} messages ...")
            conversations = [await new_conversation() for _ in range(users)]
            done = await _burst(counts.label, conversations, messages, workers, handle, accepted)
            done.errors, done.model_calls = counts.errors, counts.model_calls
            passes.append(done)
    clean = all(p.errors == 0 and p.out_of_order == 0 and p.lost == 0 for p in passes[1:])
    if as_json:
        figures = {
            "users": users,
            "messages_per_user": messages,
            "workers": workers,
            "openai": "live" if live else "fake",
            "response_duration": None if live else response_duration,
            "backend": backend,
            "retries": _NAIVE_RETRIES,
            "retry_delay": _NAIVE_RETRY_DELAY,
            "passes": [p.as_dict() for p in passes],
            "clean": clean,
        }
        out(json.dumps(figures, indent=2))
    else:
        out("")
        out(_table(passes))
        out("")
        out(
            _wrap(
                f"without lock: on a 400 the bot retries up to {_NAIVE_RETRIES} times after "
                f"{_NAIVE_RETRY_DELAY:.1f} s, as hand-written bots do; a message still "
                "refused is lost. Its 400 errors count every refused attempt, retries "
                "included."
            )
        )
        if clean:
            out("with threadlock: every turn waited its turn, in arrival order.")
            out(
                _wrap(
                    "with inbox (coalesce): the owner of a conversation answered everything "
                    "pending in one turn; fewer model calls, the last reply sooner."
                )
            )
    if not clean:
        print("threadlock demo: a locked pass was not clean", file=sys.stderr)
    return 0 if clean else 1


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
