"""Streamed responses: ``responses.create(stream=True)`` answered as server-sent events.

The events are the real API's, in its order, each with a ``sequence_number``:

* ``response.created`` and ``response.in_progress`` (the response, ``in_progress``, no output);
* for the output item (``output_index`` 0), a message:
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per word, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``;
  or a function call (see :meth:`FakeOpenAI.call_function_next_response
  <threadlock.testing.fake_openai.FakeOpenAI.call_function_next_response>`):
  ``response.output_item.added``, ``response.function_call_arguments.delta``,
  ``response.function_call_arguments.done``, ``response.output_item.done``;
* ``response.completed`` with the whole response.

The deltas are spread over ``response_duration`` of the fake's clock (the first at once, the
``.done`` events at its end), produced as the client reads them. The conversation stays locked
(the response is ``in_progress``) until the last event is read. A client that closes the
stream before that (a disconnect) cancels the response: the conversation is unlocked at once
and gets no output from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from threadlock.testing.fake_openai.clock import Clock
from threadlock.testing.fake_openai.errors import Json
from threadlock.testing.fake_openai.state import Response

_WORDS = re.compile(r"\S+\s*|\s+")


def sse(event: Json) -> bytes:
    """One server-sent event: ``event: <type>`` and its JSON ``data``."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def text_chunks(text: str) -> list[str]:
    """``text`` split into word deltas that join back into it (at least one)."""
    return _WORDS.findall(text) or [""]


class EventStream:
    """The SSE body of one streamed response, generated while the client reads it.

    ``snapshot(resp, t)`` builds the response object the lifecycle events carry (the JSON the
    non-streamed API answers); ``output`` is the response's final output items.
    """

    def __init__(
        self,
        resp: Response,
        clock: Clock,
        duration: float,
        read_timeout: float | None,
        snapshot: Callable[[Response, float], Json],
        output: list[Json],
    ) -> None:
        self._resp = resp
        self._clock = clock
        self._duration = duration
        self._read_timeout = read_timeout
        self._snapshot = snapshot
        self._output = output
        self._seq = 0
        self._events = self._generate()
        self.finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    def _event(self, type_: str, **fields: object) -> bytes:
        event: Json = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(event)

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        resp = self._resp
        started = resp.created
        yield self._event("response.created", response=self._snapshot(resp, self._clock.now()))
        yield self._event("response.in_progress", response=self._snapshot(resp, self._clock.now()))
        item = self._output[0]
        chunks = (
            text_chunks(item["content"][0]["text"])
            if item["type"] == "message"
            else [item["arguments"]]
        )
        steps = len(chunks)

        async def pace(step: int) -> None:
            at = started + self._duration * step / steps
            await self._clock.wait_until(at, self._read_timeout)

        if item["type"] == "message":
            part = item["content"][0]
            added = {**item, "status": "in_progress", "content": []}
            yield self._event("response.output_item.added", output_index=0, item=added)
            ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
            empty = {**part, "text": ""}
            yield self._event("response.content_part.added", part=empty, **ids)
            for step, chunk in enumerate(chunks):
                await pace(step)
                yield self._event("response.output_text.delta", delta=chunk, logprobs=[], **ids)
            await pace(steps)
            yield self._event("response.output_text.done", text=part["text"], logprobs=[], **ids)
            yield self._event("response.content_part.done", part=part, **ids)
        else:
            added = {**item, "status": "in_progress", "arguments": ""}
            yield self._event("response.output_item.added", output_index=0, item=added)
            ids = {"item_id": item["id"], "output_index": 0}
            await pace(0)
            yield self._event(
                "response.function_call_arguments.delta", delta=item["arguments"], **ids
            )
            await pace(steps)
            yield self._event(
                "response.function_call_arguments.done",
                arguments=item["arguments"],
                name=item["name"],
                **ids,
            )
        yield self._event("response.output_item.done", output_index=0, item=item)
        now = self._clock.now()
        resp.timeline.replace_future(now, (now, "completed"))
        self.finished = True
        yield self._event("response.completed", response=self._snapshot(resp, now))

    async def drain(self) -> None:
        """Serve the whole stream with nobody reading it (an injected fault's effect)."""
        async for _ in self._events:
            pass

    async def aclose(self) -> None:
        """The client closed the stream: a response not finished yet is cancelled."""
        if not self.finished:
            now = self._clock.now()
            self._resp.timeline.replace_future(now, (now, "cancelled"))
            self.finished = True
        await self._events.aclose()
