"""A create call and the registry entry of what it created, as one step a cancel cannot split.

If a cancel (a client disconnect, a shutdown) lands while the answer to ``runs.create`` or a
background ``responses.create`` is in flight, the run exists on OpenAI but its id never
reaches the guard, and an unrecorded run is one recovery never looks at. So the call and the
``track_run`` that records its result run in one shielded scope: a cancel arriving meanwhile
waits for the answer and the entry, then is delivered. The shield ends at the caller's
effective deadline (inside a turn, the lease's expiry) and never later than ``_BOUND``
seconds, so a server that never answers cannot hold the caller for longer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

from threadlock._deadline import call_deadline

__all__ = ["create_recorded"]

T = TypeVar("T")

_BOUND = 30.0  # seconds: the longest a create's answer is awaited past a cancel
_CHECKPOINTS = 3  # for the caller's own deadline to fire after the shield (see _deadline)


async def create_recorded(
    create: Callable[[], Awaitable[T]], record: Callable[[T], Awaitable[None]], what: str
) -> T:
    """``record(await create())``, shielded and bounded (see the module doc); returns what
    ``create`` returned. An error of either is raised as it is. A cancellation of the caller
    meanwhile is delivered as soon as the entry is written. Cut off at its bound, it delivers
    the caller's cancellation if there is one, and raises :class:`TimeoutError` otherwise."""
    await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller starts no create
    created: list[T] = []
    with anyio.CancelScope(deadline=call_deadline(_BOUND), shield=True):
        result = await create()
        await record(result)
        created.append(result)
    if not created:
        for _ in range(_CHECKPOINTS):
            await anyio.lowlevel.checkpoint()
        raise TimeoutError(f"{what} did not answer before the caller's deadline")
    await anyio.lowlevel.checkpoint_if_cancelled()  # the cancel that waited: delivered now
    return created[0]
