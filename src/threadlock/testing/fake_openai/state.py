"""The fake's state: the statuses, the records of each API and the store that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from threadlock.testing.fake_openai.clock import Timeline
from threadlock.testing.fake_openai.errors import Json, not_found, not_found_with_id

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


class Settings(Protocol):
    """The settings the APIs read on every request (a test may change them between requests)."""

    response_duration: float
    background_duration: float
    run_duration: float
    queue_duration: float
    cancel_duration: float
    poll_after_ms: int
    latency: float
    base_url: str


@dataclass
class Entry:
    """One item of a conversation or thread: stored as is, or the output of a response/run."""

    item: Json | None = None
    source_id: str | None = None


@dataclass
class Conversation:
    id: str
    created: float
    metadata: dict[str, str]
    entries: list[Entry] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)


@dataclass
class Response:
    id: str
    seq: int
    created: float
    timeline: Timeline
    model: str
    background: bool
    conversation_id: str | None
    previous_response_id: str | None
    instructions: Any
    metadata: dict[str, str]
    input_texts: list[str]
    output_text: str
    output_item_id: str
    #: The ``function_call`` item answered instead of a message (a request with tools).
    tool_call: dict[str, Any] | None = None


@dataclass
class Thread:
    id: str
    created: float
    metadata: dict[str, str]
    entries: list[Entry] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    user_texts: list[str] = field(default_factory=list)
    pending_texts: list[str] = field(default_factory=list)


@dataclass
class Run:
    id: str
    seq: int
    thread_id: str
    assistant_id: str
    created: float
    expires: float
    timeline: Timeline
    model: str
    instructions: str
    tools: list[Any]
    metadata: dict[str, str]
    tool_call: Json | None
    output_message_id: str
    output_text: str

    def status_at(self, t: float) -> str:
        """The timeline's status, or ``expired`` for an active run past ``expires``."""
        status = self.timeline.status_at(min(t, self.expires))
        if status in ACTIVE_RUN_STATUSES and t >= self.expires:
            return "expired"
        return status


class Store:
    """Every object the fake holds, by id, and the lookups that answer 404 for unknown ids."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.responses: dict[str, Response] = {}
        self.assistants: dict[str, Json] = {}
        self.threads: dict[str, Thread] = {}
        self.runs: dict[str, Run] = {}

    def conversation(self, conversation_id: str) -> Conversation:
        conv = self.conversations.get(conversation_id)
        if conv is None:
            raise not_found_with_id("Conversation", conversation_id)
        return conv

    def response(self, response_id: str) -> Response:
        resp = self.responses.get(response_id)
        if resp is None:
            raise not_found_with_id("Response", response_id)
        return resp

    def thread(self, thread_id: str) -> Thread:
        thread = self.threads.get(thread_id)
        if thread is None:
            raise not_found("thread", thread_id)
        return thread

    def run(self, thread_id: str, run_id: str) -> Run:
        self.thread(thread_id)
        run = self.runs.get(run_id)
        if run is None or run.thread_id != thread_id:
            raise not_found("run", run_id)
        return run
