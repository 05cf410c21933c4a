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
Streaming (``stream=True``) is not supported and answers HTTP 400.

Transport: the installed ``openai`` SDK decides the HTTP library. Recent SDKs use ``httpx2``,
older ones (1.x/2.x) use ``httpx``; :meth:`FakeOpenAI.transport` builds a transport for whichever
library the SDK's ``DefaultAsyncHttpxClient`` derives from, and can build one for the other
library too (the SDK also accepts a legacy ``httpx.AsyncClient`` as ``http_client``).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final

import anyio
import openai

__all__ = [
    "ACTIVE_RESPONSE_STATUSES",
    "ACTIVE_RUN_STATUSES",
    "RUN_EXPIRY_SECONDS",
    "TERMINAL_RUN_STATUSES",
    "FakeOpenAI",
    "InjectedFault",
    "sdk_http_module",
]

Json = dict[str, Any]

ACTIVE_RUN_STATUSES: Final = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
"""Run statuses during which a thread accepts neither messages nor a new run."""

TERMINAL_RUN_STATUSES: Final = frozenset(
    {"completed", "failed", "cancelled", "expired", "incomplete"}
)
"""Run statuses that never change again."""

ACTIVE_RESPONSE_STATUSES: Final = frozenset({"queued", "in_progress"})
"""Response statuses during which the response's conversation is locked."""

TERMINAL_RESPONSE_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "incomplete"})

RUN_EXPIRY_SECONDS: Final = 600.0
"""A run's ``expires_at`` is ``created_at`` plus this; an active run past it becomes ``expired``."""

CONVERSATION_LOCKED_MESSAGE: Final = (
    "Another process is currently operating on this conversation. Please retry in a few seconds."
)

_SERVER_ERROR_MESSAGE: Final = (
    "The server had an error processing your request. Sorry about that! You can retry your "
    "request, or contact us through our help center at help.openai.com if you keep seeing this "
    "error."
)

_DEFAULT_BASE_URL: Final = "http://fake-openai.local/v1"
_MAX_LIST_LIMIT: Final = 100


# --------------------------------------------------------------------------------------------
# errors and small helpers


class _APIError(Exception):
    """An OpenAI-shaped error answer, raised inside a handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.param = param
        self.code = code
        self.kind = kind  # set for the three concurrency errors

    def body(self) -> Json:
        return {
            "error": {
                "message": self.message,
                "type": self.type_,
                "param": self.param,
                "code": self.code,
            }
        }


class _ClientTimeoutError(Exception):
    """The client's read timeout elapsed before the answer was ready."""


def _not_found(kind: str, object_id: str) -> _APIError:
    return _APIError(404, f"No {kind} found with id '{object_id}'.")


def _missing(param: str) -> _APIError:
    return _APIError(400, f"Missing required parameter: '{param}'.", param=param)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _check_duration(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return value


@dataclass
class _Timeline:
    """Status changes at fake-clock times; the status at ``t`` is the last step at or before it."""

    steps: list[tuple[float, str]]

    def status_at(self, t: float) -> str:
        status = self.steps[0][1]
        for at, step_status in self.steps:
            if at > t:
                break
            status = step_status
        return status

    def first_time(self, status: str, t: float) -> float | None:
        for at, step_status in self.steps:
            if at > t:
                return None
            if step_status == status:
                return at
        return None

    def replace_future(self, now: float, *steps: tuple[float, str]) -> None:
        """Drop every step after ``now`` and append ``steps``."""
        self.steps = [s for s in self.steps if s[0] <= now] + list(steps)


@dataclass
class _Entry:
    """One item of a conversation or thread: stored as is, or the output of a response/run."""

    item: Json | None = None
    source_id: str | None = None


@dataclass
class _Conversation:
    id: str
    created: float
    metadata: dict[str, str]
    entries: list[_Entry] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)


@dataclass
class _Response:
    id: str
    seq: int
    created: float
    timeline: _Timeline
    model: str
    background: bool
    conversation_id: str | None
    previous_response_id: str | None
    instructions: Any
    metadata: dict[str, str]
    input_texts: list[str]
    output_text: str
    output_item_id: str


@dataclass
class _Thread:
    id: str
    created: float
    metadata: dict[str, str]
    entries: list[_Entry] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    user_texts: list[str] = field(default_factory=list)
    pending_texts: list[str] = field(default_factory=list)


@dataclass
class _Run:
    id: str
    seq: int
    thread_id: str
    assistant_id: str
    created: float
    expires: float
    timeline: _Timeline
    model: str
    instructions: str
    tools: list[Any]
    metadata: dict[str, str]
    tool_call: Json | None
    output_message_id: str
    output_text: str


@dataclass
class _Request:
    method: str
    path: str
    template: str
    params: dict[str, str]
    query: dict[str, str]
    content: bytes
    read_timeout: float | None
    body: Json = field(default_factory=dict)


@dataclass
class _Reply:
    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


_Handler = Callable[[_Request], Awaitable[_Reply]]


@dataclass
class InjectedFault:
    """A fault registered with :meth:`FakeOpenAI.inject`; inspect ``hits`` to see it fired.

    ``remaining`` is how many more matching requests it will answer (``None``: every one).
    """

    method: str
    path: str
    status: int
    remaining: int | None
    apply_effect: bool
    timeout: bool
    body: Json | None
    retry_after: float | None
    hits: int = 0

    def matches(self, method: str, path: str, template: str) -> bool:
        if self.method not in ("*", method):
            return False
        pattern = self.path
        if pattern.startswith("/v1/"):
            pattern = pattern[3:]
        return pattern == template or fnmatch.fnmatchcase(path, pattern)


def _fault_body(status: int) -> Json:
    if status == 429:
        error: Json = {
            "message": (
                "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
                "Please try again in 20ms. Visit https://platform.openai.com/account/rate-limits "
                "to learn more."
            ),
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    elif status == 503:
        error = {
            "message": "The engine is currently overloaded, please try again later.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    elif status >= 500:
        error = {
            "message": _SERVER_ERROR_MESSAGE,
            "type": "server_error",
            "param": None,
            "code": None,
        }
    else:
        error = {
            "message": f"Injected error (HTTP {status}).",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    return {"error": error}


# --------------------------------------------------------------------------------------------
# HTTP library selection and the transport


def sdk_http_module() -> ModuleType:
    """The HTTP library (``httpx2`` or ``httpx``) the installed ``openai`` SDK is built on."""
    client_cls = getattr(openai, "DefaultAsyncHttpxClient", None)
    if isinstance(client_cls, type):
        for klass in client_cls.__mro__:
            root = klass.__module__.partition(".")[0]
            if klass.__name__ == "AsyncClient" and root in ("httpx2", "httpx"):
                return importlib.import_module(root)
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RuntimeError("neither httpx2 nor httpx is installed; the openai SDK needs one of them")


class _TransportMixin:
    """Turns an ``httpx``/``httpx2`` request into a call to :meth:`FakeOpenAI._serve`."""

    def __init__(self, fake: FakeOpenAI, module: ModuleType) -> None:
        self._fake = fake
        self._module = module

    async def handle_async_request(self, request: Any) -> Any:
        await request.aread()
        module = self._module
        timeout = request.extensions.get("timeout")
        read_timeout = timeout.get("read") if isinstance(timeout, Mapping) else None
        reply = await self._fake._serve(
            str(request.method).upper(),
            str(request.url.path),
            dict(request.url.params.multi_items()),
            bytes(request.content),
            float(read_timeout) if isinstance(read_timeout, int | float) else None,
        )
        if reply is None:
            raise module.ReadTimeout("Read timed out (FakeOpenAI)", request=request)
        headers = {"content-type": "application/json", **reply.headers}
        return module.Response(
            reply.status,
            headers=headers,
            content=json.dumps(reply.body).encode(),
            request=request,
        )


_TRANSPORT_CLASSES: dict[str, type[Any]] = {}


def _transport_class(module: ModuleType) -> type[Any]:
    cls = _TRANSPORT_CLASSES.get(module.__name__)
    if cls is None:
        base: type[Any] = module.AsyncBaseTransport
        cls = type(
            "FakeOpenAITransport",
            (_TransportMixin, base),
            {"__module__": __name__, "__doc__": "Serves requests from a FakeOpenAI."},
        )
        _TRANSPORT_CLASSES[module.__name__] = cls
    return cls


# --------------------------------------------------------------------------------------------
# input parsing


def _parse_body(content: bytes) -> Json:
    if not content:
        return {}
    try:
        body = json.loads(content)
    except ValueError:
        raise _APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(body, dict):
        raise _APIError(400, "The request body must be a JSON object.")
    return body


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif isinstance(text, Mapping) and isinstance(text.get("value"), str):
                    parts.append(text["value"])
    return "".join(parts)


def _input_items(value: Any) -> list[Json]:
    """Normalise a Responses ``input`` into conversation items (without ids)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _APIError(
            400, "Invalid type for 'input': expected a string or an array.", param="input"
        )
    items: list[Json] = []
    for raw in value:
        if not isinstance(raw, Mapping):
            raise _APIError(400, "Invalid type for 'input[]': expected an object.", param="input")
        item = dict(raw)
        if "role" in item and item.get("type", "message") == "message":
            content = item.get("content")
            if isinstance(content, str):
                kind = "output_text" if item["role"] == "assistant" else "input_text"
                content = [{"type": kind, "text": content}]
            item = {
                "type": "message",
                "role": item["role"],
                "status": "completed",
                "content": content if isinstance(content, list) else [],
            }
        items.append(item)
    return items


def _output_message(item_id: str, text: str) -> Json:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _message_content(content: Any) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    if not isinstance(content, list):
        raise _missing("content")
    parts: list[Json] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append({"type": "text", "text": {"value": _text_of([part]), "annotations": []}})
        elif isinstance(part, Mapping):
            parts.append(dict(part))
    return parts


def _default_reply(text: str) -> str:
    return f"Reply to: {text}"


# --------------------------------------------------------------------------------------------
# the fake


class FakeOpenAI:
    """In-process fake of OpenAI's Conversations/Responses and Assistants (threads) APIs.

    Durations are seconds of the fake's clock (real time unless :meth:`advance` is used):

    * ``response_duration``: how long a foreground ``responses.create`` takes; the HTTP request
      stays in flight that long and its conversation is locked meanwhile.
    * ``background_duration``: a background response (``background=True``) is ``queued`` for
      ``queue_duration``, then ``in_progress``, then ``completed`` this long after creation.
    * ``run_duration``: a run is ``queued`` for ``queue_duration``, ``in_progress``, then
      ``completed`` (or ``requires_action``, see :meth:`require_action_next_run`) this long
      after creation; after ``submit_tool_outputs`` it is ``in_progress`` for another
      ``run_duration``.
    * ``cancel_duration``: a cancelled run stays ``cancelling`` this long, then ``cancelled``
      (0: cancelled at once).
    * ``poll_after_ms``: the ``openai-poll-after-ms`` header sent with runs, which the SDK's
      ``poll``/``create_and_poll`` use as their polling interval.
    * ``latency``: seconds every request spends in flight before it is served (network and
      server time), so concurrency limits show up in ``max_in_flight``.
    * ``reply``: builds the assistant's answer from the user text of the turn (default
      ``"Reply to: <text>"``).

    Public counters (read them, reset them with :meth:`reset_counters`):

    * ``calls``: requests per ``"METHOD /route/{template}"`` (without ``/v1``), e.g.
      ``calls["POST /threads/{thread_id}/runs"]``; unknown URLs count under their raw path.
    * ``requests``: every request received, including faulted ones.
    * ``errors``: answers by HTTP status, for statuses >= 400 (injected ones included).
    * ``timeouts``: requests that ended in a client read timeout (injected or real).
    * ``concurrency_errors``: the HTTP 400s caused by concurrent use (``conversation_locked``,
      message while a run is active, run while a run is active); ``concurrency_errors_by_kind``
      splits them as ``"conversation_locked"``, ``"message_while_run_active"`` and
      ``"run_while_run_active"``.
    * ``in_flight`` / ``max_in_flight``: requests being served right now / at most at once.
    """

    def __init__(
        self,
        *,
        response_duration: float = 0.05,
        background_duration: float = 0.2,
        run_duration: float = 0.2,
        queue_duration: float = 0.01,
        cancel_duration: float = 0.05,
        poll_after_ms: int = 20,
        latency: float = 0.0,
        reply: Callable[[str], str] | None = None,
        base_url: str = _DEFAULT_BASE_URL,
    ) -> None:
        self.response_duration = _check_duration("response_duration", response_duration)
        self.background_duration = _check_duration("background_duration", background_duration)
        self.run_duration = _check_duration("run_duration", run_duration)
        self.queue_duration = _check_duration("queue_duration", queue_duration)
        self.cancel_duration = _check_duration("cancel_duration", cancel_duration)
        if isinstance(poll_after_ms, bool) or not isinstance(poll_after_ms, int):
            raise TypeError("poll_after_ms must be an int")
        if poll_after_ms < 0:
            raise ValueError("poll_after_ms must be >= 0")
        self.poll_after_ms = poll_after_ms
        self.latency = _check_duration("latency", latency)
        self.base_url = base_url.rstrip("/")
        self._reply = reply or _default_reply

        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._offset = 0.0
        self._wakeups: set[anyio.Event] = set()
        self._seq = 0

        self._conversations: dict[str, _Conversation] = {}
        self._responses: dict[str, _Response] = {}
        self._threads: dict[str, _Thread] = {}
        self._runs: dict[str, _Run] = {}
        self._assistants: dict[str, Json] = {}
        self._require_action: list[tuple[str | None, str, str]] = []
        self._faults: list[InjectedFault] = []

        self.calls: Counter[str] = Counter()
        self.requests = 0
        self.errors: Counter[int] = Counter()
        self.timeouts = 0
        self.concurrency_errors = 0
        self.concurrency_errors_by_kind: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

        self._routes: list[tuple[str, re.Pattern[str], str, _Handler]] = []
        for method, template, handler in self._route_table():
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            self._routes.append((method, re.compile(regex), template, handler))

    # ---------------------------------------------------------------- clients and transport

    def transport(self, *, module: ModuleType | None = None) -> Any:
        """A new async transport serving this fake.

        ``module`` is the HTTP library to build it for (``httpx2`` or ``httpx``); default: the
        one the installed ``openai`` SDK uses. Pass it to ``module.AsyncClient(transport=...)``.
        """
        module = module or sdk_http_module()
        return _transport_class(module)(self, module)

    def http_client(self, *, module: ModuleType | None = None, **kwargs: Any) -> Any:
        """A new ``AsyncClient`` of ``module`` (default: the SDK's HTTP library) on this fake.

        ``kwargs`` go to the ``AsyncClient`` constructor. The result can be passed to
        ``openai.AsyncOpenAI(http_client=...)`` (the SDK accepts both ``httpx2`` and legacy
        ``httpx`` clients).
        """
        module = module or sdk_http_module()
        kwargs.setdefault("base_url", self.base_url)
        return module.AsyncClient(transport=self.transport(module=module), **kwargs)

    def client(self, *, max_retries: int = 0, **kwargs: Any) -> openai.AsyncOpenAI:
        """A real :class:`openai.AsyncOpenAI` whose requests are all served by this fake.

        ``max_retries`` defaults to 0 (not the SDK's 2) so injected 429/5xx reach the caller
        at once; pass ``max_retries=2`` to exercise the SDK's retries. Other ``kwargs`` go to
        ``AsyncOpenAI`` (``api_key`` defaults to a dummy, ``base_url`` to the fake's).
        Client timeouts are honoured: a foreground response longer than the read timeout
        raises ``openai.APITimeoutError`` while the fake keeps generating it (a lost response).
        """
        kwargs.setdefault("api_key", "sk-fake-openai")
        kwargs.setdefault("base_url", self.base_url)
        if "http_client" not in kwargs:
            kwargs["http_client"] = self.http_client(base_url=kwargs["base_url"])
        return openai.AsyncOpenAI(max_retries=max_retries, **kwargs)

    # ---------------------------------------------------------------- time

    def now(self) -> float:
        """The fake's monotonic clock in seconds: ``time.monotonic()`` plus all :meth:`advance`."""
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward by ``seconds``.

        Everything time-driven sees the jump on its next read: runs and background responses
        progress or expire, epoch timestamps of new objects move forward, and foreground
        responses in flight finish early if their end is now past. Call it from the event
        loop's thread.
        """
        self._offset += _check_duration("seconds", seconds)
        for event in list(self._wakeups):
            event.set()

    def _epoch(self, mono: float) -> float:
        return self._wall0 + (mono - self._mono0)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _wait_until(self, deadline: float, read_timeout: float | None) -> None:
        remaining = deadline - self.now()
        if read_timeout is not None and remaining > read_timeout:
            await anyio.sleep(read_timeout)
            raise _ClientTimeoutError
        while (remaining := deadline - self.now()) > 0:
            event = anyio.Event()
            self._wakeups.add(event)
            try:
                with anyio.move_on_after(remaining):
                    await event.wait()
            finally:
                self._wakeups.discard(event)

    # ---------------------------------------------------------------- direct setup

    def add_conversation(self, metadata: Mapping[str, str] | None = None) -> str:
        """Create an empty conversation directly (no request is counted); returns its id."""
        conv = _Conversation(_new_id("conv"), self.now(), dict(metadata or {}))
        self._conversations[conv.id] = conv
        return conv.id

    def add_thread(self, metadata: Mapping[str, str] | None = None) -> str:
        """Create an empty thread directly (no request is counted); returns its id."""
        thread = _Thread(_new_id("thread"), self.now(), dict(metadata or {}))
        self._threads[thread.id] = thread
        return thread.id

    def add_run(
        self,
        thread_id: str,
        status: str = "in_progress",
        *,
        age: float = 0.0,
        metadata: Mapping[str, str] | None = None,
        assistant_id: str = "asst_fake",
        expires_in: float | None = None,
        completes_in: float | None = None,
    ) -> str:
        """Create a run directly, e.g. an orphan left by a crashed worker; returns its id.

        The thread is created (with this id) if missing. ``created_at`` is back-dated by
        ``age`` seconds. The run *stays* in ``status`` (it is stuck: nobody works on it) until
        it is cancelled, its tool outputs are submitted (``requires_action``), it expires, or
        ``completes_in`` seconds pass (then ``completed``). ``expires_at`` is ``created_at +
        600`` if that is still ahead, else now + 600 (an orphan is never born expired), unless
        ``expires_in`` sets it to now + ``expires_in``. A ``cancelling`` orphan becomes
        ``cancelled`` after ``cancel_duration``. No active-run check is made: this is how a test
        builds states the API would refuse. Any status is accepted, terminal ones included.
        """
        if status not in ACTIVE_RUN_STATUSES | TERMINAL_RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        age = _check_duration("age", age)
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = _Thread(thread_id, self.now() - age, {})
            self._threads[thread_id] = thread
        now = self.now()
        created = now - age
        if expires_in is not None:
            expires = now + _check_duration("expires_in", expires_in)
        else:
            expires = created + RUN_EXPIRY_SECONDS
            if expires <= now:
                expires = now + RUN_EXPIRY_SECONDS
        steps = [(created, status)]
        if status == "cancelling":
            steps.append((now + self.cancel_duration, "cancelled"))
        elif completes_in is not None and status in ACTIVE_RUN_STATUSES:
            steps.append((now + _check_duration("completes_in", completes_in), "completed"))
        run = self._new_run(
            thread,
            assistant_id=assistant_id,
            created=created,
            expires=expires,
            steps=steps,
            metadata=dict(metadata or {}),
            model="gpt-4o",
            instructions="",
            tools=[],
            input_text="",
        )
        if status == "requires_action":
            run.tool_call = self._tool_call("fake_tool", "{}")
        return run.id

    def add_background_response(
        self,
        conversation_id: str,
        status: str = "in_progress",
        *,
        age: float = 0.0,
        metadata: Mapping[str, str] | None = None,
        completes_in: float | None = None,
    ) -> str:
        """Create a background response on a conversation directly; returns its id.

        The conversation is created (with this id) if missing. ``created_at`` is back-dated by
        ``age`` seconds; the response stays in ``status`` until cancelled or, if
        ``completes_in`` is given, until it completes that many seconds from now. While it is
        ``queued``/``in_progress`` the conversation is locked.
        """
        if status not in ACTIVE_RESPONSE_STATUSES | TERMINAL_RESPONSE_STATUSES:
            raise ValueError(f"unknown response status {status!r}")
        age = _check_duration("age", age)
        now = self.now()
        conv = self._conversations.get(conversation_id)
        if conv is None:
            conv = _Conversation(conversation_id, now - age, {})
            self._conversations[conversation_id] = conv
        steps = [(now - age, status)]
        if completes_in is not None and status in ACTIVE_RESPONSE_STATUSES:
            steps.append((now + _check_duration("completes_in", completes_in), "completed"))
        resp = _Response(
            id=_new_id("resp"),
            seq=self._next_seq(),
            created=now - age,
            timeline=_Timeline(steps),
            model="gpt-4o",
            background=True,
            conversation_id=conv.id,
            previous_response_id=None,
            instructions=None,
            metadata=dict(metadata or {}),
            input_texts=[],
            output_text=self._reply(""),
            output_item_id=_new_id("msg"),
        )
        self._responses[resp.id] = resp
        conv.response_ids.append(resp.id)
        conv.entries.append(_Entry(source_id=resp.id))
        return resp.id

    def require_action_next_run(
        self,
        thread_id: str | None = None,
        *,
        function_name: str = "fake_tool",
        arguments: str = "{}",
    ) -> None:
        """Make the next run created (on ``thread_id``, or on any thread if ``None``) stop in
        ``requires_action`` instead of completing.

        It asks for one function call (``function_name`` with ``arguments``) and stays in
        ``requires_action`` (an active status: the thread stays blocked) until
        ``submit_tool_outputs`` answers that call id, or until it expires. Each call arms one run.
        """
        self._require_action.append((thread_id, function_name, arguments))

    # ---------------------------------------------------------------- faults and counters

    def inject(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        count: int | None = 1,
        apply_effect: bool = False,
        timeout: bool = False,
        body: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> InjectedFault:
        """Answer the next ``count`` matching requests (``None``: all) with an error.

        ``method`` is an HTTP method or ``"*"``. ``path`` is a route template such as
        ``"/threads/{thread_id}/runs"`` or a glob over the concrete path such as
        ``"/threads/*/runs"`` (a leading ``/v1`` is ignored). The answer has HTTP ``status``
        and OpenAI's body for it (429: ``code="rate_limit_exceeded"``, 5xx: ``server_error``)
        unless ``body`` replaces it; ``retry_after`` adds ``retry-after-ms``/``retry-after``
        headers. ``timeout=True`` raises the HTTP library's ``ReadTimeout`` instead (the SDK
        maps it to ``openai.APITimeoutError``).

        With ``apply_effect=False`` the request has no effect. With ``apply_effect=True`` the
        request is fully served first (the run IS created, the response IS generated) and only
        then is the answer replaced by the error: the "lost response" case. Faults are tried in
        the order they were added; the first that matches is used.
        """
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        if not timeout and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        fault = InjectedFault(
            method=method.upper(),
            path=path,
            status=status,
            remaining=count,
            apply_effect=apply_effect,
            timeout=timeout,
            body=dict(body) if body is not None else None,
            retry_after=retry_after,
        )
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every injected fault that has not fired yet."""
        self._faults.clear()

    def reset_counters(self) -> None:
        """Zero every counter; ``max_in_flight`` restarts from the current ``in_flight``."""
        self.calls.clear()
        self.requests = 0
        self.errors.clear()
        self.timeouts = 0
        self.concurrency_errors = 0
        self.concurrency_errors_by_kind.clear()
        self.max_in_flight = self.in_flight

    # ---------------------------------------------------------------- inspection

    def conversation_inputs(self, conversation_id: str) -> list[str]:
        """The user input texts accepted on a conversation, in the order they were appended.

        Every accepted ``responses.create``/``conversations.create``/``items.create`` adds its
        user message texts; refused requests add nothing.
        """
        conv = self._conversations.get(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        return list(conv.inputs)

    def thread_messages(self, thread_id: str) -> list[str]:
        """The user message texts added to a thread, in order (refused messages excluded)."""
        thread = self._threads.get(thread_id)
        if thread is None:
            raise KeyError(thread_id)
        return list(thread.user_texts)

    def response_chain(self, response_id: str) -> list[str]:
        """The user input texts along a ``previous_response_id`` chain, oldest first,
        ending with ``response_id``'s own input."""
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None and current not in seen:
            seen.add(current)
            resp = self._responses.get(current)
            if resp is None:
                raise KeyError(current)
            chain[:0] = resp.input_texts
            current = resp.previous_response_id
        return chain

    def branches(self) -> dict[str, list[str]]:
        """``previous_response_id`` values that two or more responses continued from.

        Maps each such response id to the ids of the responses created from it, in creation
        order. Empty when every chain is linear (no turn was silently lost).
        """
        children: dict[str, list[str]] = {}
        for resp in sorted(self._responses.values(), key=lambda r: r.seq):
            if resp.previous_response_id is not None:
                children.setdefault(resp.previous_response_id, []).append(resp.id)
        return {parent: ids for parent, ids in children.items() if len(ids) > 1}

    def previous_response_id(self, response_id: str) -> str | None:
        """The ``previous_response_id`` a response was created with."""
        return self._responses[response_id].previous_response_id

    def run_status(self, run_id: str) -> str:
        """A run's status now (without a request)."""
        return self._run_status(self._runs[run_id], self.now())

    def response_status(self, response_id: str) -> str:
        """A response's status now (without a request)."""
        return self._responses[response_id].timeline.status_at(self.now())

    def active_run(self, thread_id: str) -> str | None:
        """The id of the thread's active run, if any."""
        run = self._active_run(self._threads[thread_id], self.now())
        return run.id if run else None

    def active_response(self, conversation_id: str) -> str | None:
        """The id of the response currently locking the conversation, if any."""
        resp = self._busy_response(self._conversations[conversation_id], self.now())
        return resp.id if resp else None

    # ---------------------------------------------------------------- request serving

    async def _serve(
        self,
        method: str,
        raw_path: str,
        query: dict[str, str],
        content: bytes,
        read_timeout: float | None,
    ) -> _Reply | None:
        """Serve one request; ``None`` means the client sees a read timeout."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await anyio.sleep(self.latency)
            path = raw_path
            base_path = re.sub(r"^[a-z]+://[^/]*", "", self.base_url)
            if base_path and path.startswith(base_path + "/"):
                path = path[len(base_path) :]
            elif path.startswith("/v1/"):
                path = path[3:]
            path = path.rstrip("/") or "/"

            route: tuple[str, _Handler, dict[str, str]] | None = None
            for route_method, regex, template, handler in self._routes:
                match = regex.fullmatch(path)
                if route_method == method and match:
                    route = (template, handler, match.groupdict())
                    break
            template = route[0] if route else path
            self.calls[f"{method} {template}"] += 1

            fault = next((f for f in self._faults if f.matches(method, path, template)), None)
            if fault is not None:
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)

            reply: _Reply | None = None
            if fault is None or fault.apply_effect:
                try:
                    request = _Request(
                        method=method,
                        path=raw_path,
                        template=template,
                        params=route[2] if route else {},
                        query=query,
                        content=content,
                        read_timeout=read_timeout,
                    )
                    reply = await self._dispatch(request, route[1] if route else None)
                except _ClientTimeoutError:
                    reply = None
                    if fault is None:
                        self.timeouts += 1
                        return None
            if fault is not None:
                if fault.timeout:
                    self.timeouts += 1
                    return None
                headers: dict[str, str] = {"x-request-id": _new_id("req")}
                if fault.retry_after is not None:
                    headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
                    headers["retry-after"] = str(math.ceil(fault.retry_after))
                reply = _Reply(fault.status, fault.body or _fault_body(fault.status), headers)
            assert reply is not None
            if reply.status >= 400:
                self.errors[reply.status] += 1
            return reply
        finally:
            self.in_flight -= 1

    async def _dispatch(self, request: _Request, handler: _Handler | None) -> _Reply:
        """Run the handler; OpenAI-shaped errors become replies (and are counted)."""
        try:
            reply = await self._call(request, handler)
        except _APIError as error:
            if error.kind is not None:
                self.concurrency_errors += 1
                self.concurrency_errors_by_kind[error.kind] += 1
            reply = _Reply(error.status, error.body())
        reply.headers.setdefault("x-request-id", _new_id("req"))
        return reply

    @staticmethod
    async def _call(request: _Request, handler: _Handler | None) -> _Reply:
        if handler is None:
            raise _APIError(404, f"Invalid URL ({request.method} {request.path})")
        request.body = _parse_body(request.content)
        return await handler(request)

    def _route_table(self) -> list[tuple[str, str, _Handler]]:
        return [
            ("POST", "/responses", self._h_create_response),
            ("GET", "/responses/{response_id}", self._h_get_response),
            ("DELETE", "/responses/{response_id}", self._h_delete_response),
            ("POST", "/responses/{response_id}/cancel", self._h_cancel_response),
            ("POST", "/conversations", self._h_create_conversation),
            ("GET", "/conversations/{conversation_id}", self._h_get_conversation),
            ("POST", "/conversations/{conversation_id}", self._h_update_conversation),
            ("DELETE", "/conversations/{conversation_id}", self._h_delete_conversation),
            ("GET", "/conversations/{conversation_id}/items", self._h_list_items),
            ("POST", "/conversations/{conversation_id}/items", self._h_create_items),
            ("GET", "/conversations/{conversation_id}/items/{item_id}", self._h_get_item),
            ("POST", "/assistants", self._h_create_assistant),
            ("GET", "/assistants/{assistant_id}", self._h_get_assistant),
            ("POST", "/threads", self._h_create_thread),
            ("POST", "/threads/runs", self._h_create_thread_and_run),
            ("GET", "/threads/{thread_id}", self._h_get_thread),
            ("POST", "/threads/{thread_id}", self._h_update_thread),
            ("DELETE", "/threads/{thread_id}", self._h_delete_thread),
            ("POST", "/threads/{thread_id}/messages", self._h_create_message),
            ("GET", "/threads/{thread_id}/messages", self._h_list_messages),
            ("GET", "/threads/{thread_id}/messages/{message_id}", self._h_get_message),
            ("POST", "/threads/{thread_id}/runs", self._h_create_run),
            ("GET", "/threads/{thread_id}/runs", self._h_list_runs),
            ("GET", "/threads/{thread_id}/runs/{run_id}", self._h_get_run),
            ("POST", "/threads/{thread_id}/runs/{run_id}", self._h_update_run),
            ("POST", "/threads/{thread_id}/runs/{run_id}/cancel", self._h_cancel_run),
            (
                "POST",
                "/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
                self._h_submit_tool_outputs,
            ),
            ("GET", "/threads/{thread_id}/runs/{run_id}/steps", self._h_list_steps),
        ]

    # ---------------------------------------------------------------- shared helpers

    @staticmethod
    def _metadata(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _APIError(
                400, "Invalid type for 'metadata': expected an object.", param="metadata"
            )
        if len(value) > 16:
            raise _APIError(
                400,
                "Invalid 'metadata': too many properties. Expected an object with at most 16 "
                f"properties, but got an object with {len(value)} properties instead.",
                param="metadata",
            )
        for key, item in value.items():
            if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
                raise _APIError(
                    400,
                    f"Invalid 'metadata.{key}': keys must be at most 64 characters and values "
                    "strings of at most 512 characters.",
                    param=f"metadata.{key}",
                )
        return dict(value)

    @staticmethod
    def _page(items: list[Json], query: Mapping[str, str], *, default_order: str = "desc") -> Json:
        """Cursor pagination over ``items`` (given oldest first)."""
        order = query.get("order", default_order)
        if order not in ("asc", "desc"):
            raise _APIError(
                400,
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                param="order",
            )
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise _APIError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= _MAX_LIST_LIMIT:
            raise _APIError(
                400,
                f"Invalid 'limit': expected a value between 1 and {_MAX_LIST_LIMIT}, got {limit}.",
                param="limit",
            )
        seq = list(items) if order == "asc" else list(reversed(items))
        ids = [item["id"] for item in seq]
        after = query.get("after")
        before = query.get("before")
        if after is not None:
            seq = seq[ids.index(after) + 1 :] if after in ids else []
            ids = [item["id"] for item in seq]
        if before is not None:
            seq = seq[: ids.index(before)] if before in ids else []
        page = seq[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(seq) > limit,
        }

    def _conversation(self, conversation_id: str) -> _Conversation:
        conv = self._conversations.get(conversation_id)
        if conv is None:
            raise _APIError(404, f"Conversation with id '{conversation_id}' not found.")
        return conv

    def _response(self, response_id: str) -> _Response:
        resp = self._responses.get(response_id)
        if resp is None:
            raise _APIError(404, f"Response with id '{response_id}' not found.")
        return resp

    def _thread(self, thread_id: str) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None:
            raise _not_found("thread", thread_id)
        return thread

    def _run(self, thread_id: str, run_id: str) -> _Run:
        self._thread(thread_id)
        run = self._runs.get(run_id)
        if run is None or run.thread_id != thread_id:
            raise _not_found("run", run_id)
        return run

    def _busy_response(self, conv: _Conversation, t: float) -> _Response | None:
        for response_id in conv.response_ids:
            resp = self._responses[response_id]
            if resp.timeline.status_at(t) in ACTIVE_RESPONSE_STATUSES:
                return resp
        return None

    def _raise_if_locked(self, conv: _Conversation, t: float) -> None:
        if self._busy_response(conv, t) is not None:
            raise _APIError(
                400,
                CONVERSATION_LOCKED_MESSAGE,
                param="conversation",
                code="conversation_locked",
                kind="conversation_locked",
            )

    def _append_items(self, conv: _Conversation, items: list[Json]) -> list[Json]:
        stored: list[Json] = []
        for raw in items:
            item = {"id": _new_id("msg"), **raw}
            conv.entries.append(_Entry(item=item))
            if item.get("type") == "message" and item.get("role") == "user":
                conv.inputs.append(_text_of(item.get("content")))
            stored.append(item)
        return stored

    def _visible_items(self, conv: _Conversation, t: float) -> list[Json]:
        items: list[Json] = []
        for entry in conv.entries:
            if entry.item is not None:
                items.append(entry.item)
            elif entry.source_id is not None:
                resp = self._responses[entry.source_id]
                if resp.timeline.status_at(t) == "completed":
                    items.append(_output_message(resp.output_item_id, resp.output_text))
        return items

    def _response_json(self, resp: _Response, t: float) -> Json:
        status = resp.timeline.status_at(t)
        completed = resp.timeline.first_time("completed", t) if status == "completed" else None
        words = sum(len(text.split()) for text in resp.input_texts)
        out_words = len(resp.output_text.split())
        return {
            "id": resp.id,
            "object": "response",
            "created_at": int(self._epoch(resp.created)),
            "completed_at": int(self._epoch(completed)) if completed is not None else None,
            "status": status,
            "background": resp.background,
            "model": resp.model,
            "instructions": resp.instructions,
            "metadata": dict(resp.metadata),
            "conversation": {"id": resp.conversation_id} if resp.conversation_id else None,
            "previous_response_id": resp.previous_response_id,
            "output": (
                [_output_message(resp.output_item_id, resp.output_text)]
                if status == "completed"
                else []
            ),
            "error": (
                {"code": "server_error", "message": "The response failed."}
                if status == "failed"
                else None
            ),
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "temperature": 1.0,
            "top_p": 1.0,
            "store": True,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "usage": (
                {
                    "input_tokens": words,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": out_words,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": words + out_words,
                }
                if status == "completed"
                else None
            ),
        }

    def _run_status(self, run: _Run, t: float) -> str:
        status = run.timeline.status_at(min(t, run.expires))
        if status in ACTIVE_RUN_STATUSES and t >= run.expires:
            return "expired"
        return status

    def _active_run(self, thread: _Thread, t: float) -> _Run | None:
        for run_id in reversed(thread.run_ids):
            run = self._runs[run_id]
            if self._run_status(run, t) in ACTIVE_RUN_STATUSES:
                return run
        return None

    def _tool_call(self, function_name: str, arguments: str) -> Json:
        return {
            "id": _new_id("call"),
            "type": "function",
            "function": {"name": function_name, "arguments": arguments},
        }

    def _new_run(
        self,
        thread: _Thread,
        *,
        assistant_id: str,
        created: float,
        expires: float,
        steps: list[tuple[float, str]],
        metadata: dict[str, str],
        model: str,
        instructions: str,
        tools: list[Any],
        input_text: str,
    ) -> _Run:
        run = _Run(
            id=_new_id("run"),
            seq=self._next_seq(),
            thread_id=thread.id,
            assistant_id=assistant_id,
            created=created,
            expires=expires,
            timeline=_Timeline(steps),
            model=model,
            instructions=instructions,
            tools=tools,
            metadata=metadata,
            tool_call=None,
            output_message_id=_new_id("msg"),
            output_text=self._reply(input_text),
        )
        self._runs[run.id] = run
        thread.run_ids.append(run.id)
        thread.entries.append(_Entry(source_id=run.id))
        return run

    def _run_json(self, run: _Run, t: float) -> Json:
        status = self._run_status(run, t)
        cut = min(t, run.expires)

        def stamp(step: str) -> int | None:
            at = run.timeline.first_time(step, cut)
            return int(self._epoch(at)) if at is not None else None

        terminal = status in TERMINAL_RUN_STATUSES
        tokens = len(run.output_text.split())
        return {
            "id": run.id,
            "object": "thread.run",
            "created_at": int(self._epoch(run.created)),
            "assistant_id": run.assistant_id,
            "thread_id": run.thread_id,
            "status": status,
            "started_at": stamp("in_progress"),
            "expires_at": (
                int(self._epoch(run.expires))
                if status in ACTIVE_RUN_STATUSES | {"expired"}
                else None
            ),
            "cancelled_at": stamp("cancelled") if status == "cancelled" else None,
            "failed_at": stamp("failed") if status == "failed" else None,
            "completed_at": stamp("completed") if status == "completed" else None,
            "required_action": (
                {
                    "type": "submit_tool_outputs",
                    "submit_tool_outputs": {"tool_calls": [run.tool_call]},
                }
                if status == "requires_action" and run.tool_call is not None
                else None
            ),
            "last_error": (
                {"code": "server_error", "message": "Sorry, something went wrong."}
                if status == "failed"
                else None
            ),
            "incomplete_details": (
                {"reason": "max_completion_tokens"} if status == "incomplete" else None
            ),
            "model": run.model,
            "instructions": run.instructions,
            "tools": run.tools,
            "metadata": dict(run.metadata),
            "usage": (
                {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
                if terminal
                else None
            ),
            "temperature": 1.0,
            "top_p": 1.0,
            "max_prompt_tokens": None,
            "max_completion_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }

    def _run_reply(self, run: _Run, status: int = 200) -> _Reply:
        return _Reply(
            status,
            self._run_json(run, self.now()),
            {"openai-poll-after-ms": str(self.poll_after_ms)},
        )

    def _thread_json(self, thread: _Thread) -> Json:
        return {
            "id": thread.id,
            "object": "thread",
            "created_at": int(self._epoch(thread.created)),
            "metadata": dict(thread.metadata),
            "tool_resources": None,
        }

    def _add_message(self, thread: _Thread, body: Mapping[str, Any]) -> Json:
        role = body.get("role")
        if role not in ("user", "assistant"):
            raise _APIError(
                400,
                f"Invalid value: '{role}'. Supported values are: 'user' and 'assistant'.",
                param="role",
            )
        if "content" not in body:
            raise _missing("content")
        content = _message_content(body["content"])
        now = self.now()
        message: Json = {
            "id": _new_id("msg"),
            "object": "thread.message",
            "created_at": int(self._epoch(now)),
            "thread_id": thread.id,
            "role": role,
            "content": content,
            "assistant_id": None,
            "run_id": None,
            "attachments": list(body.get("attachments") or []),
            "metadata": self._metadata(body.get("metadata")),
            "status": "completed",
            "completed_at": int(self._epoch(now)),
            "incomplete_at": None,
            "incomplete_details": None,
        }
        thread.entries.append(_Entry(item=message))
        if role == "user":
            text = _text_of(content)
            thread.user_texts.append(text)
            thread.pending_texts.append(text)
        return message

    def _thread_message_list(self, thread: _Thread, t: float) -> list[Json]:
        messages: list[Json] = []
        for entry in thread.entries:
            if entry.item is not None:
                messages.append(entry.item)
            elif entry.source_id is not None:
                run = self._runs[entry.source_id]
                if self._run_status(run, t) != "completed":
                    continue
                done = run.timeline.first_time("completed", t)
                stamp = int(self._epoch(done if done is not None else t))
                messages.append(
                    {
                        "id": run.output_message_id,
                        "object": "thread.message",
                        "created_at": stamp,
                        "thread_id": thread.id,
                        "role": "assistant",
                        "content": _message_content(run.output_text),
                        "assistant_id": run.assistant_id,
                        "run_id": run.id,
                        "attachments": [],
                        "metadata": {},
                        "status": "completed",
                        "completed_at": stamp,
                        "incomplete_at": None,
                        "incomplete_details": None,
                    }
                )
        return messages

    def _create_thread(self, body: Mapping[str, Any]) -> _Thread:
        metadata = self._metadata(body.get("metadata"))
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise _APIError(
                400, "Invalid type for 'messages': expected an array.", param="messages"
            )
        thread = _Thread(_new_id("thread"), self.now(), metadata)
        for message in messages:
            if not isinstance(message, Mapping):
                raise _APIError(400, "Invalid 'messages[]': expected an object.", param="messages")
            self._add_message(thread, message)
        self._threads[thread.id] = thread
        return thread

    def _start_run(self, thread: _Thread, body: Mapping[str, Any]) -> _Run:
        if body.get("stream"):
            raise _APIError(
                400, "FakeOpenAI does not support streaming (stream=true).", param="stream"
            )
        now = self.now()
        active = self._active_run(thread, now)
        if active is not None:
            raise _APIError(
                400,
                f"Thread {thread.id} already has an active run {active.id}.",
                kind="run_while_run_active",
            )
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise _missing("assistant_id")
        metadata = self._metadata(body.get("metadata"))
        extra = body.get("additional_messages") or []
        if not isinstance(extra, list):
            raise _APIError(
                400,
                "Invalid type for 'additional_messages': expected an array.",
                param="additional_messages",
            )
        for message in extra:
            if not isinstance(message, Mapping):
                raise _APIError(
                    400, "Invalid 'additional_messages[]'.", param="additional_messages"
                )
            self._add_message(thread, message)

        armed = next((a for a in self._require_action if a[0] is None or a[0] == thread.id), None)
        if armed is not None:
            self._require_action.remove(armed)
        start = now + min(self.queue_duration, self.run_duration)
        end_status = "requires_action" if armed else "completed"
        input_text = "\n".join(thread.pending_texts)
        thread.pending_texts.clear()
        assistant = self._assistants.get(assistant_id, {})
        run = self._new_run(
            thread,
            assistant_id=assistant_id,
            created=now,
            expires=now + RUN_EXPIRY_SECONDS,
            steps=[(now, "queued"), (start, "in_progress"), (now + self.run_duration, end_status)],
            metadata=metadata,
            model=str(body.get("model") or assistant.get("model") or "gpt-4o"),
            instructions=str(body.get("instructions") or assistant.get("instructions") or ""),
            tools=list(body.get("tools") or assistant.get("tools") or []),
            input_text=input_text,
        )
        if armed is not None:
            run.tool_call = self._tool_call(armed[1], armed[2])
        return run

    # ---------------------------------------------------------------- Responses

    async def _h_create_response(self, req: _Request) -> _Reply:
        body = req.body
        if body.get("stream"):
            raise _APIError(
                400, "FakeOpenAI does not support streaming (stream=true).", param="stream"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        conversation = body.get("conversation")
        if isinstance(conversation, Mapping):
            conversation = conversation.get("id")
        if conversation is not None and not isinstance(conversation, str):
            raise _APIError(
                400, "Invalid type for 'conversation': expected a string.", param="conversation"
            )
        previous = body.get("previous_response_id")
        if conversation is not None and previous is not None:
            raise _APIError(
                400,
                "Mutually exclusive parameters: Ensure you are only providing one of: "
                "'previous_response_id' or 'conversation'.",
                param="conversation",
            )
        background = bool(body.get("background"))
        if background and body.get("store") is False:
            raise _APIError(400, "Background mode requires 'store' to be true.", param="store")
        metadata = self._metadata(body.get("metadata"))
        items = _input_items(body.get("input"))
        now = self.now()
        conv: _Conversation | None = None
        if conversation is not None:
            conv = self._conversation(conversation)
            self._raise_if_locked(conv, now)
        if previous is not None and previous not in self._responses:
            raise _APIError(
                400,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        texts = [
            _text_of(item.get("content"))
            for item in items
            if item.get("type") == "message" and item.get("role") == "user"
        ]
        if background:
            start = now + min(self.queue_duration, self.background_duration)
            steps = [(now, "queued"), (start, "in_progress")]
            end = now + self.background_duration
        else:
            steps = [(now, "in_progress")]
            end = now + self.response_duration
        steps.append((end, "completed"))
        resp = _Response(
            id=_new_id("resp"),
            seq=self._next_seq(),
            created=now,
            timeline=_Timeline(steps),
            model=model,
            background=background,
            conversation_id=conv.id if conv else None,
            previous_response_id=previous,
            instructions=body.get("instructions"),
            metadata=metadata,
            input_texts=texts,
            output_text=self._reply("\n".join(texts)),
            output_item_id=_new_id("msg"),
        )
        self._responses[resp.id] = resp
        if conv is not None:
            self._append_items(conv, items)
            conv.response_ids.append(resp.id)
            conv.entries.append(_Entry(source_id=resp.id))
        if not background:
            await self._wait_until(end, req.read_timeout)
        return _Reply(200, self._response_json(resp, self.now()))

    async def _h_get_response(self, req: _Request) -> _Reply:
        resp = self._response(req.params["response_id"])
        return _Reply(200, self._response_json(resp, self.now()))

    async def _h_delete_response(self, req: _Request) -> _Reply:
        resp = self._response(req.params["response_id"])
        del self._responses[resp.id]
        if resp.conversation_id in self._conversations:
            conv = self._conversations[resp.conversation_id]
            conv.response_ids.remove(resp.id)
            conv.entries = [e for e in conv.entries if e.source_id != resp.id]
        return _Reply(200, {"id": resp.id, "object": "response", "deleted": True})

    async def _h_cancel_response(self, req: _Request) -> _Reply:
        resp = self._response(req.params["response_id"])
        if not resp.background:
            raise _APIError(400, "Cannot cancel a synchronous response.")
        now = self.now()
        if resp.timeline.status_at(now) in ACTIVE_RESPONSE_STATUSES:
            resp.timeline.replace_future(now, (now, "cancelled"))
        return _Reply(200, self._response_json(resp, now))

    # ---------------------------------------------------------------- Conversations

    def _conversation_json(self, conv: _Conversation) -> Json:
        return {
            "id": conv.id,
            "object": "conversation",
            "created_at": int(self._epoch(conv.created)),
            "metadata": dict(conv.metadata),
        }

    async def _h_create_conversation(self, req: _Request) -> _Reply:
        metadata = self._metadata(req.body.get("metadata"))
        items = _input_items(req.body.get("items"))
        conv = _Conversation(_new_id("conv"), self.now(), metadata)
        self._append_items(conv, items)
        self._conversations[conv.id] = conv
        return _Reply(200, self._conversation_json(conv))

    async def _h_get_conversation(self, req: _Request) -> _Reply:
        return _Reply(
            200, self._conversation_json(self._conversation(req.params["conversation_id"]))
        )

    async def _h_update_conversation(self, req: _Request) -> _Reply:
        conv = self._conversation(req.params["conversation_id"])
        if "metadata" not in req.body:
            raise _missing("metadata")
        conv.metadata = self._metadata(req.body["metadata"])
        return _Reply(200, self._conversation_json(conv))

    async def _h_delete_conversation(self, req: _Request) -> _Reply:
        conv = self._conversation(req.params["conversation_id"])
        del self._conversations[conv.id]
        return _Reply(200, {"id": conv.id, "object": "conversation.deleted", "deleted": True})

    async def _h_list_items(self, req: _Request) -> _Reply:
        conv = self._conversation(req.params["conversation_id"])
        return _Reply(200, self._page(self._visible_items(conv, self.now()), req.query))

    async def _h_create_items(self, req: _Request) -> _Reply:
        conv = self._conversation(req.params["conversation_id"])
        if "items" not in req.body:
            raise _missing("items")
        items = _input_items(req.body["items"])
        self._raise_if_locked(conv, self.now())
        stored = self._append_items(conv, items)
        return _Reply(
            200,
            {
                "object": "list",
                "data": stored,
                "first_id": stored[0]["id"] if stored else None,
                "last_id": stored[-1]["id"] if stored else None,
                "has_more": False,
            },
        )

    async def _h_get_item(self, req: _Request) -> _Reply:
        conv = self._conversation(req.params["conversation_id"])
        item_id = req.params["item_id"]
        for item in self._visible_items(conv, self.now()):
            if item["id"] == item_id:
                return _Reply(200, item)
        raise _APIError(404, f"Item with id '{item_id}' not found.")

    # ---------------------------------------------------------------- Assistants

    async def _h_create_assistant(self, req: _Request) -> _Reply:
        model = req.body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        assistant: Json = {
            "id": _new_id("asst"),
            "object": "assistant",
            "created_at": int(self._epoch(self.now())),
            "name": req.body.get("name"),
            "description": req.body.get("description"),
            "model": model,
            "instructions": req.body.get("instructions"),
            "tools": list(req.body.get("tools") or []),
            "metadata": self._metadata(req.body.get("metadata")),
            "temperature": 1.0,
            "top_p": 1.0,
            "response_format": "auto",
            "tool_resources": None,
        }
        self._assistants[assistant["id"]] = assistant
        return _Reply(200, assistant)

    async def _h_get_assistant(self, req: _Request) -> _Reply:
        assistant = self._assistants.get(req.params["assistant_id"])
        if assistant is None:
            raise _not_found("assistant", req.params["assistant_id"])
        return _Reply(200, assistant)

    async def _h_create_thread(self, req: _Request) -> _Reply:
        return _Reply(200, self._thread_json(self._create_thread(req.body)))

    async def _h_create_thread_and_run(self, req: _Request) -> _Reply:
        thread_body = req.body.get("thread") or {}
        if not isinstance(thread_body, Mapping):
            raise _APIError(400, "Invalid type for 'thread': expected an object.", param="thread")
        if not isinstance(req.body.get("assistant_id"), str):
            raise _missing("assistant_id")
        thread = self._create_thread(thread_body)
        return self._run_reply(self._start_run(thread, req.body))

    async def _h_get_thread(self, req: _Request) -> _Reply:
        return _Reply(200, self._thread_json(self._thread(req.params["thread_id"])))

    async def _h_update_thread(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        if "metadata" in req.body:
            thread.metadata = self._metadata(req.body["metadata"])
        return _Reply(200, self._thread_json(thread))

    async def _h_delete_thread(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        del self._threads[thread.id]
        return _Reply(200, {"id": thread.id, "object": "thread.deleted", "deleted": True})

    async def _h_create_message(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        active = self._active_run(thread, self.now())
        if active is not None:
            raise _APIError(
                400,
                f"Can't add messages to {thread.id} while a run {active.id} is active.",
                kind="message_while_run_active",
            )
        return _Reply(200, self._add_message(thread, req.body))

    async def _h_list_messages(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        messages = self._thread_message_list(thread, self.now())
        run_id = req.query.get("run_id")
        if run_id is not None:
            messages = [m for m in messages if m.get("run_id") == run_id]
        return _Reply(200, self._page(messages, req.query))

    async def _h_get_message(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        message_id = req.params["message_id"]
        for message in self._thread_message_list(thread, self.now()):
            if message["id"] == message_id:
                return _Reply(200, message)
        raise _not_found("message", message_id)

    async def _h_create_run(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        return self._run_reply(self._start_run(thread, req.body))

    async def _h_list_runs(self, req: _Request) -> _Reply:
        thread = self._thread(req.params["thread_id"])
        now = self.now()
        runs = sorted((self._runs[r] for r in thread.run_ids), key=lambda r: (r.created, r.seq))
        page = self._page([self._run_json(run, now) for run in runs], req.query)
        return _Reply(200, page)

    async def _h_get_run(self, req: _Request) -> _Reply:
        return self._run_reply(self._run(req.params["thread_id"], req.params["run_id"]))

    async def _h_update_run(self, req: _Request) -> _Reply:
        run = self._run(req.params["thread_id"], req.params["run_id"])
        if "metadata" in req.body:
            run.metadata = self._metadata(req.body["metadata"])
        return self._run_reply(run)

    async def _h_cancel_run(self, req: _Request) -> _Reply:
        run = self._run(req.params["thread_id"], req.params["run_id"])
        now = self.now()
        status = self._run_status(run, now)
        if status in TERMINAL_RUN_STATUSES or status == "cancelling":
            raise _APIError(400, f"Cannot cancel run with status '{status}'.")
        run.timeline.replace_future(
            now, (now, "cancelling"), (now + self.cancel_duration, "cancelled")
        )
        return self._run_reply(run)

    async def _h_submit_tool_outputs(self, req: _Request) -> _Reply:
        run = self._run(req.params["thread_id"], req.params["run_id"])
        now = self.now()
        status = self._run_status(run, now)
        if status != "requires_action":
            raise _APIError(400, f'Runs in status "{status}" do not accept tool outputs.')
        outputs = req.body.get("tool_outputs")
        if not isinstance(outputs, list):
            raise _missing("tool_outputs")
        given = sorted(str(o.get("tool_call_id")) for o in outputs if isinstance(o, Mapping))
        expected = [run.tool_call["id"]] if run.tool_call else []
        if not set(expected) <= set(given):
            raise _APIError(
                400,
                f"Expected tool outputs for call_ids {expected}, got {given}",
                param="tool_outputs",
            )
        run.timeline.replace_future(
            now, (now, "in_progress"), (now + self.run_duration, "completed")
        )
        return self._run_reply(run)

    async def _h_list_steps(self, req: _Request) -> _Reply:
        self._run(req.params["thread_id"], req.params["run_id"])
        return _Reply(200, self._page([], req.query))
