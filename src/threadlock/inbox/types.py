"""The value types of the inbox: :class:`Message`, :class:`Batch`, :class:`InboxFull`, the
strategy names, and how a payload is checked and stored."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

from threadlock._lease import Lease
from threadlock.errors import ThreadLockError

__all__ = [
    "STRATEGIES",
    "Batch",
    "DeadLetter",
    "InboxFull",
    "Message",
    "Payload",
    "Strategy",
    "decode_payload",
    "encode_payload",
]

#: What a message carries: text, bytes, or anything JSON can encode.
Payload: TypeAlias = "str | bytes | int | float | bool | list[object] | dict[str, object] | None"

#: How the owner of a key picks the next batch (see docs/inbox.md).
Strategy = Literal["queue", "coalesce", "debounce", "latest"]
#: The strategy names, in the order of the docs.
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class InboxFull(ThreadLockError):
    """A key already has ``max_pending`` messages waiting; the new one was not stored.

    Nothing already stored is dropped. Attributes: ``key``, ``max_pending``.
    """

    def __init__(self, key: str, max_pending: int) -> None:
        self.key = key
        self.max_pending = max_pending
        super().__init__(f"the inbox of {key!r} already holds {max_pending} pending messages")

    def __reduce__(self) -> tuple[type[InboxFull], tuple[str, int]]:
        return (type(self), (self.key, self.max_pending))


@dataclass(frozen=True, slots=True)
class Message:
    """One message of an inbox.

    Attributes:
        id: the caller's id (``turns(..., id=...)``), or a generated one; stable across
            redeliveries.
        payload: what was posted (``str``, ``bytes`` or a JSON value).
        posted_at: wall-clock epoch seconds of the post, as seen by the backend.
    """

    id: str
    payload: object
    posted_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that failed ``max_attempts`` times, kept for inspection.

    Attributes:
        message: the message.
        attempts: how many batches with it failed.
        died_at: wall-clock epoch seconds, as seen by the backend, of the move.
    """

    message: Message
    attempts: int
    died_at: float


@dataclass(slots=True, eq=False)
class Batch:
    """What one turn of the owner answers.

    Attributes:
        messages: the messages to answer, in arrival order.
        skipped: older messages the ``latest`` strategy acknowledges without answering.
        lease: the lease of the key, held and renewed while the loop body runs.
        attempt: 1 on the first delivery; n when some message of the batch already failed
            n - 1 times.
    """

    messages: list[Message]
    skipped: list[Message]
    lease: Lease
    attempt: int = 1
    _check: Callable[[], Awaitable[bool]] | None = field(default=None, repr=False)

    async def superseded(self) -> bool:
        """``True`` if messages newer than this batch arrived since it was taken.

        They are not in this batch; the next batch of this loop holds them.
        """
        if self._check is None:
            return False
        return await self._check()


def _json_safe(value: object, path: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be finite JSON, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _json_safe(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} keys must be str, not {type(k).__name__}")
            _json_safe(item, f"{path}[{k!r}]")
        return
    raise TypeError(f"{path} must be str, bytes or JSON-able, not {type(value).__name__}")


def encode_payload(payload: object, name: str = "message") -> str:
    """The stored form of ``payload`` (a tag letter and text); bad input raises naming ``name``."""
    if isinstance(payload, str):
        try:
            payload.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} must be encodable as UTF-8") from exc
        return "s" + payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return "b" + base64.b64encode(bytes(payload)).decode("ascii")
    _json_safe(payload, name)
    return "j" + json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_payload(stored: str) -> object:
    """The inverse of :func:`encode_payload`."""
    tag, body = stored[:1], stored[1:]
    if tag == "s":
        return body
    if tag == "b":
        return base64.b64decode(body)
    if tag == "j":
        return json.loads(body)
    raise ValueError(f"not a stored inbox payload: tag {tag!r}")
