"""The public counters of a :class:`~threadlock.testing.fake_openai.FakeOpenAI`.

:class:`FakeOpenAI` inherits them, so a test reads ``fake.calls``, ``fake.concurrency_errors``
and the rest directly; the server (:mod:`.server`) moves them as it answers.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """What the fake was asked and how it answered (see :class:`FakeOpenAI` for each one)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests = 0
        self.errors: Counter[int] = Counter()
        self.timeouts = 0
        self.concurrency_errors = 0
        self.concurrency_errors_by_kind: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def reset_counters(self) -> None:
        """Zero every counter; ``max_in_flight`` restarts from the current ``in_flight``."""
        self.calls.clear()
        self.requests = 0
        self.errors.clear()
        self.timeouts = 0
        self.concurrency_errors = 0
        self.concurrency_errors_by_kind.clear()
        self.max_in_flight = self.in_flight
