"""Backends, and :func:`from_url` / :func:`from_env` that pick one by URL scheme.

Backends with optional dependencies are imported only when their scheme is used.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from threadlock.backends.base import BaseThreadLock
from threadlock.backends.memory import MemoryThreadLock

__all__ = ["SCHEMES", "BaseThreadLock", "MemoryThreadLock", "from_env", "from_url"]

logger = logging.getLogger("threadlock")

#: URL scheme -> "module:class" of the backend that serves it.
SCHEMES: dict[str, str] = {
    "memory": "threadlock.backends.memory:MemoryThreadLock",
    "redis": "threadlock.backends.redis:RedisThreadLock",
    "rediss": "threadlock.backends.redis:RedisThreadLock",
    "unix": "threadlock.backends.redis:RedisThreadLock",
    "redis+sentinel": "threadlock.backends.redis:RedisThreadLock",
    "rediss+sentinel": "threadlock.backends.redis:RedisThreadLock",
    "redis+cluster": "threadlock.backends.redis:RedisThreadLock",
    "rediss+cluster": "threadlock.backends.redis:RedisThreadLock",
    "postgresql": "threadlock.backends.postgres:PostgresThreadLock",
    "postgres": "threadlock.backends.postgres:PostgresThreadLock",
}


def from_url(url: str, **options: Any) -> BaseThreadLock:
    """Build the backend named by ``url``'s scheme, without connecting.

    ``options`` go to the backend's constructor (for example ``owner=``). An unknown scheme
    is a :class:`ValueError` that lists the known ones.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    target = SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise ValueError(f"url: unknown scheme {scheme!r} in {url!r}; known schemes: {known}")
    module_name, _, class_name = target.partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    try:
        lock: BaseThreadLock = backend.from_url(url, **options)
    except (ValueError, TypeError, ImportError):
        raise
    except Exception as error:  # a driver refusing the URL while building: still bad input
        # The URL itself is left out of the message: it may carry a password.
        raise ValueError(f"url: the {scheme}:// URL was refused: {error}") from error
    return lock


def url_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The backend URL the environment names, or ``None`` (see :func:`from_env`)."""
    env = os.environ if environ is None else environ
    for name in ("THREADLOCK_URL", "REDIS_URL", "UPSTASH_REDIS_URL"):
        if env.get(name):
            return env[name]
    host = env.get("REDIS_HOST")
    if host:
        port = env.get("REDIS_PORT") or "6379"
        password = env.get("REDIS_PASSWORD")
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{host}:{port}/0"
    return None


def from_env(environ: Mapping[str, str] | None = None, **options: Any) -> BaseThreadLock:
    """Build the backend the environment names, without connecting.

    It reads ``THREADLOCK_URL``, then ``REDIS_URL`` / ``UPSTASH_REDIS_URL``, then
    ``REDIS_HOST`` + ``REDIS_PORT`` + ``REDIS_PASSWORD``, and falls back to the memory
    backend with a logged warning (memory serves one process only).
    """
    url = url_from_env(environ)
    if url is None:
        logger.warning(
            "no THREADLOCK_URL, REDIS_URL, UPSTASH_REDIS_URL or REDIS_HOST set; using the "
            "in-process memory backend, which does not protect across processes",
            extra={"event": "backend.memory_fallback"},
        )
        url = "memory://"
    return from_url(url, **options)
