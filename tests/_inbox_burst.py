"""One inbox scenario every observer test replays: a burst of three, one superseded batch, a
duplicate id and a dead letter."""

from __future__ import annotations

import pytest

from threadlock import Inbox, ThreadLock


async def burst_with_a_dead_letter(lock: ThreadLock) -> None:
    """On ``chat``: m0 is answered alone; m1 and m2 arrive during its batch (which then finds
    itself superseded) and are answered together; m1 is posted twice. On ``bad``: one message
    whose batch fails with ``max_attempts=1`` becomes a dead letter."""
    inbox = Inbox(lock)
    superseded: list[bool] = []
    async with inbox.turns("chat", "m0", id="m0") as turns:
        async for batch in turns:
            if batch.messages[0].id == "m0":
                for index in (1, 2, 1):
                    async with inbox.turns("chat", f"m{index}", id=f"m{index}") as others:
                        async for _ in others:
                            pytest.fail("the key is owned: nothing to yield")
            superseded.append(await batch.superseded())
    assert superseded == [True, False]
    with pytest.raises(ValueError, match="model failed"):
        async with inbox.turns("bad", "x", id="x", max_attempts=1) as turns:
            async for _ in turns:
                raise ValueError("model failed")
    assert [d.message.id for d in await inbox.dead_letters("bad")] == ["x"]
