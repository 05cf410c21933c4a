"""``threadlock demo``: a burst of messages, first without the lock, then with it.

Simulated users each send a burst of messages to their own conversation; a pool of workers
(as a webhook server or queue would) answers them through ``client.responses.create``. The
unguarded bot does what hand-written bots do: on a 400 it waits a moment and retries, a few
times. The guarded bot wraps each turn in :func:`threadlock.openai.guard_conversation`.

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
    errors: int = 0
    lost: int = 0
    out_of_order: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def as_dict(self) -> dict[str, object]:
        """The figures as JSON-ready values (seconds; ``None`` for a percentile of nothing)."""

        def seconds(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 4)

        return {
            "label": self.label,
            "messages": self.messages,
            "errors": self.errors,
            "lost": self.lost,
            "out_of_order": self.out_of_order,
            "wall": round(self.wall, 4),
            "p50": seconds(self.percentile(0.50)),
            "p99": seconds(self.percentile(0.99)),
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
    handle: Callable[[str, str], Awaitable[bool]],
    accepted: Callable[[str], Awaitable[list[str]]],
) -> DemoResult:
    result = DemoResult(label)
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
            if await handle(conversation, text):
                result.latencies.append(time.perf_counter() - arrived)
            else:
                result.lost += 1

    with receive:
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
    result.wall = time.perf_counter() - started
    for conversation in conversations:
        result.out_of_order += _out_of_order(sent[conversation], await accepted(conversation))
    return result


def _table(results: list[DemoResult]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value * 1000:.0f} ms"

    rows = [
        ("messages", [str(r.messages) for r in results]),
        ("400 errors (incl. retries)", [str(r.errors) for r in results]),
        ("lost messages", [str(r.lost) for r in results]),
        ("out-of-order replies", [str(r.out_of_order) for r in results]),
        ("wall time", [f"{r.wall:.2f} s" for r in results]),
        ("p50 time to reply", [ms(r.percentile(0.50)) for r in results]),
        ("p99 time to reply", [ms(r.percentile(0.99)) for r in results]),
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
    """Run both passes and print the table; returns 0 when the guarded pass was clean.

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

    async def naive(conversation: str, text: str) -> bool:
        for attempt in range(_NAIVE_RETRIES + 1):
            try:
                await client.responses.create(model=model, conversation=conversation, input=text)
                return True
            except openai.BadRequestError as error:
                if not is_conversation_locked(error):
                    raise
                without.errors += 1
                if attempt < _NAIVE_RETRIES:
                    await anyio.sleep(_NAIVE_RETRY_DELAY)
        return False

    with_lock = DemoResult("with threadlock")

    async def guarded(conversation: str, text: str) -> bool:
        try:
            async with guard_conversation(client, conversation, lock=lock) as turn:
                await turn.create(model=model, input=text)
            return True
        except openai.BadRequestError as error:  # pragma: no cover - would be a bug
            if is_conversation_locked(error):
                with_lock.errors += 1
            return False

    total = users * messages
    async with lock:
        note(f"pass 1 of 2, without lock: {total} messages ...")
        first = [await new_conversation() for _ in range(users)]
        result = await _burst(without.label, first, messages, workers, naive, accepted)
        result.errors = without.errors
        note(f"pass 2 of 2, with threadlock: {total} messages ...")
        second = [await new_conversation() for _ in range(users)]
        guarded_result = await _burst(with_lock.label, second, messages, workers, guarded, accepted)
        guarded_result.errors = with_lock.errors
    clean = guarded_result.errors == 0 and guarded_result.out_of_order == 0
    clean = clean and guarded_result.lost == 0
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
            "passes": [result.as_dict(), guarded_result.as_dict()],
            "clean": clean,
        }
        out(json.dumps(figures, indent=2))
    else:
        out("")
        out(_table([result, guarded_result]))
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
    if not clean:
        print("threadlock demo: the guarded pass was not clean", file=sys.stderr)
    return 0 if clean else 1


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
