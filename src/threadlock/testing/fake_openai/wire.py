"""What a request and an answer look like inside the fake, and the parsing all APIs share.

Every API module exposes ``routes()``: ``(method, template, handler)`` rows whose handlers take
a :class:`Request` (its JSON body already parsed) and return a :class:`Reply`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from threadlock.testing.fake_openai.errors import APIError, Json, invalid_type, invalid_value

if TYPE_CHECKING:
    from threadlock.testing.fake_openai.streaming import EventStream

MAX_LIST_LIMIT: Final = 100


@dataclass
class Request:
    method: str
    path: str
    template: str
    params: dict[str, str]
    query: dict[str, str]
    content: bytes
    read_timeout: float | None
    body: Json = field(default_factory=dict)


@dataclass
class Reply:
    """An answer: a JSON ``body``, or with ``stream`` set, server-sent events."""

    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)
    stream: EventStream | None = None


Handler = Callable[[Request], Awaitable[Reply]]
Route = tuple[str, str, Handler]


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id such as ``conv_<24 hex digits>``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def parse_body(content: bytes) -> Json:
    if not content:
        return {}
    try:
        body = json.loads(content)
    except ValueError:
        raise APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
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


def parse_metadata(value: Any) -> dict[str, str]:
    """A request's ``metadata``, checked against OpenAI's limits."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type("metadata", "an object")
    if len(value) > 16:
        raise APIError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(value)} properties instead.",
            param="metadata",
        )
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': keys must be at most 64 characters and values "
                "strings of at most 512 characters.",
                param=f"metadata.{key}",
            )
    return dict(value)


def list_page(items: list[Json], *, has_more: bool = False) -> Json:
    """A ``{"object": "list", ...}`` body holding ``items``."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def page(items: list[Json], query: Mapping[str, str], *, default_order: str = "desc") -> Json:
    """Cursor pagination over ``items`` (given oldest first)."""
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise invalid_value("order", order, ("asc", "desc"))
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise APIError(400, "Invalid 'limit': expected an integer.", param="limit") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise APIError(
            400,
            f"Invalid 'limit': expected a value between 1 and {MAX_LIST_LIMIT}, got {limit}.",
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
    return list_page(seq[:limit], has_more=len(seq) > limit)
