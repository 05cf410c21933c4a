"""An ``AsyncOpenAI`` look-alike over a sync ``openai.OpenAI``, for the synchronous face.

The async guards and recovery call the client as ``await client.<resource>.<method>(...)``.
:class:`ThreadedClient` gives them that shape over a blocking client: attribute access walks
the SDK's resources, and every method call runs the blocking call in a worker thread
(:func:`anyio.to_thread.run_sync`), so the event loop goes on renewing leases meanwhile.
What the calls return is the sync SDK's own objects (models, raw responses, pages).
"""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread

__all__ = ["ThreadedClient"]

# Methods of the client that build another client and do no I/O.
_BUILDERS = frozenset({"with_options", "copy"})


def _is_resource(value: object) -> bool:
    return type(value).__module__.startswith("openai.resources")


class ThreadedClient:
    """Wraps a sync ``openai.OpenAI`` (or one of its resources); see the module doc."""

    __slots__ = ("_target",)

    def __init__(self, target: object) -> None:
        self._target = target

    @property
    def wrapped(self) -> Any:
        """The sync client or resource this wraps."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in _BUILDERS:
            return functools.partial(_build, value)
        if _is_resource(value):
            return ThreadedClient(value)
        if callable(value):
            return functools.partial(_in_thread, value)
        return value

    def __repr__(self) -> str:
        return f"ThreadedClient({self._target!r})"


def _build(builder: Any, *args: Any, **kwargs: Any) -> ThreadedClient:
    return ThreadedClient(builder(*args, **kwargs))


async def _in_thread(method: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))
