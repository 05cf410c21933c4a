"""The Assistants API (beta): assistants, threads, their messages and runs.

A thread has at most one active run (``queued``, ``in_progress``, ``requires_action``,
``cancelling``): adding a message or creating a run while one is active fails with HTTP 400 and
OpenAI's texts, and cancelling a terminal run fails with ``Cannot cancel run with status
'<status>'.``. A run is ``queued`` for ``queue_duration``, then ``in_progress``, then
``completed`` (or ``requires_action`` when armed by :meth:`Assistants.arm_requires_action`)
``run_duration`` after creation; an active run past ``expires_at`` is ``expired``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from threadlock.testing.fake_openai.clock import Clock, Timeline, check_duration
from threadlock.testing.fake_openai.errors import (
    APIError,
    Json,
    invalid_type,
    invalid_value,
    message_while_run_active,
    missing,
    not_found,
    run_while_run_active,
    streaming_unsupported,
)
from threadlock.testing.fake_openai.state import (
    ACTIVE_RUN_STATUSES,
    RUN_EXPIRY_SECONDS,
    TERMINAL_RUN_STATUSES,
    Entry,
    Run,
    Settings,
    Store,
    Thread,
)
from threadlock.testing.fake_openai.wire import (
    Reply,
    Request,
    Route,
    new_id,
    page,
    parse_metadata,
    text_of,
)


def message_content(content: Any) -> list[Json]:
    """A thread message's ``content`` parts, from a string or a list of parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    if not isinstance(content, list):
        raise missing("content")
    parts: list[Json] = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append({"type": "text", "text": {"value": text_of([part]), "annotations": []}})
        elif isinstance(part, Mapping):
            parts.append(dict(part))
    return parts


def tool_call(function_name: str, arguments: str) -> Json:
    return {
        "id": new_id("call"),
        "type": "function",
        "function": {"name": function_name, "arguments": arguments},
    }


class Assistants:
    """``/assistants`` and ``/threads``: threads, messages, runs and the one-active-run rule."""

    def __init__(
        self, store: Store, clock: Clock, settings: Settings, reply: Callable[[str], str]
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._reply = reply
        self._require_action: list[tuple[str | None, str, str]] = []

    def routes(self) -> list[Route]:
        return [
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

    # ---------------------------------------------------------------- direct setup

    def add_thread(self, thread_id: str, created: float, metadata: dict[str, str]) -> Thread:
        thread = Thread(thread_id, created, metadata)
        self._store.threads[thread.id] = thread
        return thread

    def add_run(
        self,
        thread_id: str,
        status: str,
        *,
        age: float,
        metadata: Mapping[str, str] | None,
        assistant_id: str,
        expires_in: float | None,
        completes_in: float | None,
    ) -> str:
        if status not in ACTIVE_RUN_STATUSES | TERMINAL_RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        age = check_duration("age", age)
        thread = self._store.threads.get(thread_id)
        if thread is None:
            thread = self.add_thread(thread_id, self._clock.now() - age, {})
        now = self._clock.now()
        created = now - age
        if expires_in is not None:
            expires = now + check_duration("expires_in", expires_in)
        else:
            expires = created + RUN_EXPIRY_SECONDS
            if expires <= now:
                expires = now + RUN_EXPIRY_SECONDS
        steps = [(created, status)]
        if status == "cancelling":
            steps.append((now + self._settings.cancel_duration, "cancelled"))
        elif completes_in is not None and status in ACTIVE_RUN_STATUSES:
            steps.append((now + check_duration("completes_in", completes_in), "completed"))
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
            run.tool_call = tool_call("fake_tool", "{}")
        return run.id

    def arm_requires_action(
        self, thread_id: str | None, function_name: str, arguments: str
    ) -> None:
        self._require_action.append((thread_id, function_name, arguments))

    def active_run(self, thread: Thread, t: float) -> Run | None:
        for run_id in reversed(thread.run_ids):
            run = self._store.runs[run_id]
            if run.status_at(t) in ACTIVE_RUN_STATUSES:
                return run
        return None

    # ---------------------------------------------------------------- threads and messages

    def _thread_json(self, thread: Thread) -> Json:
        return {
            "id": thread.id,
            "object": "thread",
            "created_at": self._clock.epoch(thread.created),
            "metadata": dict(thread.metadata),
            "tool_resources": None,
        }

    def _create_thread(self, body: Mapping[str, Any]) -> Thread:
        metadata = parse_metadata(body.get("metadata"))
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise invalid_type("messages", "an array")
        thread = Thread(new_id("thread"), self._clock.now(), metadata)
        for message in messages:
            if not isinstance(message, Mapping):
                raise APIError(400, "Invalid 'messages[]': expected an object.", param="messages")
            self._add_message(thread, message)
        self._store.threads[thread.id] = thread
        return thread

    def _message_json(
        self,
        thread: Thread,
        message_id: str,
        stamp: int,
        *,
        role: str,
        content: list[Json],
        assistant_id: str | None = None,
        run_id: str | None = None,
        attachments: list[Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Json:
        return {
            "id": message_id,
            "object": "thread.message",
            "created_at": stamp,
            "thread_id": thread.id,
            "role": role,
            "content": content,
            "assistant_id": assistant_id,
            "run_id": run_id,
            "attachments": attachments or [],
            "metadata": metadata or {},
            "status": "completed",
            "completed_at": stamp,
            "incomplete_at": None,
            "incomplete_details": None,
        }

    def _add_message(self, thread: Thread, body: Mapping[str, Any]) -> Json:
        role = body.get("role")
        if role not in ("user", "assistant"):
            raise invalid_value("role", role, ("user", "assistant"))
        if "content" not in body:
            raise missing("content")
        content = message_content(body["content"])
        message = self._message_json(
            thread,
            new_id("msg"),
            self._clock.epoch(self._clock.now()),
            role=role,
            content=content,
            attachments=list(body.get("attachments") or []),
            metadata=parse_metadata(body.get("metadata")),
        )
        thread.entries.append(Entry(item=message))
        if role == "user":
            text = text_of(content)
            thread.user_texts.append(text)
            thread.pending_texts.append(text)
        return message

    def _messages(self, thread: Thread, t: float) -> list[Json]:
        """The thread's messages, with the answers of the runs completed by ``t``."""
        messages: list[Json] = []
        for entry in thread.entries:
            if entry.item is not None:
                messages.append(entry.item)
            elif entry.source_id is not None:
                run = self._store.runs[entry.source_id]
                if run.status_at(t) != "completed":
                    continue
                done = run.timeline.first_time("completed", t)
                messages.append(
                    self._message_json(
                        thread,
                        run.output_message_id,
                        self._clock.epoch(done if done is not None else t),
                        role="assistant",
                        content=message_content(run.output_text),
                        assistant_id=run.assistant_id,
                        run_id=run.id,
                    )
                )
        return messages

    # ---------------------------------------------------------------- runs

    def _new_run(
        self,
        thread: Thread,
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
    ) -> Run:
        run = Run(
            id=new_id("run"),
            seq=self._clock.next_seq(),
            thread_id=thread.id,
            assistant_id=assistant_id,
            created=created,
            expires=expires,
            timeline=Timeline(steps),
            model=model,
            instructions=instructions,
            tools=tools,
            metadata=metadata,
            tool_call=None,
            output_message_id=new_id("msg"),
            output_text=self._reply(input_text),
        )
        self._store.runs[run.id] = run
        thread.run_ids.append(run.id)
        thread.entries.append(Entry(source_id=run.id))
        return run

    def _start_run(self, thread: Thread, body: Mapping[str, Any]) -> Run:
        if body.get("stream"):
            raise streaming_unsupported()
        now = self._clock.now()
        active = self.active_run(thread, now)
        if active is not None:
            raise run_while_run_active(thread.id, active.id)
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str) or not assistant_id:
            raise missing("assistant_id")
        metadata = parse_metadata(body.get("metadata"))
        extra = body.get("additional_messages") or []
        if not isinstance(extra, list):
            raise invalid_type("additional_messages", "an array")
        for message in extra:
            if not isinstance(message, Mapping):
                raise APIError(400, "Invalid 'additional_messages[]'.", param="additional_messages")
            self._add_message(thread, message)

        armed = next((a for a in self._require_action if a[0] is None or a[0] == thread.id), None)
        if armed is not None:
            self._require_action.remove(armed)
        settings = self._settings
        start = now + min(settings.queue_duration, settings.run_duration)
        end_status = "requires_action" if armed else "completed"
        input_text = "\n".join(thread.pending_texts)
        thread.pending_texts.clear()
        assistant = self._store.assistants.get(assistant_id, {})
        run = self._new_run(
            thread,
            assistant_id=assistant_id,
            created=now,
            expires=now + RUN_EXPIRY_SECONDS,
            steps=[
                (now, "queued"),
                (start, "in_progress"),
                (now + settings.run_duration, end_status),
            ],
            metadata=metadata,
            model=str(body.get("model") or assistant.get("model") or "gpt-4o"),
            instructions=str(body.get("instructions") or assistant.get("instructions") or ""),
            tools=list(body.get("tools") or assistant.get("tools") or []),
            input_text=input_text,
        )
        if armed is not None:
            run.tool_call = tool_call(armed[1], armed[2])
        return run

    def _run_json(self, run: Run, t: float) -> Json:
        status = run.status_at(t)
        cut = min(t, run.expires)
        epoch = self._clock.epoch

        def stamp(step: str) -> int | None:
            at = run.timeline.first_time(step, cut)
            return epoch(at) if at is not None else None

        terminal = status in TERMINAL_RUN_STATUSES
        tokens = len(run.output_text.split())
        return {
            "id": run.id,
            "object": "thread.run",
            "created_at": epoch(run.created),
            "assistant_id": run.assistant_id,
            "thread_id": run.thread_id,
            "status": status,
            "started_at": stamp("in_progress"),
            "expires_at": (
                epoch(run.expires) if status in ACTIVE_RUN_STATUSES | {"expired"} else None
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

    def _run_reply(self, run: Run) -> Reply:
        return Reply(
            200,
            self._run_json(run, self._clock.now()),
            {"openai-poll-after-ms": str(self._settings.poll_after_ms)},
        )

    # ---------------------------------------------------------------- handlers

    async def _h_create_assistant(self, req: Request) -> Reply:
        model = req.body.get("model")
        if not isinstance(model, str) or not model:
            raise missing("model")
        assistant: Json = {
            "id": new_id("asst"),
            "object": "assistant",
            "created_at": self._clock.epoch(self._clock.now()),
            "name": req.body.get("name"),
            "description": req.body.get("description"),
            "model": model,
            "instructions": req.body.get("instructions"),
            "tools": list(req.body.get("tools") or []),
            "metadata": parse_metadata(req.body.get("metadata")),
            "temperature": 1.0,
            "top_p": 1.0,
            "response_format": "auto",
            "tool_resources": None,
        }
        self._store.assistants[assistant["id"]] = assistant
        return Reply(200, assistant)

    async def _h_get_assistant(self, req: Request) -> Reply:
        assistant = self._store.assistants.get(req.params["assistant_id"])
        if assistant is None:
            raise not_found("assistant", req.params["assistant_id"])
        return Reply(200, assistant)

    async def _h_create_thread(self, req: Request) -> Reply:
        return Reply(200, self._thread_json(self._create_thread(req.body)))

    async def _h_create_thread_and_run(self, req: Request) -> Reply:
        thread_body = req.body.get("thread") or {}
        if not isinstance(thread_body, Mapping):
            raise invalid_type("thread", "an object")
        if not isinstance(req.body.get("assistant_id"), str):
            raise missing("assistant_id")
        thread = self._create_thread(thread_body)
        return self._run_reply(self._start_run(thread, req.body))

    async def _h_get_thread(self, req: Request) -> Reply:
        return Reply(200, self._thread_json(self._store.thread(req.params["thread_id"])))

    async def _h_update_thread(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        if "metadata" in req.body:
            thread.metadata = parse_metadata(req.body["metadata"])
        return Reply(200, self._thread_json(thread))

    async def _h_delete_thread(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        del self._store.threads[thread.id]
        return Reply(200, {"id": thread.id, "object": "thread.deleted", "deleted": True})

    async def _h_create_message(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        active = self.active_run(thread, self._clock.now())
        if active is not None:
            raise message_while_run_active(thread.id, active.id)
        return Reply(200, self._add_message(thread, req.body))

    async def _h_list_messages(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        messages = self._messages(thread, self._clock.now())
        run_id = req.query.get("run_id")
        if run_id is not None:
            messages = [m for m in messages if m.get("run_id") == run_id]
        return Reply(200, page(messages, req.query))

    async def _h_get_message(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        message_id = req.params["message_id"]
        for message in self._messages(thread, self._clock.now()):
            if message["id"] == message_id:
                return Reply(200, message)
        raise not_found("message", message_id)

    async def _h_create_run(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        return self._run_reply(self._start_run(thread, req.body))

    async def _h_list_runs(self, req: Request) -> Reply:
        thread = self._store.thread(req.params["thread_id"])
        now = self._clock.now()
        runs = sorted(
            (self._store.runs[r] for r in thread.run_ids), key=lambda r: (r.created, r.seq)
        )
        return Reply(200, page([self._run_json(run, now) for run in runs], req.query))

    async def _h_get_run(self, req: Request) -> Reply:
        return self._run_reply(self._store.run(req.params["thread_id"], req.params["run_id"]))

    async def _h_update_run(self, req: Request) -> Reply:
        run = self._store.run(req.params["thread_id"], req.params["run_id"])
        if "metadata" in req.body:
            run.metadata = parse_metadata(req.body["metadata"])
        return self._run_reply(run)

    async def _h_cancel_run(self, req: Request) -> Reply:
        run = self._store.run(req.params["thread_id"], req.params["run_id"])
        now = self._clock.now()
        status = run.status_at(now)
        if status in TERMINAL_RUN_STATUSES or status == "cancelling":
            raise APIError(400, f"Cannot cancel run with status '{status}'.")
        run.timeline.replace_future(
            now, (now, "cancelling"), (now + self._settings.cancel_duration, "cancelled")
        )
        return self._run_reply(run)

    async def _h_submit_tool_outputs(self, req: Request) -> Reply:
        run = self._store.run(req.params["thread_id"], req.params["run_id"])
        now = self._clock.now()
        status = run.status_at(now)
        if status != "requires_action":
            raise APIError(400, f'Runs in status "{status}" do not accept tool outputs.')
        outputs = req.body.get("tool_outputs")
        if not isinstance(outputs, list):
            raise missing("tool_outputs")
        given = sorted(str(o.get("tool_call_id")) for o in outputs if isinstance(o, Mapping))
        expected = [run.tool_call["id"]] if run.tool_call else []
        if not set(expected) <= set(given):
            raise APIError(
                400,
                f"Expected tool outputs for call_ids {expected}, got {given}",
                param="tool_outputs",
            )
        run.timeline.replace_future(
            now, (now, "in_progress"), (now + self._settings.run_duration, "completed")
        )
        return self._run_reply(run)

    async def _h_list_steps(self, req: Request) -> Reply:
        self._store.run(req.params["thread_id"], req.params["run_id"])
        return Reply(200, page([], req.query))
