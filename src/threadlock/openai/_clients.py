"""The no-retries client the guards send their create calls through, built once per client.

``client.with_options(max_retries=0)`` builds a whole new client. Built per turn, it cost a
guarded turn more than the rest of the guard together: the copy itself, then, at its first
request, the SDK's platform probe, which runs in a worker thread (one thread hop per turn,
whose cost grows with the machine's load). :func:`no_retries` builds it once per client and
keeps it as long as that client lives (a weak reference to the client, which the copy does not
reference).

The copy is rebuilt when one of the client's settings it copied has changed since
(``api_key``, ``organization``, ``project``, ``base_url``, ``timeout``), so a rotated key is
used by the next turn as it was when every turn made its own copy.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

from threadlock.openai._threaded import ThreadedClient

__all__ = ["no_retries"]

ClientT = TypeVar("ClientT")

# What the copy took from its client, checked at every use (the settings a caller may change
# on a live client).
_SETTINGS = ("api_key", "organization", "project", "base_url", "timeout")

_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _settings(client: Any) -> tuple[Any, ...]:
    return tuple(getattr(client, name, None) for name in _SETTINGS)


def no_retries(client: ClientT) -> ClientT:
    """``client.with_options(max_retries=0)``, the same object for as long as ``client``
    lives with the same settings."""
    # A ThreadedClient (the sync face) is a new wrapper per guard: key on the client it wraps.
    key = client.wrapped if isinstance(client, ThreadedClient) else client
    settings = _settings(key)
    try:
        cached = _CACHE.get(key)
    except TypeError:  # not weakly referenceable: built per call
        built: ClientT = client.with_options(max_retries=0)  # type: ignore[attr-defined]
        return built
    if cached is not None and cached[0] == settings:
        hit: ClientT = cached[1]
        return hit
    api: ClientT = client.with_options(max_retries=0)  # type: ignore[attr-defined]
    _CACHE[key] = (settings, api)
    return api
