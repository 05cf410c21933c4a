"""The :class:`FakeOpenAI` front: its settings, clients, clock, setup and inspection.

It builds the parts and wires them together: the :class:`~.clock.Clock`, the
:class:`~.state.Store`, the three APIs (:mod:`.conversations`, :mod:`.responses`,
:mod:`.assistants`), the :class:`~.faults.Faults` and the :class:`~.server.Server` behind the
transport. Its own methods are the test-facing surface; each delegates to the part that owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final

import openai

from threadlock.testing.fake_openai.admin import Counters
from threadlock.testing.fake_openai.assistants import Assistants
from threadlock.testing.fake_openai.clock import Clock, check_duration
from threadlock.testing.fake_openai.conversations import Conversations
from threadlock.testing.fake_openai.faults import Faults, InjectedFault, StalledReply
from threadlock.testing.fake_openai.responses import Responses
from threadlock.testing.fake_openai.server import Server, sdk_http_module, transport_class
from threadlock.testing.fake_openai.state import Store
from threadlock.testing.fake_openai.wire import new_id

_DEFAULT_BASE_URL: Final = "http://fake-openai.local/v1"


def _default_reply(text: str) -> str:
    return f"Reply to: {text}"


class FakeOpenAI(Counters):
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
        super().__init__()
        self.response_duration = check_duration("response_duration", response_duration)
        self.background_duration = check_duration("background_duration", background_duration)
        self.run_duration = check_duration("run_duration", run_duration)
        self.queue_duration = check_duration("queue_duration", queue_duration)
        self.cancel_duration = check_duration("cancel_duration", cancel_duration)
        if isinstance(poll_after_ms, bool) or not isinstance(poll_after_ms, int):
            raise TypeError("poll_after_ms must be an int")
        if poll_after_ms < 0:
            raise ValueError("poll_after_ms must be >= 0")
        self.poll_after_ms = poll_after_ms
        self.latency = check_duration("latency", latency)
        self.base_url = base_url.rstrip("/")
        reply = reply or _default_reply

        self._clock = Clock()
        self._store = Store()
        self._faults = Faults()
        self._conversations = Conversations(self._store, self._clock)
        self._responses = Responses(
            self._store,
            self._clock,
            settings=self,
            conversations=self._conversations,
            reply=reply,
        )
        self._assistants = Assistants(self._store, self._clock, settings=self, reply=reply)
        routes = self._responses.routes() + self._conversations.routes() + self._assistants.routes()
        self._server = Server(settings=self, counters=self, faults=self._faults, routes=routes)

    # ---------------------------------------------------------------- clients and transport

    def transport(self, *, module: ModuleType | None = None) -> Any:
        """A new async transport serving this fake.

        ``module`` is the HTTP library to build it for (``httpx2`` or ``httpx``); default: the
        one the installed ``openai`` SDK uses. Pass it to ``module.AsyncClient(transport=...)``.
        """
        module = module or sdk_http_module()
        return transport_class(module)(self._server, module)

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
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward by ``seconds``.

        Everything time-driven sees the jump on its next read: runs and background responses
        progress or expire, epoch timestamps of new objects move forward, and foreground
        responses in flight finish early if their end is now past. Call it from the event
        loop's thread.
        """
        self._clock.advance(seconds)

    # ---------------------------------------------------------------- direct setup

    def add_conversation(self, metadata: Mapping[str, str] | None = None) -> str:
        """Create an empty conversation directly (no request is counted); returns its id."""
        return self._conversations.add(new_id("conv"), self.now(), dict(metadata or {})).id

    def add_thread(self, metadata: Mapping[str, str] | None = None) -> str:
        """Create an empty thread directly (no request is counted); returns its id."""
        return self._assistants.add_thread(new_id("thread"), self.now(), dict(metadata or {})).id

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
        return self._assistants.add_run(
            thread_id,
            status,
            age=age,
            metadata=metadata,
            assistant_id=assistant_id,
            expires_in=expires_in,
            completes_in=completes_in,
        )

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
        return self._responses.add_background(
            conversation_id, status, age=age, metadata=metadata, completes_in=completes_in
        )

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
        self._assistants.arm_requires_action(thread_id, function_name, arguments)

    def call_function_next_response(
        self,
        conversation_id: str | None = None,
        *,
        function_name: str = "fake_tool",
        arguments: str = "{}",
    ) -> None:
        """Make the next response created (on ``conversation_id``, or any if ``None``) answer
        with one ``function_call`` output item instead of a message.

        The item has a fresh ``call_id``; streamed, it comes as
        ``response.function_call_arguments.delta``/``.done`` events. The next response that
        sends a ``function_call_output`` item (and no user text) answers with a message built
        from that output, so one agent turn spans several responses. Each call arms one
        response.
        """
        self._responses.arm_function_call(conversation_id, function_name, arguments)

    # ---------------------------------------------------------------- faults

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
        return self._faults.add(
            method,
            path,
            status=status,
            count=count,
            apply_effect=apply_effect,
            timeout=timeout,
            body=body,
            retry_after=retry_after,
        )

    def stall(self, method: str, path: str) -> StalledReply:
        """Hold back the answer to the next request matching ``method`` and ``path`` (as in
        :meth:`inject`) until :meth:`StalledReply.release`.

        The request is served in full first (the run IS created), then ``served`` is set and
        the client waits for the answer: the window in which a cancelled caller (a client
        disconnect, a shutdown) never learns what it created. Call it inside the event loop.
        """
        return self._faults.add_stall(method, path)

    def clear_faults(self) -> None:
        """Forget every injected fault that has not fired yet (and release every stall)."""
        self._faults.clear()

    # ---------------------------------------------------------------- inspection

    def conversation_inputs(self, conversation_id: str) -> list[str]:
        """The user input texts accepted on a conversation, in the order they were appended.

        Every accepted ``responses.create``/``conversations.create``/``items.create`` adds its
        user message texts; refused requests add nothing.
        """
        conv = self._store.conversations.get(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        return list(conv.inputs)

    def thread_messages(self, thread_id: str) -> list[str]:
        """The user message texts added to a thread, in order (refused messages excluded)."""
        thread = self._store.threads.get(thread_id)
        if thread is None:
            raise KeyError(thread_id)
        return list(thread.user_texts)

    def response_chain(self, response_id: str) -> list[str]:
        """The user input texts along a ``previous_response_id`` chain, oldest first,
        ending with ``response_id``'s own input."""
        return self._responses.chain(response_id)

    def branches(self) -> dict[str, list[str]]:
        """``previous_response_id`` values that two or more responses continued from.

        Maps each such response id to the ids of the responses created from it, in creation
        order. Empty when every chain is linear (no turn was silently lost).
        """
        return self._responses.branches()

    def previous_response_id(self, response_id: str) -> str | None:
        """The ``previous_response_id`` a response was created with."""
        return self._store.responses[response_id].previous_response_id

    def run_status(self, run_id: str) -> str:
        """A run's status now (without a request)."""
        return self._store.runs[run_id].status_at(self.now())

    def response_status(self, response_id: str) -> str:
        """A response's status now (without a request)."""
        return self._store.responses[response_id].timeline.status_at(self.now())

    def active_run(self, thread_id: str) -> str | None:
        """The id of the thread's active run, if any."""
        run = self._assistants.active_run(self._store.threads[thread_id], self.now())
        return run.id if run else None

    def active_response(self, conversation_id: str) -> str | None:
        """The id of the response currently locking the conversation, if any."""
        conv = self._store.conversations[conversation_id]
        resp = self._conversations.busy_response(conv, self.now())
        return resp.id if resp else None
