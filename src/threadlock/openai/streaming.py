"""Streams inside a guarded turn: ``turn.stream(...)`` and ``turn.create(stream=True)``.

A :class:`GuardedStream` wraps the SDK's stream (an ``AsyncStream`` of events from
``responses.create(stream=True)``, or the ``AsyncResponseStream`` of ``responses.stream(...)``)
and ties it to the turn that opened it:

- it can be read only while the turn's ``async with`` block is open, so it never runs outside
  the lease: reading it afterwards raises :class:`StreamOutsideTurn`;
- the guard closes every stream still open when the block exits, before it releases the
  lease, so the conversation is free on OpenAI's side when the next holder starts;
- ``response.completed`` is reported to the turn (``on_completed``), which moves a chain head
  to the streamed response; a stream that ends without it moves nothing.

Closing a stream (``aclose()``, ``close()``, leaving ``async with``) is shielded from
cancellation and bounded, like the lease's release.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio

__all__ = [
    "GuardedStream",
    "GuardedStreamManager",
    "StreamOutsideTurn",
    "TurnStream",
    "TurnStreams",
]

EventT = TypeVar("EventT")

_CLOSE_TIMEOUT = 5.0  # seconds a close may take (shielded) before it is abandoned


class StreamOutsideTurn(RuntimeError):
    """A stream was read after the turn that opened it ended.

    The lease was released when the ``async with`` block exited, so reading on would run
    unguarded. Consume the stream inside the block.
    """


class TurnStream(Protocol):
    """What a turn can own and close when it ends: a stream, or a streamed agent run."""

    async def aclose(self) -> None: ...


class TurnStreams:
    """The streams one turn opened; the guard closes what is left when the turn ends."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.open = True
        self._streams: set[TurnStream] = set()

    def add(self, stream: TurnStream) -> None:
        self._streams.add(stream)

    def discard(self, stream: TurnStream) -> None:
        self._streams.discard(stream)

    def check_open(self) -> None:
        """Raise :class:`StreamOutsideTurn` once the turn has ended."""
        if not self.open:
            raise StreamOutsideTurn(
                f"this stream belongs to a turn on {self.key!r} that has ended: its guard "
                "block exited and released the lease, so the stream was closed. Read the "
                "stream inside the `async with` block that opened it."
            )

    async def close_all(self) -> None:
        """End the turn: close every stream still open (shielded, bounded)."""
        self.open = False
        for stream in list(self._streams):
            await stream.aclose()


class GuardedStream(Generic[EventT]):
    """An SDK stream that reads only inside its turn; iterate it with ``async for``.

    For ``turn.stream(...)``, :meth:`get_final_response` and :meth:`until_done` behave as the
    SDK's. Other attributes of the SDK stream are available as :attr:`sdk_stream`.
    """

    def __init__(
        self,
        inner: Any,
        streams: TurnStreams,
        on_completed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._inner = inner
        self._streams = streams
        self._on_completed = on_completed
        self._closed = False
        self.completed_id: str | None = None
        """The id of the streamed response once ``response.completed`` was read."""
        streams.add(self)

    @property
    def sdk_stream(self) -> Any:
        """The SDK's own stream object (read it through this wrapper, not directly)."""
        return self._inner

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        self._streams.check_open()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventT:
        self._check_open()
        if self._closed:
            raise StopAsyncIteration
        try:
            event: EventT = await self._inner.__anext__()
        except BaseException:  # the end, an error or a cancellation: the stream is done
            await self.aclose()
            raise
        if getattr(event, "type", None) == "response.completed":
            response_id = str(event.response.id)  # type: ignore[attr-defined]
            self.completed_id = response_id
            if self._on_completed is not None:
                await self._on_completed(response_id)
        return event

    async def until_done(self) -> Self:
        """Read the stream to its end."""
        async for _ in self:
            pass
        return self

    async def get_final_response(self) -> Any:
        """Read the stream to its end; the SDK's accumulated final response
        (``turn.stream(...)`` only)."""
        await self.until_done()
        return await self._inner.get_final_response()

    async def aclose(self) -> None:
        """Close the stream (the HTTP response); the response is not finished if unread."""
        if self._closed:
            return
        self._closed = True
        self._streams.discard(self)
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CLOSE_TIMEOUT
            await self._inner.close()

    async def close(self) -> None:
        """The same as :meth:`aclose` (the SDK's name)."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class GuardedStreamManager(Generic[EventT]):
    """What ``turn.stream(...)`` returns: ``async with`` opens the stream, exit closes it."""

    def __init__(self, open_stream: Callable[[], Awaitable[GuardedStream[EventT]]]) -> None:
        self._open = open_stream
        self._stream: GuardedStream[EventT] | None = None

    async def __aenter__(self) -> GuardedStream[EventT]:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.aclose()
