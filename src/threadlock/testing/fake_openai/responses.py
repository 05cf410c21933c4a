"""The Responses API: ``responses.create`` on a conversation or a ``previous_response_id`` chain.

A foreground response is ``in_progress`` for ``response_duration`` while its HTTP request stays
in flight; a background one (``background=True``) is answered at once, ``queued`` for
``queue_duration``, then ``in_progress`` until ``background_duration`` after creation. Either
way its conversation is locked until it completes (see :mod:`.conversations`).

``responses.create`` runs in three steps: :meth:`Responses._plan` checks the request,
:meth:`Responses._start` records the response, :meth:`Responses._answer` sends it. Only the
answer depends on how the client reads it: JSON, or with ``stream=true`` the server-sent events
of :mod:`.streaming`, during which the conversation stays locked.

A response answers with an assistant message, or with one ``function_call`` output item: when
armed by :meth:`Responses.arm_function_call`, or when the request has a function tool and its
input holds no ``function_call_output`` yet (then it calls the first function tool, arguments
``{}``). The next turn sends its ``function_call_output`` and gets a message built from it, so a
tool-calling agent's turn spans several responses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from threadlock.testing.fake_openai.clock import Clock, Timeline, check_duration
from threadlock.testing.fake_openai.conversations import (
    Conversations,
    first_function_tool,
    input_items,
    response_output,
    tool_outputs,
    user_texts,
)
from threadlock.testing.fake_openai.errors import (
    APIError,
    Json,
    invalid_type,
    missing,
    streaming_unsupported,
)
from threadlock.testing.fake_openai.state import (
    ACTIVE_RESPONSE_STATUSES,
    TERMINAL_RESPONSE_STATUSES,
    Conversation,
    Response,
    Settings,
    Store,
)
from threadlock.testing.fake_openai.streaming import EventStream
from threadlock.testing.fake_openai.wire import Reply, Request, Route, new_id, parse_metadata


@dataclass
class _Plan:
    """A checked ``responses.create`` request."""

    now: float
    model: str
    conversation: Conversation | None
    previous_response_id: str | None
    background: bool
    stream: bool
    instructions: Any
    metadata: dict[str, str]
    items: list[Json]
    tool: str | None = None  # the function tool to call, when the request has one


class Responses:
    """``/responses``: create, retrieve, delete and cancel; the chains they form."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        conversations: Conversations,
        reply: Callable[[str], str],
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._conversations = conversations
        self._reply = reply
        # (conversation id or None for any, function name, arguments), oldest first
        self._armed: list[tuple[str | None, str, str]] = []

    def routes(self) -> list[Route]:
        return [
            ("POST", "/responses", self._h_create),
            ("GET", "/responses/{response_id}", self._h_get),
            ("DELETE", "/responses/{response_id}", self._h_delete),
            ("POST", "/responses/{response_id}/cancel", self._h_cancel),
        ]

    # ---------------------------------------------------------------- direct setup

    def add_background(
        self,
        conversation_id: str,
        status: str,
        *,
        age: float,
        metadata: Mapping[str, str] | None,
        completes_in: float | None,
    ) -> str:
        if status not in ACTIVE_RESPONSE_STATUSES | TERMINAL_RESPONSE_STATUSES:
            raise ValueError(f"unknown response status {status!r}")
        age = check_duration("age", age)
        now = self._clock.now()
        conv = self._store.conversations.get(conversation_id)
        if conv is None:
            conv = self._conversations.add(conversation_id, now - age, {})
        steps = [(now - age, status)]
        if completes_in is not None and status in ACTIVE_RESPONSE_STATUSES:
            steps.append((now + check_duration("completes_in", completes_in), "completed"))
        resp = self._new_response(
            created=now - age,
            steps=steps,
            model="gpt-4o",
            background=True,
            conversation=conv,
            previous_response_id=None,
            instructions=None,
            metadata=dict(metadata or {}),
            input_texts=[],
        )
        self._conversations.attach_response(conv, resp)
        return resp.id

    def arm_function_call(self, conversation_id: str | None, name: str, arguments: str) -> None:
        """Make the next response (on ``conversation_id``, or any) call function ``name``."""
        self._armed.append((conversation_id, name, arguments))

    def _function_call(self, plan: _Plan) -> Json | None:
        """The function call this response answers with: an armed one, else the request's
        first function tool (when its input carries no tool output yet), else none."""
        conversation_id = plan.conversation.id if plan.conversation else None
        call: tuple[str, str] | None = None
        for index, (target, name, arguments) in enumerate(self._armed):
            if target is None or target == conversation_id:
                del self._armed[index]
                call = (name, arguments)
                break
        if call is None and plan.tool is not None:
            call = (plan.tool, "{}")
        if call is None:
            return None
        return {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "completed",
            "call_id": new_id("call"),
            "name": call[0],
            "arguments": call[1],
        }

    # ---------------------------------------------------------------- inspection

    def chain(self, response_id: str) -> list[str]:
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None and current not in seen:
            seen.add(current)
            resp = self._store.responses.get(current)
            if resp is None:
                raise KeyError(current)
            chain[:0] = resp.input_texts
            current = resp.previous_response_id
        return chain

    def branches(self) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {}
        for resp in sorted(self._store.responses.values(), key=lambda r: r.seq):
            if resp.previous_response_id is not None:
                children.setdefault(resp.previous_response_id, []).append(resp.id)
        return {parent: ids for parent, ids in children.items() if len(ids) > 1}

    # ---------------------------------------------------------------- create

    async def _h_create(self, req: Request) -> Reply:
        plan = self._plan(req.body)
        resp, done_at = self._start(plan)
        return await self._answer(req, resp, done_at)

    def _plan(self, body: Json) -> _Plan:
        """Check a create request in OpenAI's order; nothing is recorded yet."""
        stream = bool(body.get("stream"))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise missing("model")
        conversation_id = body.get("conversation")
        if isinstance(conversation_id, Mapping):
            conversation_id = conversation_id.get("id")
        if conversation_id is not None and not isinstance(conversation_id, str):
            raise invalid_type("conversation", "a string")
        previous = body.get("previous_response_id")
        if conversation_id is not None and previous is not None:
            raise APIError(
                400,
                "Mutually exclusive parameters: Ensure you are only providing one of: "
                "'previous_response_id' or 'conversation'.",
                param="conversation",
            )
        background = bool(body.get("background"))
        if background and body.get("store") is False:
            raise APIError(400, "Background mode requires 'store' to be true.", param="store")
        if background and stream:
            raise streaming_unsupported("background streaming (stream=true, background=true)")
        metadata = parse_metadata(body.get("metadata"))
        items = input_items(body.get("input"))
        now = self._clock.now()
        conv: Conversation | None = None
        if conversation_id is not None:
            conv = self._store.conversation(conversation_id)
            self._conversations.check_unlocked(conv, now)
        if previous is not None and previous not in self._store.responses:
            raise APIError(
                400,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        return _Plan(
            now=now,
            model=model,
            conversation=conv,
            previous_response_id=previous,
            background=background,
            stream=stream,
            instructions=body.get("instructions"),
            metadata=metadata,
            items=items,
            tool=first_function_tool(body.get("tools")) if not tool_outputs(items) else None,
        )

    def _start(self, plan: _Plan) -> tuple[Response, float]:
        """Record the response and its input; returns it and when it completes."""
        now = plan.now
        settings = self._settings
        if plan.background:
            start = now + min(settings.queue_duration, settings.background_duration)
            steps = [(now, "queued"), (start, "in_progress")]
            end = now + settings.background_duration
        else:
            steps = [(now, "in_progress")]
            end = now + settings.response_duration
        if not plan.stream:  # a stream completes when its last event is read
            steps.append((end, "completed"))
        resp = self._new_response(
            created=now,
            steps=steps,
            model=plan.model,
            background=plan.background,
            conversation=plan.conversation,
            previous_response_id=plan.previous_response_id,
            instructions=plan.instructions,
            metadata=plan.metadata,
            input_texts=user_texts(plan.items),
            reply_to=user_texts(plan.items) or tool_outputs(plan.items),
            tool_call=self._function_call(plan),
            stream=plan.stream,
        )
        if plan.conversation is not None:
            self._conversations.append_items(plan.conversation, plan.items)
            self._conversations.attach_response(plan.conversation, resp)
        return resp, end

    async def _answer(self, req: Request, resp: Response, done_at: float) -> Reply:
        """A background response answers at once, a stream as it goes, a foreground one when
        it is done."""
        if resp.stream:
            events = EventStream(
                resp,
                self._clock,
                self._settings.response_duration,
                req.read_timeout,
                self._json,
                response_output(resp),
            )
            return Reply(200, {}, {"content-type": "text/event-stream"}, stream=events)
        if not resp.background:
            await self._clock.wait_until(done_at, req.read_timeout)
        return Reply(200, self._json(resp, self._clock.now()))

    def _new_response(
        self,
        *,
        created: float,
        steps: list[tuple[float, str]],
        model: str,
        background: bool,
        conversation: Conversation | None,
        previous_response_id: str | None,
        instructions: Any,
        metadata: dict[str, str],
        input_texts: list[str],
        reply_to: list[str] | None = None,
        tool_call: Json | None = None,
        stream: bool = False,
    ) -> Response:
        resp = Response(
            id=new_id("resp"),
            seq=self._clock.next_seq(),
            created=created,
            timeline=Timeline(steps),
            model=model,
            background=background,
            conversation_id=conversation.id if conversation else None,
            previous_response_id=previous_response_id,
            instructions=instructions,
            metadata=metadata,
            input_texts=input_texts,
            output_text="" if tool_call else self._reply("\n".join(reply_to or input_texts)),
            output_item_id=new_id("msg"),
            tool_call=tool_call,
            stream=stream,
        )
        self._store.responses[resp.id] = resp
        return resp

    # ---------------------------------------------------------------- the other endpoints

    async def _h_get(self, req: Request) -> Reply:
        resp = self._store.response(req.params["response_id"])
        return Reply(200, self._json(resp, self._clock.now()))

    async def _h_delete(self, req: Request) -> Reply:
        resp = self._store.response(req.params["response_id"])
        del self._store.responses[resp.id]
        self._conversations.detach_response(resp)
        return Reply(200, {"id": resp.id, "object": "response", "deleted": True})

    async def _h_cancel(self, req: Request) -> Reply:
        resp = self._store.response(req.params["response_id"])
        if not resp.background:
            raise APIError(400, "Cannot cancel a synchronous response.")
        now = self._clock.now()
        if resp.timeline.status_at(now) in ACTIVE_RESPONSE_STATUSES:
            resp.timeline.replace_future(now, (now, "cancelled"))
        return Reply(200, self._json(resp, now))

    def _json(self, resp: Response, t: float) -> Json:
        status = resp.timeline.status_at(t)
        completed = resp.timeline.first_time("completed", t) if status == "completed" else None
        words = sum(len(text.split()) for text in resp.input_texts)
        out_words = len(resp.output_text.split())
        return {
            "id": resp.id,
            "object": "response",
            "created_at": self._clock.epoch(resp.created),
            "completed_at": self._clock.epoch(completed) if completed is not None else None,
            "status": status,
            "background": resp.background,
            "model": resp.model,
            "instructions": resp.instructions,
            "metadata": dict(resp.metadata),
            "conversation": {"id": resp.conversation_id} if resp.conversation_id else None,
            "previous_response_id": resp.previous_response_id,
            "output": response_output(resp) if status == "completed" else [],
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
