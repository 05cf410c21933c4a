"""The fake's clock and the timelines that make runs and responses progress.

Nothing runs in the background: a run or a response has a :class:`Timeline` of status changes
at fake-clock times, and its status is evaluated from :meth:`Clock.now` on every read.
:meth:`Clock.advance` moves the clock forward and wakes the foreground requests waiting on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import anyio

from threadlock.testing.fake_openai.errors import ClientTimeoutError


def check_duration(name: str, value: float) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` unless finite and >= 0."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return value


class Clock:
    """``time.monotonic()`` plus every :meth:`advance`; epoch stamps and creation order."""

    def __init__(self) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._offset = 0.0
        self._wakeups: set[anyio.Event] = set()
        self._seq = 0

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += check_duration("seconds", seconds)
        for event in list(self._wakeups):
            event.set()

    def epoch(self, mono: float) -> int:
        """The epoch seconds (``created_at`` and the like) of fake-clock time ``mono``."""
        return int(self._wall0 + (mono - self._mono0))

    def next_seq(self) -> int:
        """A number that orders objects by creation, even when created at the same time."""
        self._seq += 1
        return self._seq

    async def wait_until(self, deadline: float, read_timeout: float | None) -> None:
        """Wait until the clock reaches ``deadline``, moved on early by :meth:`advance`.

        Raises :class:`ClientTimeoutError` after ``read_timeout`` seconds if the deadline is
        further away than that.
        """
        remaining = deadline - self.now()
        if read_timeout is not None and remaining > read_timeout:
            await anyio.sleep(read_timeout)
            raise ClientTimeoutError
        while (remaining := deadline - self.now()) > 0:
            event = anyio.Event()
            self._wakeups.add(event)
            try:
                with anyio.move_on_after(remaining):
                    await event.wait()
            finally:
                self._wakeups.discard(event)


@dataclass
class Timeline:
    """Status changes at fake-clock times; the status at ``t`` is the last step at or before it."""

    steps: list[tuple[float, str]]

    def status_at(self, t: float) -> str:
        status = self.steps[0][1]
        for at, step_status in self.steps:
            if at > t:
                break
            status = step_status
        return status

    def first_time(self, status: str, t: float) -> float | None:
        for at, step_status in self.steps:
            if at > t:
                return None
            if step_status == status:
                return at
        return None

    def replace_future(self, now: float, *steps: tuple[float, str]) -> None:
        """Drop every step after ``now`` and append ``steps``."""
        self.steps = [s for s in self.steps if s[0] <= now] + list(steps)
