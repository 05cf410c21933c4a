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

The copy is also *retry-free*: its own ``with_options(max_retries=0)`` (and ``copy``) returns
itself. The Agents SDK calls exactly that on its model's client before every request once a run
has ``ModelRetrySettings(max_retries=0)``, which, on any other client, builds a new client and
pays the platform probe's thread hop per model request (:mod:`threadlock.openai.agents`). Any
other ``with_options`` builds a new client as usual. :func:`retry_free` makes a client the
guard built itself (the async twin of a sync client) retry-free the same way.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

import openai

from threadlock.openai._threaded import ThreadedClient

__all__ = ["no_retries", "retry_free"]

ClientT = TypeVar("ClientT")

# What the copy took from its client, checked at every use (the settings a caller may change
# on a live client).
_SETTINGS = ("api_key", "organization", "project", "base_url", "timeout")

_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()

# The clients made retry-free here (they are their own no-retries copy).
_RETRY_FREE: weakref.WeakSet[Any] = weakref.WeakSet()


def retry_free(client: ClientT) -> ClientT:
    """Make ``client``, which must have ``max_retries == 0``, its own no-retries copy:
    ``client.with_options(max_retries=0)`` returns ``client``. Returns ``client``."""
    if getattr(client, "max_retries", None) != 0:
        raise ValueError("client must have max_retries=0 to be its own no-retries copy")
    build = type(client).copy  # type: ignore[attr-defined]

    def copy(**options: Any) -> Any:
        if options == {"max_retries": 0}:
            return client
        return build(client, **options)

    # The openai clients define ``with_options = copy``: both are the same builder.
    setattr(client, "copy", copy)  # noqa: B010 - an instance attribute over the method
    setattr(client, "with_options", copy)  # noqa: B010
    _RETRY_FREE.add(client)
    return client


def _settings(client: Any) -> tuple[Any, ...]:
    return tuple(getattr(client, name, None) for name in _SETTINGS)


def no_retries(client: ClientT) -> ClientT:
    """``client.with_options(max_retries=0)``, the same object for as long as ``client``
    lives with the same settings."""
    # A ThreadedClient (the sync face) is a new wrapper per guard: key on the client it wraps.
    key = client.wrapped if isinstance(client, ThreadedClient) else client
    try:
        if key in _RETRY_FREE:
            return client
    except TypeError:  # not weakly referenceable (nor hashable): never made retry-free
        pass
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
    if isinstance(api, (openai.AsyncOpenAI, openai.OpenAI)):
        retry_free(api)
    _CACHE[key] = (settings, api)
    return api
