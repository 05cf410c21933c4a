"""An in-process fake of OpenAI's Responses/Conversations and Assistants (beta threads) APIs.

:class:`FakeOpenAI` serves the HTTP endpoints that chat bots use, through an HTTP *transport*
plugged into the real :class:`openai.AsyncOpenAI` client, so the SDK's own request building,
error mapping, retries, pagination and polling helpers are exercised exactly as in production,
without a network or an API key::

    fake = FakeOpenAI(run_duration=0.1)
    client = fake.client()
    conv = await client.conversations.create()
    await client.responses.create(model="gpt-4o", conversation=conv.id, input="hi")

What it enforces, with OpenAI's exact status codes and error bodies:

* **Conversations**: a ``responses.create(conversation=...)`` (or ``conversations.items.create``)
  while another response on that conversation is being generated (a foreground request still in
  flight) or while a background response on it is ``queued``/``in_progress`` fails with HTTP 400,
  ``code="conversation_locked"``, ``param="conversation"``.
* **Assistants threads**: a thread has at most one active run (``queued``, ``in_progress``,
  ``requires_action``, ``cancelling``). Adding a message or creating a run while one is active
  fails with HTTP 400 and the real texts (``Can't add messages to thread_X while a run run_Y is
  active.`` / ``Thread thread_X already has an active run run_Y.``); cancelling a terminal run
  fails with ``Cannot cancel run with status '<status>'.``.
* Unknown ids give HTTP 404 with OpenAI's ``{"error": {...}}`` shape; unknown URLs give
  ``Invalid URL (METHOD /v1/path)``.

Time: runs and background responses progress lazily, evaluated from a monotonic clock on every
read (no background tasks). :meth:`FakeOpenAI.advance` moves the fake's clock forward, e.g. to
make runs expire without waiting. ``created_at`` values are epoch seconds derived from
``time.time()`` at construction plus the fake's clock.

Concurrency model: the fake is meant for one event loop at a time (asyncio or trio, via
anyio); all state changes happen between awaits, so no locks are needed. It is not thread-safe.
Streaming: ``responses.create(stream=True)`` and ``responses.stream(...)`` answer with the
real server-sent events (:mod:`.streaming`), the conversation locked until the stream ends or
the client closes it (which cancels the response). Background streaming and Assistants
streaming answer HTTP 400. :meth:`FakeOpenAI.call_function_next_response` makes a response
call a function, streamed or not.

Transport: the installed ``openai`` SDK decides the HTTP library. Recent SDKs use ``httpx2``,
older ones (1.x/2.x) use ``httpx``; :meth:`FakeOpenAI.transport` builds a transport for whichever
library the SDK's ``DefaultAsyncHttpxClient`` derives from, and can build one for the other
library too (the SDK also accepts a legacy ``httpx.AsyncClient`` as ``http_client``).

Layout (the public names are the ones exported here; the modules are internal):

* :mod:`.fake`: :class:`FakeOpenAI`, which builds and wires the parts below;
* :mod:`.conversations`, :mod:`.responses`, :mod:`.assistants`: one module per API, each with
  its routes and handlers; the conversation lock lives in :mod:`.conversations`;
  :mod:`.streaming`: the SSE answer of a streamed response;
* :mod:`.state`: the statuses, the records and the store; :mod:`.clock`: the fake clock and
  the timelines; :mod:`.errors`: every OpenAI error body; :mod:`.wire`: requests, replies,
  ids, metadata and pagination;
* :mod:`.faults`: fault injection; :mod:`.admin`: the counters;
* :mod:`.server`: the HTTP transport plugged into the SDK's client, and request serving.
"""

from threadlock.testing.fake_openai.errors import CONVERSATION_LOCKED_MESSAGE, Json
from threadlock.testing.fake_openai.fake import FakeOpenAI
from threadlock.testing.fake_openai.faults import InjectedFault, StalledReply
from threadlock.testing.fake_openai.server import sdk_http_module
from threadlock.testing.fake_openai.state import (
    ACTIVE_RESPONSE_STATUSES,
    ACTIVE_RUN_STATUSES,
    RUN_EXPIRY_SECONDS,
    TERMINAL_RESPONSE_STATUSES,
    TERMINAL_RUN_STATUSES,
)

__all__ = [
    "ACTIVE_RESPONSE_STATUSES",
    "ACTIVE_RUN_STATUSES",
    "CONVERSATION_LOCKED_MESSAGE",
    "RUN_EXPIRY_SECONDS",
    "TERMINAL_RESPONSE_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "FakeOpenAI",
    "InjectedFault",
    "Json",
    "StalledReply",
    "sdk_http_module",
]
