"""Fault injection: answer chosen requests with an error or a client timeout, or hold back
their answer.

:meth:`FakeOpenAI.inject <threadlock.testing.fake_openai.FakeOpenAI.inject>` registers an
:class:`InjectedFault`; the server asks :meth:`Faults.take` for the fault matching each request.
:meth:`FakeOpenAI.stall <threadlock.testing.fake_openai.FakeOpenAI.stall>` registers a
:class:`StalledReply`: the request is served in full, and its answer waits until
:meth:`StalledReply.release` (the "reply in flight" window in which a caller may be cancelled).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from threadlock.testing.fake_openai.errors import Json, fault_body
from threadlock.testing.fake_openai.wire import Reply, new_id


def _matches(want_method: str, pattern: str, method: str, path: str, template: str) -> bool:
    """Whether a request matches a method (or ``"*"``) and a route template or path glob."""
    if want_method not in ("*", method):
        return False
    if pattern.startswith("/v1/"):
        pattern = pattern[3:]
    return pattern == template or fnmatch.fnmatchcase(path, pattern)


@dataclass
class InjectedFault:
    """A fault registered with :meth:`FakeOpenAI.inject`; inspect ``hits`` to see it fired.

    ``remaining`` is how many more matching requests it will answer (``None``: every one).
    """

    method: str
    path: str
    status: int
    remaining: int | None
    apply_effect: bool
    timeout: bool
    body: Json | None
    retry_after: float | None
    hits: int = 0

    def matches(self, method: str, path: str, template: str) -> bool:
        return _matches(self.method, self.path, method, path, template)

    def reply(self) -> Reply:
        """The error answer: ``body`` or OpenAI's body for ``status``, with retry headers."""
        headers: dict[str, str] = {"x-request-id": new_id("req")}
        if self.retry_after is not None:
            headers["retry-after-ms"] = str(int(self.retry_after * 1000))
            headers["retry-after"] = str(math.ceil(self.retry_after))
        return Reply(self.status, self.body or fault_body(self.status), headers)


class StalledReply:
    """A stall registered with :meth:`FakeOpenAI.stall`: the next matching request is served
    in full (the run IS created), then its answer waits until :meth:`release`.

    ``served`` is set once the request took effect and its answer is held back; a client
    cancelled meanwhile never gets it, as when a client disconnects with a reply in flight.
    """

    def __init__(self, method: str, path: str) -> None:
        self.method = method.upper()
        self.path = path
        self.served = anyio.Event()
        self._released = anyio.Event()

    def release(self) -> None:
        """Send the held answer (to a client still waiting for it)."""
        self._released.set()

    async def hold(self) -> None:
        """The server's side: report the request served, then wait for :meth:`release`."""
        self.served.set()
        await self._released.wait()


class Faults:
    """The faults still armed, tried in the order they were added; the stalls likewise."""

    def __init__(self) -> None:
        self._faults: list[InjectedFault] = []
        self._stalls: list[StalledReply] = []

    def add_stall(self, method: str, path: str) -> StalledReply:
        stall = StalledReply(method, path)
        self._stalls.append(stall)
        return stall

    def take_stall(self, method: str, path: str, template: str) -> StalledReply | None:
        """The first stall matching this request, disarmed (each holds one answer)."""
        for stall in self._stalls:
            if _matches(stall.method, stall.path, method, path, template):
                self._stalls.remove(stall)
                return stall
        return None

    def add(
        self,
        method: str,
        path: str,
        *,
        status: int,
        count: int | None,
        apply_effect: bool,
        timeout: bool,
        body: Mapping[str, Any] | None,
        retry_after: float | None,
    ) -> InjectedFault:
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        if not timeout and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        fault = InjectedFault(
            method=method.upper(),
            path=path,
            status=status,
            remaining=count,
            apply_effect=apply_effect,
            timeout=timeout,
            body=dict(body) if body is not None else None,
            retry_after=retry_after,
        )
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()
        for stall in self._stalls:
            stall.release()
        self._stalls.clear()

    def take(self, method: str, path: str, template: str) -> InjectedFault | None:
        """The first fault matching this request, counted as fired (and dropped when spent)."""
        fault = next((f for f in self._faults if f.matches(method, path, template)), None)
        if fault is not None:
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        return fault
