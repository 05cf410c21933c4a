"""The Conversations API, and the conversation lock the Responses API shares.

A conversation is locked while one of its responses is ``queued`` or ``in_progress`` (a
foreground request still in flight, or a background response not finished): adding items to
it, or creating a response on it, then fails with HTTP 400 ``conversation_locked``. The lock is
checked in one place, :meth:`Conversations.check_unlocked`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from threadlock.testing.fake_openai.clock import Clock
from threadlock.testing.fake_openai.errors import (
    APIError,
    Json,
    conversation_locked,
    invalid_type,
    missing,
    not_found_with_id,
)
from threadlock.testing.fake_openai.state import (
    ACTIVE_RESPONSE_STATUSES,
    Conversation,
    Entry,
    Response,
    Store,
)
from threadlock.testing.fake_openai.wire import (
    Reply,
    Request,
    Route,
    list_page,
    new_id,
    page,
    parse_metadata,
    text_of,
)


def input_items(value: Any) -> list[Json]:
    """Normalise a Responses ``input`` (or a conversation's ``items``) into items without ids."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid_type("input", "a string or an array")
    items: list[Json] = []
    for raw in value:
        if not isinstance(raw, Mapping):
            raise APIError(400, "Invalid type for 'input[]': expected an object.", param="input")
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


def user_texts(items: list[Json]) -> list[str]:
    """The texts of the user messages among ``items``."""
    return [
        text_of(item.get("content"))
        for item in items
        if item.get("type") == "message" and item.get("role") == "user"
    ]


def output_message(item_id: str, text: str) -> Json:
    """The assistant message a completed response adds to its conversation."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def response_output(resp: Response) -> list[Json]:
    """A completed response's output items: its function call, or its assistant message."""
    if resp.tool_call is not None:
        return [dict(resp.tool_call)]
    return [output_message(resp.output_item_id, resp.output_text)]


def tool_outputs(items: list[Json]) -> list[str]:
    """The outputs of the ``function_call_output`` items among ``items``."""
    return [
        str(item.get("output", "")) for item in items if item.get("type") == "function_call_output"
    ]


def first_function_tool(tools: Any) -> str | None:
    """The name of the first function tool of a request's ``tools``, if any."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, Mapping) and tool.get("type") == "function":
            name = tool.get("name")
            if isinstance(name, str) and name:
                return name
    return None


class Conversations:
    """``/conversations`` and its items; the lock and the history of each conversation."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def routes(self) -> list[Route]:
        return [
            ("POST", "/conversations", self._h_create),
            ("GET", "/conversations/{conversation_id}", self._h_get),
            ("POST", "/conversations/{conversation_id}", self._h_update),
            ("DELETE", "/conversations/{conversation_id}", self._h_delete),
            ("GET", "/conversations/{conversation_id}/items", self._h_list_items),
            ("POST", "/conversations/{conversation_id}/items", self._h_create_items),
            ("GET", "/conversations/{conversation_id}/items/{item_id}", self._h_get_item),
        ]

    # ---------------------------------------------------------------- state

    def add(self, conversation_id: str, created: float, metadata: dict[str, str]) -> Conversation:
        conv = Conversation(conversation_id, created, metadata)
        self._store.conversations[conv.id] = conv
        return conv

    def busy_response(self, conv: Conversation, t: float) -> Response | None:
        """The response locking ``conv`` at ``t``, if any."""
        for response_id in conv.response_ids:
            resp = self._store.responses[response_id]
            if resp.timeline.status_at(t) in ACTIVE_RESPONSE_STATUSES:
                return resp
        return None

    def check_unlocked(self, conv: Conversation, t: float) -> None:
        """Raise OpenAI's ``conversation_locked`` error if a response is being generated."""
        if self.busy_response(conv, t) is not None:
            raise conversation_locked()

    def append_items(self, conv: Conversation, items: list[Json]) -> list[Json]:
        """Store ``items`` (given ids) at the end of ``conv``; returns them as stored."""
        stored: list[Json] = []
        for raw in items:
            item = {"id": new_id("msg"), **raw}
            conv.entries.append(Entry(item=item))
            conv.inputs.extend(user_texts([item]))
            stored.append(item)
        return stored

    def attach_response(self, conv: Conversation, resp: Response) -> None:
        """Make ``resp`` lock ``conv`` while active, and add its output once completed."""
        conv.response_ids.append(resp.id)
        conv.entries.append(Entry(source_id=resp.id))

    def detach_response(self, resp: Response) -> None:
        """Take a deleted ``resp`` out of its conversation, if that still exists."""
        if resp.conversation_id is None:
            return
        conv = self._store.conversations.get(resp.conversation_id)
        if conv is not None:
            conv.response_ids.remove(resp.id)
            conv.entries = [e for e in conv.entries if e.source_id != resp.id]

    def visible_items(self, conv: Conversation, t: float) -> list[Json]:
        items: list[Json] = []
        for entry in conv.entries:
            if entry.item is not None:
                items.append(entry.item)
            elif entry.source_id is not None:
                resp = self._store.responses[entry.source_id]
                if resp.timeline.status_at(t) == "completed":
                    items.extend(response_output(resp))
        return items

    def _json(self, conv: Conversation) -> Json:
        return {
            "id": conv.id,
            "object": "conversation",
            "created_at": self._clock.epoch(conv.created),
            "metadata": dict(conv.metadata),
        }

    # ---------------------------------------------------------------- handlers

    async def _h_create(self, req: Request) -> Reply:
        metadata = parse_metadata(req.body.get("metadata"))
        items = input_items(req.body.get("items"))
        conv = self.add(new_id("conv"), self._clock.now(), metadata)
        self.append_items(conv, items)
        return Reply(200, self._json(conv))

    async def _h_get(self, req: Request) -> Reply:
        return Reply(200, self._json(self._store.conversation(req.params["conversation_id"])))

    async def _h_update(self, req: Request) -> Reply:
        conv = self._store.conversation(req.params["conversation_id"])
        if "metadata" not in req.body:
            raise missing("metadata")
        conv.metadata = parse_metadata(req.body["metadata"])
        return Reply(200, self._json(conv))

    async def _h_delete(self, req: Request) -> Reply:
        conv = self._store.conversation(req.params["conversation_id"])
        del self._store.conversations[conv.id]
        return Reply(200, {"id": conv.id, "object": "conversation.deleted", "deleted": True})

    async def _h_list_items(self, req: Request) -> Reply:
        conv = self._store.conversation(req.params["conversation_id"])
        return Reply(200, page(self.visible_items(conv, self._clock.now()), req.query))

    async def _h_create_items(self, req: Request) -> Reply:
        conv = self._store.conversation(req.params["conversation_id"])
        if "items" not in req.body:
            raise missing("items")
        items = input_items(req.body["items"])
        self.check_unlocked(conv, self._clock.now())
        return Reply(200, list_page(self.append_items(conv, items)))

    async def _h_get_item(self, req: Request) -> Reply:
        conv = self._store.conversation(req.params["conversation_id"])
        item_id = req.params["item_id"]
        for item in self.visible_items(conv, self._clock.now()):
            if item["id"] == item_id:
                return Reply(200, item)
        raise not_found_with_id("Item", item_id)
